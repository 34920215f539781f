"""A token revoked or expired while its AppendPoints stream is open (docs/security.md): the
stream re-checks its token once RECHECK_SECONDS have passed (at once when it expires), answers
every batch it took before the failed check, stores nothing after it and ends with the
check's error; the Python client fails the run with that reason instead of reconnecting. A
revoked token's web cookie stops working on the next request. Real service, Redis and store."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import aiohttp
import grpc
import pytest
import stepstream
from secured import Secured, csrf_field, error_info
from stepstream.v1 import ingest_pb2, ingest_pb2_grpc
from stepstream_server.auth import interceptor
from stepstream_server.auth.tokens import new_token
from stepstream_server.store.tokens import TokenStore
from wire import error_reason, fseries


def batch(seq: int) -> ingest_pb2.AppendPointsRequest:
    b = ingest_pb2.PointBatch(sequence=seq)
    b.float_series.append(fseries("m", [seq], [float(seq)]))
    return ingest_pb2.AppendPointsRequest(batch=b)


def add_token(s: Secured, **changes: Any) -> str:
    token, record = new_token("p1", "write", name="stream")
    store = TokenStore(s.service.settings.store_url)
    try:
        store.add(dataclasses.replace(record, **changes))
    finally:
        store.close()
    return token


def revoke(s: Secured, token: str) -> None:
    store = TokenStore(s.service.settings.store_url)
    try:
        assert store.revoke(token.split("_")[1], time.time())
    finally:
        store.close()


async def open_stream(s: Secured, token: str) -> Any:
    call = ingest_pb2_grpc.IngestServiceStub(s.channel).AppendPoints(metadata=s.md(token))
    await call.write(
        ingest_pb2.AppendPointsRequest(
            open=ingest_pb2.OpenStream(project="p1", run_id="r1", writer_id="w1")
        )
    )
    opened = await call.read()
    assert opened.HasField("opened"), opened
    return call


async def answers_then_error(call: Any) -> tuple[list[int], grpc.aio.AioRpcError]:
    """The sequences the stream acknowledged, and the error it ended with."""
    acked: list[int] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while (resp := await call.read()) is not grpc.aio.EOF:
            assert resp.HasField("appended"), resp
            acked.append(resp.sequence)
        await call  # ended without an error: fails the test
    return acked, caught.value


async def stored(s: Secured, run_id: str = "r1") -> list[float]:
    series = await asyncio.to_thread(
        stepstream.read_series,
        run_id,
        "m",
        project="p1",
        address=s.service.address,
        token=s.tokens.admin,
    )
    return list(series.steps)


def hold_judging(worker: Any, judged: list[int]) -> tuple[asyncio.Event, asyncio.Event]:
    """The worker's judge waits: `entered` is set when a group reaches it (its sequences
    appended to `judged`), `go` lets it on."""
    entered, go = asyncio.Event(), asyncio.Event()
    real = worker.judge.judge

    async def judge(group: Any) -> Any:
        judged.extend(p.sequence for p in group)
        entered.set()
        await go.wait()
        return await real(group)

    worker.judge.judge = judge
    return entered, go


def auth_failures(s: Secured, reason: str) -> float:
    assert s.service.metrics is not None
    return s.service.metrics.auth_failures.labels(reason)._value.get()  # type: ignore[no-any-return]


async def test_a_token_revoked_under_an_open_stream_ends_it_after_its_answers(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches 1 and 2 are taken (1 is being judged, 2 waits behind it) when the token is
    revoked; batch 3 finds the revocation: 1 and 2 are answered and stored, 3 is not, and the
    stream ends UNAUTHENTICATED TOKEN_INVALID saying revoked."""
    monkeypatch.setattr(interceptor, "RECHECK_SECONDS", 0.0)  # every request is re-checked
    token = add_token(secured)
    worker = secured.service.worker
    judged: list[int] = []
    entered, go = hold_judging(worker, judged)
    try:
        call = await open_stream(secured, token)
        for seq in (1, 2):
            await call.write(batch(seq))
        await asyncio.wait_for(entered.wait(), 30)
        while sorted(judged + [p.sequence for p in worker._queue]) != [1, 2]:  # both taken
            await asyncio.sleep(0.01)
        revoke(secured, token)
        before = auth_failures(secured, "TOKEN_INVALID")
        await call.write(batch(3))
        while auth_failures(secured, "TOKEN_INVALID") == before:  # 3 met the failed check
            await asyncio.sleep(0.01)
    finally:
        go.set()
    acked, err = await answers_then_error(call)
    assert acked == [1, 2]
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    info = error_info(err)
    assert (info.reason, info.metadata["token_id"]) == ("TOKEN_INVALID", token.split("_")[1])
    assert "revoked" in err.details()
    assert await stored(secured) == [1.0, 2.0]


async def test_a_token_that_expires_under_an_open_stream_ends_it_at_once(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expiry needs no interval: the first batch after the token's expiry time is checked."""
    monkeypatch.setattr(interceptor, "RECHECK_SECONDS", 3600.0)
    expires_at = time.time() + 1.5
    token = add_token(secured, expires_at=expires_at)
    call = await open_stream(secured, token)
    await call.write(batch(1))
    assert (await call.read()).sequence == 1
    await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.05)
    await call.write(batch(2))
    acked, err = await answers_then_error(call)
    assert acked == []
    assert (err.code(), error_info(err).reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_EXPIRED",
    )
    assert await stored(secured) == [1.0]


async def test_a_stream_reads_its_token_once_per_interval_not_per_batch(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within RECHECK_SECONDS of its last check a stream reads no token row: 30 batches after
    the open read none (and a revocation meanwhile is seen at the next check, not before)."""
    monkeypatch.setattr(interceptor, "RECHECK_SECONDS", 3600.0)
    token = add_token(secured)
    assert secured.service.security is not None and secured.service.security.tokens is not None
    tokens = secured.service.security.tokens
    reads: list[str] = []
    real_get = tokens.get

    def counted(token_id: str) -> Any:
        reads.append(token_id)
        return real_get(token_id)

    monkeypatch.setattr(tokens, "get", counted)
    call = await open_stream(secured, token)
    assert len(reads) == 1
    for seq in range(1, 31):
        await call.write(batch(seq))
        assert (await call.read()).sequence == seq
    assert len(reads) == 1
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK


async def test_a_recheck_the_store_cannot_answer_ends_the_stream_retryably(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token store is gone under an open stream: the next check cannot confirm the token,
    so the stream ends UNAVAILABLE STORE_UNAVAILABLE (the code clients retry) after answering
    what it took, never as a token error."""
    monkeypatch.setattr(interceptor, "RECHECK_SECONDS", 0.0)
    token = add_token(secured)
    call = await open_stream(secured, token)
    await call.write(batch(1))
    assert (await call.read()).sequence == 1
    assert secured.service.security is not None and secured.service.security.tokens is not None
    secured.service.security.tokens.close()
    await call.write(batch(2))
    acked, err = await answers_then_error(call)
    assert acked == []
    assert (err.code(), error_info(err).reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "STORE_UNAVAILABLE",
    )


async def test_the_client_fails_the_run_when_its_token_is_revoked(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Run whose token is revoked mid-run fails with the reason (as a bad token at the open
    does): the next call raises RPCError TOKEN_INVALID, no reconnect loop, and what was
    acknowledged before stays stored."""
    monkeypatch.setattr(interceptor, "RECHECK_SECONDS", 0.0)
    token = add_token(secured)

    def train() -> tuple[BaseException, BaseException]:
        run = stepstream.Run("rc", project="p1", address=secured.service.address, token=token)
        run.log_metrics({"m": 1.0}, step=1)
        run.wait()  # acknowledged
        revoke(secured, token)
        with pytest.raises(stepstream.RunClosedError) as logging_refused:
            for step in range(2, 10_000):
                run.log_metrics({"m": float(step)}, step=step)
                time.sleep(0.01)
        with pytest.raises(stepstream.StepstreamError) as closing_refused:
            run.close()
        return logging_refused.value, closing_refused.value

    logged, closed = await asyncio.to_thread(train)
    # The log call says the sender stopped, and why: the service's error is its cause.
    assert "TOKEN_INVALID" in str(logged) and "revoked" in str(logged)
    cause = logged.__cause__
    assert isinstance(cause, stepstream.RPCError)
    assert (cause.code, cause.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    assert "TOKEN_INVALID" in str(closed)
    assert 1.0 in await stored(secured, "rc")


async def test_a_revoked_tokens_cookie_stops_working_on_the_next_request(
    secured: Secured,
) -> None:
    assert secured.service.web is not None
    base = secured.service.web.url
    token = add_token(secured)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(base + "/login") as resp:
            csrf = csrf_field(await resp.text())
        async with http.post(
            base + "/login",
            data={"token": token, "next": "/runs/p1/r1", "csrf": csrf},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303, await resp.text()
        async with http.get(base + "/runs/p1/r1", allow_redirects=False) as resp:
            assert resp.status == 200
        revoke(secured, token)
        async with http.get(base + "/runs/p1/r1", allow_redirects=False) as resp:
            body = await resp.text()
            assert resp.status == 401 and "TOKEN_INVALID" in body and "revoked" in body
        async with http.get(
            base + "/api/runs?project=p1",
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["reason"] == "TOKEN_INVALID"


async def test_a_batch_before_open_ends_the_stream_so_a_read_token_cannot_open_it_later(
    secured: Secured,
) -> None:
    """The stream's token is checked against its first request. A first request that is not
    an `open` needs nothing and is refused STREAM_NOT_OPEN; the stream then ends, so a
    read-only token can never slip an `open` (which needs write) past the check."""
    call = ingest_pb2_grpc.IngestServiceStub(secured.channel).AppendPoints(
        metadata=secured.md(secured.tokens.read)
    )
    await call.write(batch(1))
    refused = await call.read()
    assert refused.HasField("error") and refused.sequence == 1, refused
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK  # over: an `open` can no longer follow
    assert await stored(secured) == []


def _raw_stream(s: Secured, token: str) -> Any:
    return s.channel.stream_stream(
        "/stepstream.v1.IngestService/AppendPoints",
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb2.AppendPointsResponse.FromString,
    )(metadata=s.md(token))


def _lone_batch(body: bytes) -> bytes:
    size, length = len(body), b""
    while size > 0x7F:
        length += bytes([(size & 0x7F) | 0x80])
        size >>= 7
    return b"\x12" + length + bytes([size]) + body


_MANY_ENTRIES = b"\x08\x01" + b"\x12\x00" * 1_000_000  # PointBatch seq 1, 1e6 empty entries


@pytest.mark.parametrize(
    ("data", "code", "reason", "sequence"),
    [
        # Over 64 KiB, not a lone batch (a field before it), past the entry bound: Oversized
        # on its raw bytes (wire.py), which the policy must take as "not an open". It is a
        # batch before `open`, so the stream's answer is STREAM_NOT_OPEN (servicer.py checks
        # that before any bound), with the batch's sequence.
        pytest.param(
            b"\xf8\x07\x01" + _lone_batch(_MANY_ENTRIES),
            grpc.StatusCode.FAILED_PRECONDITION,
            "STREAM_NOT_OPEN",
            1,
            id="oversized",
        ),
        # A lone batch over 64 KiB: Unparsed when the policy sees it, Oversized once parsed.
        pytest.param(
            _lone_batch(_MANY_ENTRIES),
            grpc.StatusCode.FAILED_PRECONDITION,
            "STREAM_NOT_OPEN",
            1,
            id="unparsed",
        ),
        pytest.param(
            b"\xff\xff\xff",
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_REQUEST",
            0,
            id="malformed",
        ),
    ],
)
async def test_a_first_request_decoding_refused_gets_its_refusal_and_ends_the_stream(
    secured: Secured, data: bytes, code: grpc.StatusCode, reason: str, sequence: int
) -> None:
    """Whatever decoding made of a first request that is not an `open`, the policy needs
    nothing for it: the stream answers its exact refusal in band and ends (never UNKNOWN)."""
    call = _raw_stream(secured, secured.tokens.read)
    await call.write(data)
    refused = await call.read()
    assert refused.HasField("error") and refused.sequence == sequence, refused
    assert (refused.error.code, error_reason(refused.error)) == (code.value[0], reason)
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    assert await stored(secured) == []
