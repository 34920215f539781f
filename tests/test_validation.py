"""Every bad input gets its exact reason, and nothing else is lost (SPEC §1, §6)."""

from __future__ import annotations

import math

import grpc
import pytest
from stepstream.v1 import ingest_pb2, runs_pb2
from stepstream_server.decode import MAX_BATCH_POINTS
from wire import Stream, create_run, error_reason, fseries, read_points, rpc_reason, sseries

pytestmark = pytest.mark.stores("sqlite", "postgresql")


@pytest.mark.parametrize(
    ("series", "reason", "message"),
    [
        (fseries("", [1], [1]), "INVALID_SERIES_NAME", "series name '' is empty"),
        (
            fseries("x" * 1025, [1], [1]),
            "INVALID_SERIES_NAME",
            f"series name {'x' * 64!r} is 1025 bytes long; the limit is 1024",
        ),
        (
            fseries("é" * 513, [1], [1]),
            "INVALID_SERIES_NAME",
            f"series name {'é' * 64!r} is 1026 bytes long; the limit is 1024",
        ),
        (
            fseries("a\x00b", [1], [1]),
            "INVALID_SERIES_NAME",
            "series name 'a\\x00b' contains a NUL character",
        ),
        (fseries("m", [1, 2], [1]), "LENGTH_MISMATCH", "series has 1 values but 2 steps"),
        (fseries("m", [1, 2], []), "LENGTH_MISMATCH", "series has 2 steps but no values"),
        (
            fseries("m", [1], [1], timestamps=[1.0, 2.0]),
            "LENGTH_MISMATCH",
            "series has 1 values but 2 timestamps",
        ),
        (
            fseries("m", [1], [1], timestamps=[math.nan]),
            "INVALID_TIMESTAMP",
            "timestamps must be finite",
        ),
        (
            fseries("m", [1], [1], assign=True),
            "STEPS_WITH_ASSIGN_STEPS",
            "series has assign_steps set and 1 explicit steps; send one or the other",
        ),
        (
            fseries("m", [1, math.nan], [1, 2]),
            "NON_FINITE_STEP",
            "step nan at index 1 is not a finite number",
        ),
        (
            fseries("m", [1, 3, 2], [1, 2, 3]),
            "STEPS_NOT_STRICTLY_INCREASING",
            "step 2.0 at index 2 does not follow 3.0; steps in a batch must strictly increase",
        ),
        (
            fseries("m", [1, 1], [1, 2]),
            "STEPS_NOT_STRICTLY_INCREASING",
            "step 1.0 at index 1 does not follow 1.0; steps in a batch must strictly increase",
        ),
        (sseries("", [1], ["x"]), "INVALID_SERIES_NAME", "series name '' is empty"),
    ],
)
async def test_bad_series_rejected_neighbours_land(runs, stream, series, reason, message):
    resp = await stream.send(series, fseries("good", [1], [7.0]))
    assert resp.appended.accepted_count == 1
    (rej,) = resp.appended.rejections
    assert (rej.reason, rej.message) == (reason, message)
    assert await read_points(runs, "r1", "good") == ([1], [7.0])


async def test_batch_too_large(runs, stream):
    n = MAX_BATCH_POINTS + 1
    resp = await stream.send(fseries("m", range(n), [0.0] * n))
    assert resp.WhichOneof("result") == "error"
    assert error_reason(resp.error) == "BATCH_TOO_LARGE"
    assert resp.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert resp.error.message == f"batch has {n} points; the limit is {MAX_BATCH_POINTS}"
    # The stream lives on and the sequence was consumed.
    ok = await stream.send(fseries("m", [1], [1]))
    assert ok.appended.accepted_count == 1


async def test_sequence_gap_is_an_error_and_consumes_nothing(stream):
    resp = await stream.send(fseries("m", [1], [1]), sequence=5)
    assert error_reason(resp.error) == "SEQUENCE_GAP"
    assert resp.error.message == (
        "batch sequence 5 skips ahead: the next expected sequence for writer 'w1' is 1"
    )
    ok = await stream.send(fseries("m", [1], [1]), sequence=1)
    assert ok.appended.accepted_count == 1


async def test_sequence_zero_rejected(stream):
    resp = await stream.send(fseries("m", [1], [1]), sequence=0)
    assert error_reason(resp.error) == "INVALID_SEQUENCE"


async def test_batch_before_open_is_refused_and_ends_the_stream(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    resp = await s.send(fseries("m", [1], [1]))
    assert error_reason(resp.error) == "STREAM_NOT_OPEN"
    # The stream ends with that answer: the token was checked against this first request
    # (docs/security.md), so no `open` may follow on it.
    assert await s.call.read() is grpc.aio.EOF
    assert await s.call.code() == grpc.StatusCode.OK


async def test_second_open(stream):
    resp = await stream.open("r1")
    assert error_reason(resp.error) == "STREAM_ALREADY_OPEN"


@pytest.mark.parametrize(
    ("open_kwargs", "code", "reason"),
    [
        ({"run_id": "missing"}, grpc.StatusCode.NOT_FOUND, "RUN_NOT_FOUND"),
        ({"run_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RUN_ID"),
        ({"run_id": "bad id!"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RUN_ID"),
        (
            {"run_id": "r1", "project": "no/slash"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PROJECT",
        ),
        ({"run_id": "r1", "writer_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_WRITER_ID"),
    ],
)
async def test_bad_open_ends_the_stream_with_reason(runs, ingest, open_kwargs, code, reason):
    await create_run(runs, "r1")
    call = ingest.AppendPoints()
    kw = {"writer_id": "w", **open_kwargs}
    await call.write(ingest_pb2.AppendPointsRequest(open=ingest_pb2.OpenStream(**kw)))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call.read()
    assert exc.value.code() == code
    assert rpc_reason(exc.value) == reason


async def test_garbage_bytes_get_an_answer_and_the_stream_survives(runs, channel):
    await create_run(runs, "r1")
    raw = channel.stream_stream(
        "/stepstream.v1.IngestService/AppendPoints",
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb2.AppendPointsResponse.FromString,
    )
    call = raw()
    open_req = ingest_pb2.AppendPointsRequest(
        open=ingest_pb2.OpenStream(run_id="r1", writer_id="w")
    )
    await call.write(open_req.SerializeToString())
    assert (await call.read()).HasField("opened")
    # Field 1 (open), length-delimited, with a length running past the end.
    await call.write(b"\x0a\xff\xff\x03garbage")
    bad = await call.read()
    assert bad.sequence == 0
    assert error_reason(bad.error) == "MALFORMED_REQUEST"
    # Invalid UTF-8 in a string field is garbage too.
    batch = ingest_pb2.AppendPointsRequest(
        batch=ingest_pb2.PointBatch(sequence=1, float_series=[fseries("ZZ", [1], [1])])
    ).SerializeToString()
    await call.write(batch.replace(b"ZZ", b"\xff\xfe"))
    assert error_reason((await call.read()).error) == "MALFORMED_REQUEST"
    await call.write(ingest_pb2.AppendPointsRequest().SerializeToString())
    assert error_reason((await call.read()).error) == "MALFORMED_REQUEST"
    await call.write(batch)
    good = await call.read()
    assert good.appended.accepted_count == 1
    await call.done_writing()


async def test_write_to_stopped_run_is_run_not_active(runs, stream):
    await runs.StopRun(runs_pb2.StopRunRequest(run_id="r1"))
    resp = await stream.send(fseries("m", [1], [1]))
    assert error_reason(resp.error) == "RUN_NOT_ACTIVE"
    assert resp.error.message == "run 'r1' is STOPPED, not RUNNING; resume it to write"
    await runs.ResumeRun(runs_pb2.ResumeRunRequest(run_id="r1"))
    ok = await stream.send(fseries("m", [1], [1]))
    assert ok.appended.accepted_count == 1


async def test_bad_stream_does_not_disturb_another(runs, ingest):
    await create_run(runs, "r1")
    good, bad = Stream(ingest), Stream(ingest)
    await good.open("r1", writer_id="good")
    await bad.open("r1", writer_id="bad")
    await bad.send(fseries("", [1], [1]), sequence=1)
    await bad.send(fseries("m", [1], [1]), sequence=9)
    resp = await good.send(fseries("m", [1, 2], [1, 2]))
    assert resp.appended.accepted_count == 2
    assert await read_points(runs, "r1", "m") == ([1, 2], [1, 2])


@pytest.mark.parametrize(
    ("request_kwargs", "code", "reason", "message"),
    [
        (
            {"run_id": "dup"},
            grpc.StatusCode.ALREADY_EXISTS,
            "RUN_ALREADY_EXISTS",
            "run 'dup' already exists in project 'default'",
        ),
        (
            {"run_id": "x", "tags": [""]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_NAME",
            "tag '' is empty",
        ),
        (
            {"run_id": "x", "fork_run_id": "dup"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "FORK_STEP_REQUIRED",
            "a fork needs fork_step",
        ),
        (
            {"run_id": "x", "fork_step": 3},
            grpc.StatusCode.INVALID_ARGUMENT,
            "FORK_PARENT_REQUIRED",
            "fork_step was given without fork_run_id or fork_incarnation_id",
        ),
        (
            {"run_id": "x", "fork_run_id": "dup", "fork_step": math.inf},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FORK_STEP",
            "fork_step must be finite, got inf",
        ),
        (
            {"run_id": "x", "fork_run_id": "dup", "fork_incarnation_id": "i", "fork_step": 1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "CONFLICTING_FORK_PARENT",
            "give fork_run_id or fork_incarnation_id, not both",
        ),
        (
            {"run_id": "x", "fork_run_id": "nope", "fork_step": 1},
            grpc.StatusCode.NOT_FOUND,
            "RUN_NOT_FOUND",
            "fork parent run 'nope' not found in project 'default'",
        ),
        (
            {"run_id": "x", "fork_incarnation_id": "inc-nope", "fork_step": 1},
            grpc.StatusCode.NOT_FOUND,
            "INCARNATION_NOT_FOUND",
            "incarnation 'inc-nope' not found",
        ),
        (
            {"run_id": "-leading-dash"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_RUN_ID",
            "run_id '-leading-dash' must be 1-128 characters of [A-Za-z0-9._:-], starting with a"
            " letter or digit",
        ),
    ],
)
async def test_create_run_errors(runs, request_kwargs, code, reason, message):
    await create_run(runs, "dup")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await runs.CreateRun(runs_pb2.CreateRunRequest(**request_kwargs))
    assert exc.value.code() == code
    assert rpc_reason(exc.value) == reason
    assert exc.value.details() == f"{reason}: {message}"


async def test_unknown_run_for_reads_and_state(runs):
    for call in (
        runs.GetRun(runs_pb2.GetRunRequest(run_id="ghost")),
        runs.StopRun(runs_pb2.StopRunRequest(run_id="ghost")),
        runs.ListSeries(
            runs_pb2.ListSeriesRequest(selector=runs_pb2.SeriesSelector(run_id="ghost"))
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
        assert rpc_reason(exc.value) == "RUN_NOT_FOUND"


async def test_config_description_must_be_a_string(runs):
    await create_run(runs, "r1")
    from google.protobuf import struct_pb2

    cfg = struct_pb2.Struct()
    cfg.update({"sys/description": 5})
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await runs.UpdateRunConfig(runs_pb2.UpdateRunConfigRequest(run_id="r1", config=cfg))
    assert rpc_reason(exc.value) == "INVALID_DESCRIPTION"
    assert exc.value.details() == "INVALID_DESCRIPTION: sys/description must be a string, got float"


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            {"names": ["a", "b"], "steps": [1, 2], "values": [1, 2, 3]},
            [("a", "LENGTH_MISMATCH", "block has 3 values for 2 steps x 2 series")] * 1
            + [("b", "LENGTH_MISMATCH", "block has 3 values for 2 steps x 2 series")],
        ),
        (
            {"names": ["a"], "steps": [1, 2], "values": [1, 2], "timestamps": [1.0]},
            [("a", "LENGTH_MISMATCH", "block has 2 steps but 1 timestamps")],
        ),
        (
            {"names": ["a"], "steps": [1], "values": [1], "timestamps": [math.inf]},
            [("a", "INVALID_TIMESTAMP", "timestamps must be finite")],
        ),
        (
            {"names": ["a", "b"], "steps": [2, 1], "values": [1, 2, 3, 4]},
            [
                (
                    n,
                    "STEPS_NOT_STRICTLY_INCREASING",
                    "step 1.0 at index 1 does not follow 2.0; steps in a batch must strictly increase",
                )
                for n in ("a", "b")
            ],
        ),
        (
            {"names": ["a"], "steps": [math.nan], "values": [1]},
            [("a", "NON_FINITE_STEP", "step nan at index 0 is not a finite number")],
        ),
        (
            {"names": ["a", "", "a"], "steps": [1], "values": [1, 2, 3]},
            [
                ("", "INVALID_SERIES_NAME", "series name '' is empty"),
                (
                    "a",
                    "DUPLICATE_SERIES_IN_BLOCK",
                    "series 'a' appears more than once in one block",
                ),
            ],
        ),
    ],
)
async def test_bad_block_rejected_neighbours_land(runs, stream, block, expected):
    resp = await stream.send(ingest_pb2.FloatBlock(**block), fseries("good", [1], [7.0]))
    got = sorted((r.series, r.reason, r.message) for r in resp.appended.rejections)
    assert got == sorted(expected)
    good_points = 1 + (1 if block["names"][0] == "a" and expected[0][0] == "" else 0)
    assert resp.appended.accepted_count == good_points
    assert await read_points(runs, "r1", "good") == ([1], [7.0])
