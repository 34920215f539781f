"""Helpers that speak the wire protocol directly (no client library), for service tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from stepstream.v1 import ingest_pb2, ingest_pb2_grpc, runs_pb2, runs_pb2_grpc


def fseries(
    name: str,
    steps: Sequence[float] = (),
    values: Sequence[float] = (),
    *,
    assign: bool = False,
    timestamps: Sequence[float] = (),
) -> ingest_pb2.FloatSeries:
    return ingest_pb2.FloatSeries(
        name=name,
        steps=list(steps),
        values=list(values),
        assign_steps=assign,
        timestamps=list(timestamps),
    )


def sseries(
    name: str, steps: Sequence[float] = (), values: Sequence[str] = (), *, assign: bool = False
) -> ingest_pb2.StringSeries:
    return ingest_pb2.StringSeries(
        name=name, steps=list(steps), values=list(values), assign_steps=assign
    )


def fblock(
    names: Sequence[str],
    steps: Sequence[float],
    rows: Sequence[Sequence[float]] | None = None,
    *,
    values: Sequence[float] | None = None,
    timestamps: Sequence[float] = (),
) -> ingest_pb2.FloatBlock:
    """A FloatBlock from rows (one list of values per step) or from flat `values`."""
    flat = list(values) if values is not None else [v for row in rows or () for v in row]
    return ingest_pb2.FloatBlock(
        names=list(names), steps=list(steps), values=flat, timestamps=list(timestamps)
    )


class Stream:
    """One AppendPoints stream: send requests, read the answers in order."""

    def __init__(self, stub: ingest_pb2_grpc.IngestServiceStub) -> None:
        self.call = stub.AppendPoints()
        self.next_seq = 1

    async def open(
        self, run_id: str, writer_id: str = "w1", project: str = ""
    ) -> ingest_pb2.AppendPointsResponse:
        await self.call.write(
            ingest_pb2.AppendPointsRequest(
                open=ingest_pb2.OpenStream(project=project, run_id=run_id, writer_id=writer_id)
            )
        )
        resp = await self.call.read()
        assert resp is not grpc.aio.EOF
        if resp.HasField("opened"):
            self.next_seq = resp.opened.last_committed_sequence + 1
        return resp  # type: ignore[no-any-return]

    async def send(
        self, *series: Any, sequence: int | None = None
    ) -> ingest_pb2.AppendPointsResponse:
        seq = self.next_seq if sequence is None else sequence
        if sequence is None:
            self.next_seq += 1
        batch = ingest_pb2.PointBatch(sequence=seq)
        for s in series:
            if isinstance(s, ingest_pb2.FloatBlock):
                batch.float_blocks.append(s)
            elif isinstance(s, ingest_pb2.StringSeries):
                batch.string_series.append(s)
            else:
                batch.float_series.append(s)
        await self.call.write(ingest_pb2.AppendPointsRequest(batch=batch))
        resp = await self.call.read()
        assert resp is not grpc.aio.EOF
        return resp  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.call.done_writing()


def error_reason(status: status_pb2.Status) -> str:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    raise AssertionError(f"no ErrorInfo in {status}")


def rpc_reason(err: grpc.aio.AioRpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return error_reason(status_pb2.Status.FromString(value))
    raise AssertionError(f"no status details in {err}")


async def create_run(runs: runs_pb2_grpc.RunServiceStub, run_id: str, **kw: Any) -> runs_pb2.Run:
    resp = await runs.CreateRun(runs_pb2.CreateRunRequest(run_id=run_id, **kw))
    return resp.run


async def read_points(
    runs: runs_pb2_grpc.RunServiceStub, run_id: str, name: str, *, strings: bool = False, **kw: Any
) -> tuple[list[float], list[Any]]:
    steps: list[float] = []
    values: list[Any] = []
    sel = runs_pb2.SeriesSelector(
        run_id=run_id,
        **{
            k: v
            for k, v in kw.items()
            if k in ("incarnation_id", "own_points_only", "project", "experiment")
        },
    )
    if "incarnation_id" in kw or "experiment" in kw:
        sel.run_id = ""
    extra = {
        k: v for k, v in kw.items() if k in ("step_min", "step_max", "max_points", "generation")
    }
    async for msg in runs.ReadSeries(
        runs_pb2.ReadSeriesRequest(selector=sel, names=[name], **extra)
    ):
        if msg.string_series != strings:
            continue
        steps.extend(msg.steps)
        values.extend(msg.string_values if msg.string_series else msg.values)
    return steps, values


async def gather(*aws: Any) -> list[Any]:
    return list(await asyncio.gather(*aws))
