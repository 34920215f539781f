"""Synchronous RunService calls: where grpc.RpcError becomes RPCError for the trainer's thread."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import grpc

from stepstream.v1 import runs_pb2, runs_pb2_grpc

from ._convert import run_info_from_proto, summary_from_proto
from ._exceptions import RPCError
from ._types import RunInfo, Series, SeriesSummary
from ._validate import check_id, check_name, check_real

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "STEPSTREAM_ADDRESS"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Shared by the synchronous channel here and the sender's asyncio channel. Keepalive pings
# every 60 s find a dead connection during a quiet stretch (a server must permit pings that
# often); the reconnect backoff matches the sender's own (50 ms doubling to 2 s), so a service
# that comes back is found within about two seconds.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]

# Deadline for one read or state call made from the trainer's thread.
CALL_TIMEOUT = 60.0

_Response = TypeVar("_Response")


def resolve_address(address: str | None) -> str:
    """`address`, else $STEPSTREAM_ADDRESS, else 127.0.0.1:50051."""
    return address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


class RunClient:
    """RunService over one synchronous channel; every gRPC failure raises RPCError."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = runs_pb2_grpc.RunServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RunClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(
        self,
        method: Callable[..., _Response],
        request: object,
        *,
        timeout: float = CALL_TIMEOUT,
        wait_for_ready: bool = False,
    ) -> _Response:
        try:
            return method(request, timeout=timeout, wait_for_ready=wait_for_ready)
        except grpc.RpcError as exc:
            raise RPCError.from_grpc(exc) from None

    def create_run(
        self, request: runs_pb2.CreateRunRequest, *, timeout: float
    ) -> runs_pb2.CreateRunResponse:
        # wait_for_ready: a service that is still starting gets `timeout` to come up.
        return self._call(self._stub.CreateRun, request, timeout=timeout, wait_for_ready=True)

    def resume_run(self, project: str, run_id: str) -> RunInfo:
        request = runs_pb2.ResumeRunRequest(project=project, run_id=run_id)
        return run_info_from_proto(self._call(self._stub.ResumeRun, request).run)

    def get_run(self, project: str, run_id: str) -> RunInfo:
        request = runs_pb2.GetRunRequest(project=project, run_id=run_id)
        return run_info_from_proto(self._call(self._stub.GetRun, request).run)

    def list_series(
        self, project: str, run_id: str, *, own_points_only: bool = False
    ) -> list[SeriesSummary]:
        selector = runs_pb2.SeriesSelector(
            project=project, run_id=run_id, own_points_only=own_points_only
        )
        response = self._call(self._stub.ListSeries, runs_pb2.ListSeriesRequest(selector=selector))
        return [summary_from_proto(s) for s in response.series]

    def read_series(
        self,
        project: str,
        run_id: str,
        name: str,
        *,
        step_min: float | None = None,
        step_max: float | None = None,
        own_points_only: bool = False,
    ) -> Series:
        selector = runs_pb2.SeriesSelector(
            project=project, run_id=run_id, own_points_only=own_points_only
        )
        request = runs_pb2.ReadSeriesRequest(
            selector=selector, names=[name], step_min=step_min, step_max=step_max
        )
        steps: list[float] = []
        floats: list[float] = []
        strings: list[str] = []
        timestamps: list[float] = []
        is_string = False
        try:
            for part in self._stub.ReadSeries(request, timeout=CALL_TIMEOUT):
                if part.name != name:
                    continue
                is_string = part.string_series
                steps.extend(part.steps)
                timestamps.extend(part.timestamps)
                if is_string:
                    strings.extend(part.string_values)
                else:
                    floats.extend(part.values)
        except grpc.RpcError as exc:
            raise RPCError.from_grpc(exc) from None
        values: list[float] | list[str] = strings if is_string else floats
        return Series(name=name, steps=steps, values=values, timestamps=timestamps)


# ---- module-level reads (stepstream.get_run, ...) ----------------------------------------


def get_run(run_id: str, *, project: str | None = None, address: str | None = None) -> RunInfo:
    """Fetch a run's state, tags, config and lineage without opening it for writing."""
    check_id(run_id, "run_id")
    with RunClient(resolve_address(address)) as client:
        return client.get_run(project or "", run_id)


def list_series(
    run_id: str,
    *,
    project: str | None = None,
    address: str | None = None,
    own_points_only: bool = False,
) -> list[SeriesSummary]:
    """Summaries of every series visible in a run, sorted by name."""
    check_id(run_id, "run_id")
    with RunClient(resolve_address(address)) as client:
        return client.list_series(project or "", run_id, own_points_only=own_points_only)


def read_series(
    run_id: str,
    name: str,
    *,
    project: str | None = None,
    address: str | None = None,
    step_min: float | None = None,
    step_max: float | None = None,
    own_points_only: bool = False,
) -> Series:
    """Read one series of a run, in step order (inherited points included by default)."""
    check_id(run_id, "run_id")
    check_name(name, "series name")
    lo = None if step_min is None else check_real(step_min, "step_min")
    hi = None if step_max is None else check_real(step_max, "step_max")
    with RunClient(resolve_address(address)) as client:
        return client.read_series(
            project or "", run_id, name, step_min=lo, step_max=hi, own_points_only=own_points_only
        )
