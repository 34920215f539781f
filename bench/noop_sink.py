"""A no-op sink of stepstream's protocol: the ceiling of this stack (gRPC, protobuf, client).

`python -m bench.noop_sink --address 127.0.0.1:PORT [--delay-ms D]`

IngestService.AppendPoints decodes every request and acknowledges every batch with
`accepted_count` = its points, storing nothing (it remembers only each writer's last sequence
number, so that a reconnecting client resumes correctly). RunService answers just enough for
the real `stepstream.Run` to work unchanged: runs live in a dict, state changes are recorded,
reads return nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from stepstream.v1 import ingest_pb2, runs_pb2, runs_pb2_grpc

INGEST_SERVICE = "stepstream.v1.IngestService"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

RunKey = tuple[str, str]


class Sink:
    """What the sink remembers: runs (for the client's lifecycle calls) and writer sequences."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.runs: dict[RunKey, runs_pb2.Run] = {}
        self.committed: dict[tuple[str, str, str], int] = {}

    def run(self, project: str, run_id: str) -> runs_pb2.Run:
        key = (project or "default", run_id)
        run = self.runs.get(key)
        if run is None:
            run = runs_pb2.Run(
                project=key[0],
                run_id=run_id,
                state=runs_pb2.RUN_STATE_RUNNING,
                current_incarnation_id=uuid.uuid4().hex,
            )
            self.runs[key] = run
        return run

    async def append_points(
        self, requests: AsyncIterator[ingest_pb2.AppendPointsRequest], context: Any
    ) -> AsyncIterator[ingest_pb2.AppendPointsResponse]:
        writer: tuple[str, str, str] | None = None
        incarnation = ""
        async for request in requests:
            if request.HasField("open"):
                opened = request.open
                writer = (opened.project or "default", opened.run_id, opened.writer_id)
                incarnation = self.run(opened.project, opened.run_id).current_incarnation_id
                yield ingest_pb2.AppendPointsResponse(
                    opened=ingest_pb2.OpenStreamResult(
                        last_committed_sequence=self.committed.get(writer, 0),
                        incarnation_id=incarnation,
                    )
                )
                continue
            batch = request.batch
            points = (
                sum(len(s.values) for s in batch.float_series)
                + sum(len(s.values) for s in batch.string_series)
                + sum(len(b.values) for b in batch.float_blocks)
            )
            if self.delay:
                await asyncio.sleep(self.delay)
            if writer is not None:
                self.committed[writer] = max(self.committed.get(writer, 0), batch.sequence)
            yield ingest_pb2.AppendPointsResponse(
                sequence=batch.sequence,
                appended=ingest_pb2.AppendResult(accepted_count=points, incarnation_id=incarnation),
            )


class RunServicer(runs_pb2_grpc.RunServiceServicer):
    """Minimal RunService answers; nothing is validated."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def _state(self, request: Any, state: int) -> runs_pb2.Run:
        run = self.sink.run(request.project, request.run_id)
        run.state = state  # type: ignore[assignment]
        return run

    async def CreateRun(
        self, request: runs_pb2.CreateRunRequest, context: Any
    ) -> runs_pb2.CreateRunResponse:
        run_id = request.run_id or uuid.uuid4().hex
        key = (request.project or "default", run_id)
        existed = key in self.sink.runs
        if existed and not request.get_if_exists:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"run {run_id!r} exists")
        run = self.sink.run(request.project, run_id)
        run.experiment = request.experiment
        return runs_pb2.CreateRunResponse(run=run, existed=existed)

    async def GetRun(
        self, request: runs_pb2.GetRunRequest, context: Any
    ) -> runs_pb2.GetRunResponse:
        return runs_pb2.GetRunResponse(run=self.sink.run(request.project, request.run_id))

    async def ListRuns(
        self, request: runs_pb2.ListRunsRequest, context: Any
    ) -> runs_pb2.ListRunsResponse:
        return runs_pb2.ListRunsResponse(runs=list(self.sink.runs.values()))

    async def StopRun(
        self, request: runs_pb2.StopRunRequest, context: Any
    ) -> runs_pb2.StopRunResponse:
        return runs_pb2.StopRunResponse(run=self._state(request, runs_pb2.RUN_STATE_STOPPED))

    async def FinishRun(
        self, request: runs_pb2.FinishRunRequest, context: Any
    ) -> runs_pb2.FinishRunResponse:
        return runs_pb2.FinishRunResponse(run=self._state(request, runs_pb2.RUN_STATE_FINISHED))

    async def FailRun(
        self, request: runs_pb2.FailRunRequest, context: Any
    ) -> runs_pb2.FailRunResponse:
        return runs_pb2.FailRunResponse(run=self._state(request, runs_pb2.RUN_STATE_FAILED))

    async def ResumeRun(
        self, request: runs_pb2.ResumeRunRequest, context: Any
    ) -> runs_pb2.ResumeRunResponse:
        return runs_pb2.ResumeRunResponse(run=self._state(request, runs_pb2.RUN_STATE_RUNNING))

    async def UpdateRunConfig(
        self, request: runs_pb2.UpdateRunConfigRequest, context: Any
    ) -> runs_pb2.UpdateRunConfigResponse:
        return runs_pb2.UpdateRunConfigResponse(run=self.sink.run(request.project, request.run_id))

    async def UpdateRunTags(
        self, request: runs_pb2.UpdateRunTagsRequest, context: Any
    ) -> runs_pb2.UpdateRunTagsResponse:
        return runs_pb2.UpdateRunTagsResponse(run=self.sink.run(request.project, request.run_id))

    async def RewindRun(
        self, request: runs_pb2.RewindRunRequest, context: Any
    ) -> runs_pb2.RewindRunResponse:
        return runs_pb2.RewindRunResponse(run=self.sink.run(request.project, request.run_id))

    async def ListSeries(
        self, request: runs_pb2.ListSeriesRequest, context: Any
    ) -> runs_pb2.ListSeriesResponse:
        return runs_pb2.ListSeriesResponse()

    async def ReadSeries(
        self, request: runs_pb2.ReadSeriesRequest, context: Any
    ) -> AsyncIterator[runs_pb2.ReadSeriesResponse]:
        return
        yield  # an async generator that yields nothing


async def serve(address: str, delay: float) -> None:
    sink = Sink(delay)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                INGEST_SERVICE,
                {
                    "AppendPoints": grpc.stream_stream_rpc_method_handler(
                        sink.append_points,
                        request_deserializer=ingest_pb2.AppendPointsRequest.FromString,
                        response_serializer=ingest_pb2.AppendPointsResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    runs_pb2_grpc.add_RunServiceServicer_to_server(RunServicer(sink), server)
    port = server.add_insecure_port(address)
    await server.start()
    print(f"no-op sink listening on {address.rsplit(':', 1)[0]}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.noop_sink", description=__doc__)
    parser.add_argument("--address", default="127.0.0.1:0")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay before each ack")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    asyncio.run(serve(args.address, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
