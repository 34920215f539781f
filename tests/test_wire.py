"""A large AppendPoints request is parsed off the event loop in pieces (wire.py), with the
same result as at once, and a wide batch is checked and decoded off it (decode.py); every bound
and parse error keeps its exact answer while other streams keep landing (docs/faults.md
section 5). How long the loop waits is a bench figure (`python -m bench.case_hostile`), never
asserted here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
import pytest
from stepstream.v1 import ingest_pb2
from stepstream_server import decode, limits, wire
from wire import Stream, create_run, error_reason, fblock, fseries, read_points, sseries

pytestmark = pytest.mark.stores("sqlite")

T = TypeVar("T")


def request_bytes(batch: ingest_pb2.PointBatch) -> bytes:
    return ingest_pb2.AppendPointsRequest(batch=batch).SerializeToString()


def wide_batch(sequence: int, n: int) -> ingest_pb2.PointBatch:
    batch = ingest_pb2.PointBatch(sequence=sequence)
    for i in range(n):
        batch.float_series.add(name=f"s{i}", steps=[1.0], values=[float(i)])
    return batch


async def with_ticks(work: Awaitable[T]) -> tuple[T, int]:
    """`work`'s result and how many times another task ran while it was under way."""
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker is running
    before = ticks
    try:
        result = await work
    finally:
        done = True
        await task
    return result, ticks - before


def mixed_batch() -> ingest_pb2.PointBatch:
    """Every kind of entry, explicit and assigned steps, timestamps: more than a request parsed
    at once, in many pieces."""
    batch = wide_batch(7, 6 * wire.PIECE_FIELDS)
    batch.string_series.append(sseries("text", [1, 2], ["a", "b"]))
    batch.float_series.append(fseries("late", values=[1.0, 2.0], assign=True, timestamps=[5, 6]))
    batch.float_blocks.append(fblock(["b1", "b2"], [1, 2], [[1, 2], [3, 4]]))
    return batch


def _varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])


def lone_batch_request(body: bytes) -> bytes:
    return b"\x12" + _varint(len(body)) + body


def test_a_large_request_parsed_in_pieces_is_the_request_parsed_at_once():
    # An unknown field (127, a varint: kept by the parser) and the sequence again after the
    # entries (the last value wins).
    data = lone_batch_request(mixed_batch().SerializeToString() + b"\xf8\x07\x2a\x08\x09")
    assert len(data) > wire.WHOLE_BYTES
    raw = wire.lenient_request(data)
    assert isinstance(raw, wire.Unparsed)
    parsed = wire.parse(raw)
    assert parsed == ingest_pb2.AppendPointsRequest.FromString(data)
    assert isinstance(parsed, ingest_pb2.AppendPointsRequest)
    assert parsed.batch.sequence == 9
    assert len(parsed.batch.float_series) == 6 * wire.PIECE_FIELDS + 1
    # A small request is parsed by the deserializer, as before.
    small = request_bytes(ingest_pb2.PointBatch(sequence=1, float_series=[fseries("m", [1], [1])]))
    assert wire.lenient_request(small) == ingest_pb2.AppendPointsRequest.FromString(small)


async def test_a_wide_batch_is_checked_and_decoded_off_the_loop():
    """The loop keeps running while a batch of many series is decoded, and while one past a
    bound is checked (the check counts every series: on the loop it held it for 50 ms)."""
    n = limits.OFFLOAD_ENTRIES + 1
    decoder = decode.Decoder()
    (entries, rejections, failure), ticks = await with_ticks(
        decoder.decode(wide_batch(1, n), time.time())
    )
    assert (len(entries), rejections, failure, ticks > 0) == (n, [], None, True)
    names = [f"{i:07d}".ljust(1000, "x") for i in range(limits.MAX_BATCH_NAME_BYTES // 1000 + 1)]
    past = ingest_pb2.PointBatch(sequence=2, float_blocks=[fblock(names, [])])
    (entries, _, failure), ticks = await with_ticks(decoder.decode(past, time.time()))
    assert failure is not None
    assert (entries, failure.reason, ticks > 0) == ([], "BATCH_NAMES_TOO_LARGE", True)
    # A small batch is decoded at once, on the loop.
    small = ingest_pb2.PointBatch(sequence=3, float_series=[fseries("m", [1, 2], [1, 2])])
    (entries, _, _), ticks = await with_ticks(decoder.decode(small, time.time()))
    assert (len(entries), ticks) == (1, 0)


def raw_call(channel: grpc.aio.Channel) -> Any:
    return channel.stream_stream(
        "/stepstream.v1.IngestService/AppendPoints",
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb2.AppendPointsResponse.FromString,
    )()


async def open_raw(channel: grpc.aio.Channel, run_id: str, writer_id: str) -> Any:
    call = raw_call(channel)
    opening = ingest_pb2.AppendPointsRequest(
        open=ingest_pb2.OpenStream(run_id=run_id, writer_id=writer_id)
    )
    await call.write(opening.SerializeToString())
    assert (await call.read()).HasField("opened")
    return call


TOO_MANY = (
    f"batch has more than {limits.MAX_BATCH_ENTRIES} series entries; the limit is"
    f" {limits.MAX_BATCH_ENTRIES}"
)


def empty_entries(n: int) -> bytes:
    return b"\x12\x00" * n


def bad_utf8() -> bytes:
    """A large batch whose last series name is not UTF-8."""
    batch = wide_batch(1, 6 * wire.PIECE_FIELDS)
    batch.float_series.append(fseries("ZZ", [1], [1]))
    return request_bytes(batch).replace(b"ZZ", b"\xff\xfe")


def truncated() -> bytes:
    """A large batch whose last entry claims more bytes than the batch has."""
    return lone_batch_request(
        wide_batch(1, 6 * wire.PIECE_FIELDS).SerializeToString() + b"\x12\x10abc"
    )


@pytest.mark.parametrize(
    ("data", "reason", "message", "sequence"),
    [
        # 1,000,000 empty entries: counted on the wire up to the limit, refused.
        pytest.param(
            lone_batch_request(b"\x08\x01" + empty_entries(1_000_000)),
            "BATCH_TOO_MANY_ENTRIES",
            TOO_MANY,
            1,
            id="entries",
        ),
        # The same behind another field of the request (no client sends one): counted too.
        pytest.param(
            b"\xf8\x07\x01" + lone_batch_request(b"\x08\x01" + empty_entries(1_000_000)),
            "BATCH_TOO_MANY_ENTRIES",
            TOO_MANY,
            1,
            id="entries-behind-a-field",
        ),
        pytest.param(bad_utf8(), "MALFORMED_REQUEST", None, 0, id="bad-utf8"),
        pytest.param(truncated(), "MALFORMED_REQUEST", None, 0, id="truncated"),
    ],
)
async def test_a_hostile_request_is_answered_exactly_while_another_stream_lands(
    channel, runs, ingest, data, reason, message, sequence
):
    """The hostile stream gets its exact answer; a light stream on the same service keeps
    being acknowledged meanwhile and after, and loses nothing; the hostile stream lives on."""
    await create_run(runs, "light")
    await create_run(runs, "hostile")
    light = Stream(ingest)
    await light.open("light")
    hostile = await open_raw(channel, "hostile", "h")
    assert len(data) > wire.WHOLE_BYTES
    await hostile.write(data)
    answer = asyncio.ensure_future(hostile.read())
    sent = 0
    while not answer.done() or sent < 3:
        sent += 1
        ack = await light.send(fseries("m", [sent], [float(sent)]))
        assert ack.appended.accepted_count == 1
    resp = answer.result()
    assert resp.sequence == sequence
    assert error_reason(resp.error) == reason
    assert resp.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    if message is not None:
        assert resp.error.message == message
    # The hostile stream lives on: its next batch lands (a refused bound used its sequence).
    good = ingest_pb2.PointBatch(sequence=sequence + 1, float_series=[fseries("h", [1], [1.0])])
    await hostile.write(request_bytes(good))
    assert (await hostile.read()).appended.accepted_count == 1
    await hostile.done_writing()
    steps, values = await read_points(runs, "light", "m")
    assert (steps, values) == (list(range(1, sent + 1)), [float(s) for s in range(1, sent + 1)])
    await light.close()


async def test_a_wide_batch_lands_whole_beside_a_light_stream(channel, runs, ingest):
    """A legal batch of many one-point series, parsed in pieces and decoded off the loop while a
    light stream keeps landing batches: every point of both lands."""
    await create_run(runs, "light")
    await create_run(runs, "wide")
    light = Stream(ingest)
    await light.open("light")
    wide = await open_raw(channel, "wide", "w")
    n = 20_000
    await wide.write(request_bytes(wide_batch(1, n)))
    answer = asyncio.ensure_future(wide.read())
    sent = 0
    while not answer.done() or sent < 3:
        sent += 1
        assert (await light.send(fseries("m", [sent], [1.0]))).appended.accepted_count == 1
    assert answer.result().appended.accepted_count == n
    await wide.done_writing()
    assert await read_points(runs, "wide", f"s{n - 1}") == ([1], [float(n - 1)])
    assert (await read_points(runs, "light", "m"))[0] == list(range(1, sent + 1))
    await light.close()
