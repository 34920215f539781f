"""One set of rules (`stepstream.rules`) judged alike by the client and the service, and the
sequence-number rule of batch errors (ingest.proto, AppendPointsResponse.error)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from stepstream import InvalidArgumentError
from stepstream import _validate as client
from stepstream.rules import MAX_BATCH_POINTS
from stepstream.v1 import ingest_pb2, runs_pb2
from stepstream_server import validation as service
from stepstream_server.errors import ServiceError
from wire import Stream, create_run, fseries

ID_CASES = [
    ("run-1", True),
    ("R", True),
    ("0.a_b:c-d", True),
    ("a" * 128, True),
    ("a" * 129, False),
    ("", False),
    ("-run", False),  # the client used to accept a first character the service refuses
    (".x", False),
    (":x", False),
    ("_x", False),
    ("a b", False),
    ("a/b", False),
    ("ü", False),
]
NAME_CASES = [
    ("train/loss", True),
    ("é" * 512, True),
    ("x" * 1024, True),
    ("x" * 1025, False),
    ("é" * 513, False),
    ("", False),
    ("a\x00b", False),
    (" ", True),
]


def _client_problem(check: object, value: str) -> str | None:
    try:
        check(value, "field")  # type: ignore[operator]
    except InvalidArgumentError as exc:
        return str(exc)
    return None


def _service_problem(check: object, value: str) -> str | None:
    try:
        check("field", value)  # type: ignore[operator]
    except ServiceError as exc:
        return exc.message
    return None


@pytest.mark.parametrize(("value", "valid"), ID_CASES)
def test_client_and_service_judge_ids_alike(value: str, valid: bool) -> None:
    on_client = _client_problem(client.check_id, value)
    on_service = _service_problem(lambda f, v: service.check_id(f, v, "INVALID_X"), value)
    assert (on_client is None, on_service is None) == (valid, valid)
    if not valid:
        rule = "must be 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit"
        assert on_client and on_client.endswith(rule)
        assert on_service and on_service.endswith(rule)


@pytest.mark.parametrize(("value", "valid"), NAME_CASES)
def test_client_and_service_judge_names_alike(value: str, valid: bool) -> None:
    on_client = _client_problem(client.check_name, value)
    on_service = _service_problem(service.check_name, value)
    assert (on_client is None, on_service is None) == (valid, valid)
    if not valid:
        assert on_client and on_service
        # The same phrase after the (differently shortened) quoted value.
        assert on_client.rsplit("' ", 1)[1] == on_service.rsplit("' ", 1)[1]


def test_wandb_strings_follow_the_id_rule() -> None:
    with pytest.raises(InvalidArgumentError, match="starting with a letter or digit"):
        client.parse_run_moment("-run?_step=3", "fork_from")


# -- the sequence rule: which batch errors use up their sequence number --------------------


def _info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    (detail,) = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert info.domain == "stepstream.dev"
    return info


async def test_run_not_active_uses_up_its_sequence(runs, stream) -> None:
    await runs.StopRun(runs_pb2.StopRunRequest(run_id="r1"))
    failed = await stream.send(fseries("m", [1], [1.0]), sequence=1)
    info = _info(failed.error)
    assert (info.reason, info.metadata["sequence_used"]) == ("RUN_NOT_ACTIVE", "true")
    assert dict(info.metadata) == {"sequence_used": "true", "run_id": "r1", "state": "STOPPED"}
    await runs.ResumeRun(runs_pb2.ResumeRunRequest(run_id="r1"))
    # A naive re-send of the same sequence applies nothing: its stored answer comes back.
    again = await stream.send(fseries("m", [1], [1.0]), sequence=1)
    assert _info(again.error).reason == "RUN_NOT_ACTIVE"
    # Its points, sent again under the next sequence, land once.
    ok = await stream.send(fseries("m", [1], [1.0]), sequence=2)
    assert ok.appended.accepted_count == 1


async def test_batch_too_large_uses_up_its_sequence(stream) -> None:
    n = MAX_BATCH_POINTS + 1
    failed = await stream.send(fseries("m", range(n), [0.0] * n), sequence=1)
    info = _info(failed.error)
    assert failed.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert dict(info.metadata) == {
        "sequence_used": "true",
        "points": str(n),
        "limit": str(MAX_BATCH_POINTS),
    }
    ok = await stream.send(fseries("m", [1], [1.0]), sequence=2)
    assert ok.appended.accepted_count == 1


@pytest.mark.parametrize(
    ("sequence", "reason", "code"),
    [
        (5, "SEQUENCE_GAP", grpc.StatusCode.FAILED_PRECONDITION),
        (0, "INVALID_SEQUENCE", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_errors_before_a_batch_s_turn_keep_the_sequence(stream, sequence, reason, code):
    failed = await stream.send(fseries("m", [1], [1.0]), sequence=sequence)
    info = _info(failed.error)
    assert (info.reason, info.metadata["sequence_used"]) == (reason, "false")
    assert failed.error.code == code.value[0]
    ok = await stream.send(fseries("m", [1], [1.0]), sequence=1)
    assert ok.appended.accepted_count == 1


async def test_malformed_request_keeps_the_sequence(stream) -> None:
    await stream.call.write(ingest_pb2.AppendPointsRequest())
    failed = await stream.call.read()
    info = _info(failed.error)
    assert (failed.sequence, info.reason, info.metadata["sequence_used"]) == (
        0,
        "MALFORMED_REQUEST",
        "false",
    )
    ok = await stream.send(fseries("m", [1], [1.0]), sequence=1)
    assert ok.appended.accepted_count == 1


async def test_stream_not_open_keeps_the_sequence(runs, ingest) -> None:
    await create_run(runs, "r2")
    s = Stream(ingest)
    failed = await s.send(fseries("m", [1], [1.0]), sequence=1)
    info = _info(failed.error)
    assert (info.reason, info.metadata["sequence_used"]) == ("STREAM_NOT_OPEN", "false")
    # That stream ended with the refusal (a stream is opened by its first request); on a
    # new one the writer starts at sequence 1, as nothing was used.
    assert await s.call.read() is grpc.aio.EOF
    s = Stream(ingest)
    assert (await s.open("r2")).opened.last_committed_sequence == 0
    ok = await s.send(fseries("m", [1], [1.0]), sequence=1)
    assert ok.appended.accepted_count == 1
    await s.close()
