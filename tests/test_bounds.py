"""Every bound of limits.py: the exact reason, message and metadata, and nothing else lost."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from stepstream.v1 import ingest_pb2, runs_pb2
from stepstream_server import limits
from wire import Stream, create_run, fblock, fseries, read_points

pytestmark = pytest.mark.stores("sqlite")


def info_of(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError(f"no ErrorInfo in {status}")


def rpc_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return info_of(status_pb2.Status.FromString(value))
    raise AssertionError(f"no status details in {err}")


def _names(n: int, width: int = 0) -> list[str]:
    return [f"s{i:07d}".ljust(width, "x") for i in range(n)]


LIMIT_N = limits.MAX_BLOCK_NAMES
NAME_BYTES = limits.MAX_BATCH_NAME_BYTES // 1000 + 1  # names of 1000 bytes past the limit


@pytest.mark.parametrize(
    ("entries", "reason", "message", "metadata"),
    [
        (
            lambda: [ingest_pb2.FloatSeries() for _ in range(limits.MAX_BATCH_ENTRIES + 1)],
            "BATCH_TOO_MANY_ENTRIES",
            f"batch has more than {limits.MAX_BATCH_ENTRIES} series entries; the limit is"
            f" {limits.MAX_BATCH_ENTRIES}",
            {"limit": str(limits.MAX_BATCH_ENTRIES)},
        ),
        (
            lambda: [fblock(_names(LIMIT_N + 1), [])],
            "BLOCK_TOO_MANY_NAMES",
            f"float block 0 has {LIMIT_N + 1} names; the limit is {LIMIT_N}",
            {"block": "0", "names": str(LIMIT_N + 1), "limit": str(LIMIT_N)},
        ),
        (
            lambda: [fblock(_names(LIMIT_N // 2 + 1), []), fblock(_names(LIMIT_N // 2 + 1), [])],
            "BATCH_TOO_MANY_SERIES",
            f"batch has {LIMIT_N + 2} series; the limit is {limits.MAX_BATCH_SERIES}",
            {"series": str(LIMIT_N + 2), "limit": str(limits.MAX_BATCH_SERIES)},
        ),
        (
            lambda: [fblock(_names(NAME_BYTES, 1000), [])],
            "BATCH_NAMES_TOO_LARGE",
            f"series names of the batch take {NAME_BYTES * 1000} bytes; the limit is"
            f" {limits.MAX_BATCH_NAME_BYTES}",
            {"bytes": str(NAME_BYTES * 1000), "limit": str(limits.MAX_BATCH_NAME_BYTES)},
        ),
        (
            lambda: [fseries("m", range(limits.MAX_BATCH_POINTS + 1), [0.0] * 100_001)],
            "BATCH_TOO_LARGE",
            f"batch has {limits.MAX_BATCH_POINTS + 1} points; the limit is"
            f" {limits.MAX_BATCH_POINTS}",
            {"points": str(limits.MAX_BATCH_POINTS + 1), "limit": str(limits.MAX_BATCH_POINTS)},
        ),
    ],
)
async def test_batch_bounds(runs, ingest, stream, entries, reason, message, metadata):
    # Another stream is open meanwhile and keeps landing its batches.
    await create_run(runs, "other")
    other = Stream(ingest)
    await other.open("other")
    assert (await other.send(fseries("x", [1], [1.0]))).appended.accepted_count == 1
    resp = await stream.send(*entries())
    assert resp.WhichOneof("result") == "error"
    assert resp.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert resp.error.message == message
    info = info_of(resp.error)
    # Every batch bound uses up its sequence (ingest.proto's sequence rule).
    assert (info.reason, dict(info.metadata)) == (reason, {**metadata, "sequence_used": "true"})
    # The stream lives on, the sequence was used up, nothing else was lost.
    assert (await stream.send(fseries("m", [1], [5.0]))).appended.accepted_count == 1
    assert (await other.send(fseries("x", [2], [2.0]))).appended.accepted_count == 1
    assert await read_points(runs, "r1", "m") == ([1], [5.0])
    assert await read_points(runs, "other", "x") == ([1, 2], [1.0, 2.0])
    await other.close()


async def test_a_batch_at_every_bound_is_accepted(service, runs, stream):
    """A block of MAX_BLOCK_NAMES series, one step: the widest batch a client sends. Its
    writer is alone, so it is committed whole, in one group (docs/faults.md section 5)."""
    names = _names(limits.MAX_BLOCK_NAMES)
    groups = service.worker.stats["groups"]
    resp = await stream.send(fblock(names, [1.0], values=[0.5] * len(names)))
    assert resp.appended.accepted_count == len(names)
    assert service.worker.stats["groups"] - groups == 1
    assert await read_points(runs, "r1", names[-1]) == ([1], [0.5])


def nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


def struct(doc: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(doc)
    return s


def raw_nested_struct(depth: int) -> bytes:
    """A Struct nested `depth` deep, built on the wire: protobuf itself refuses to encode it."""
    inner = b""
    for _ in range(depth):
        value = b"\x2a" + _len(inner) + inner  # Value.struct_value = 5
        entry = b"\x0a\x01a" + b"\x12" + _len(value) + value  # map entry: key 1, value 2
        inner = b"\x0a" + _len(entry) + entry  # Struct.fields = 1
    return inner


def _len(data: bytes) -> bytes:
    n, out = len(data), b""
    while n >= 0x80:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])


DEPTH = limits.MAX_CONFIG_DEPTH
BIG = "x" * limits.MAX_CONFIG_BYTES


@pytest.mark.parametrize(
    ("call", "reason", "message", "metadata"),
    [
        (
            lambda runs: runs.CreateRun(
                runs_pb2.CreateRunRequest(run_id="n", config=struct(nested(DEPTH + 1)))
            ),
            "CONFIG_TOO_DEEP",
            f"config is nested {DEPTH + 1} levels deep; the limit is {DEPTH}",
            {"field": "config", "depth": str(DEPTH + 1), "limit": str(DEPTH)},
        ),
        (
            lambda runs: runs.UpdateRunConfig(
                runs_pb2.UpdateRunConfigRequest(run_id="r1", values=struct(nested(DEPTH + 1)))
            ),
            "CONFIG_TOO_DEEP",
            f"values is nested {DEPTH + 1} levels deep; the limit is {DEPTH}",
            {"field": "values", "depth": str(DEPTH + 1), "limit": str(DEPTH)},
        ),
        (
            lambda runs: runs.RewindRun(
                runs_pb2.RewindRunRequest(run_id="r1", step=1, config=struct({"big": BIG}))
            ),
            "CONFIG_TOO_LARGE",
            f"config is {limits.MAX_CONFIG_BYTES + 17} bytes encoded; the limit is"
            f" {limits.MAX_CONFIG_BYTES}",
            {
                "field": "config",
                "size": str(limits.MAX_CONFIG_BYTES + 17),
                "limit": str(limits.MAX_CONFIG_BYTES),
            },
        ),
        (
            lambda runs: runs.CreateRun(
                runs_pb2.CreateRunRequest(
                    run_id="n", tags=[f"t{i}" for i in range(limits.MAX_TAGS + 1)]
                )
            ),
            "TOO_MANY_TAGS",
            f"{limits.MAX_TAGS + 1} tags; a run has at most {limits.MAX_TAGS}",
            {"count": str(limits.MAX_TAGS + 1), "limit": str(limits.MAX_TAGS)},
        ),
        (
            lambda runs: runs.UpdateRunTags(
                runs_pb2.UpdateRunTagsRequest(run_id="r1", add=["t" * (limits.MAX_TAG_BYTES + 1)])
            ),
            "TAG_TOO_LONG",
            f"tag {'t' * 64!r} is {limits.MAX_TAG_BYTES + 1} bytes long; the limit is"
            f" {limits.MAX_TAG_BYTES}",
            {"size": str(limits.MAX_TAG_BYTES + 1), "limit": str(limits.MAX_TAG_BYTES)},
        ),
        (
            lambda runs: runs.CreateRun(
                runs_pb2.CreateRunRequest(run_id="n", description="d" * (limits.MAX_TEXT_BYTES + 1))
            ),
            "TEXT_TOO_LONG",
            f"description is {limits.MAX_TEXT_BYTES + 1} bytes long; the limit is"
            f" {limits.MAX_TEXT_BYTES}",
            {
                "field": "description",
                "size": str(limits.MAX_TEXT_BYTES + 1),
                "limit": str(limits.MAX_TEXT_BYTES),
            },
        ),
        (
            lambda runs: runs.FailRun(
                runs_pb2.FailRunRequest(run_id="r1", reason="e" * (limits.MAX_TEXT_BYTES + 1))
            ),
            "TEXT_TOO_LONG",
            f"reason is {limits.MAX_TEXT_BYTES + 1} bytes long; the limit is"
            f" {limits.MAX_TEXT_BYTES}",
            {
                "field": "reason",
                "size": str(limits.MAX_TEXT_BYTES + 1),
                "limit": str(limits.MAX_TEXT_BYTES),
            },
        ),
    ],
)
async def test_run_bounds(runs, call, reason, message, metadata):
    await create_run(runs, "r1", tags=["keep"], config=struct({"lr": 0.1}))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(runs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f"{reason}: {message}"
    info = rpc_info(err.value)
    assert (info.reason, dict(info.metadata)) == (reason, metadata)
    # Nothing changed; the run still takes what is within bounds.
    run = (await runs.GetRun(runs_pb2.GetRunRequest(run_id="r1"))).run
    assert (list(run.tags), dict(run.config), run.state) == (
        ["keep"],
        {"lr": 0.1},
        runs_pb2.RUN_STATE_RUNNING,
    )
    ok = await runs.CreateRun(runs_pb2.CreateRunRequest(run_id="n", config=struct(nested(DEPTH))))
    assert ok.run.run_id == "n"


async def test_config_past_protobufs_depth_limit(channel, runs):
    """100 levels: protobuf cannot even parse it; still INVALID_ARGUMENT with its reason."""
    request = b"\x1a\x01n" + b"\x32" + _len(raw_nested_struct(100)) + raw_nested_struct(100)
    call = channel.unary_unary(
        "/stepstream.v1.RunService/CreateRun",
        request_serializer=None,
        response_deserializer=runs_pb2.CreateRunResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = rpc_info(err.value)
    assert (info.reason, dict(info.metadata)) == (
        "CONFIG_TOO_DEEP",
        {"field": "config", "depth": f"more than {DEPTH}", "limit": str(DEPTH)},
    )
    assert err.value.details() == (
        f"CONFIG_TOO_DEEP: config is nested more than {DEPTH} levels deep; the limit is {DEPTH}"
    )
    # The same request, shallow, creates the run: the raw encoding above is right.
    shallow = b"\x1a\x01n" + b"\x32" + _len(raw_nested_struct(3)) + raw_nested_struct(3)
    assert (await call(shallow)).run.config["a"]["a"] == {"a": {}}
