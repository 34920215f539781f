"""Synchronous RunService calls: where grpc.RpcError becomes RPCError for the trainer's thread."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2

from stepstream.v1 import runs_pb2, runs_pb2_grpc

from ._convert import run_info_from_proto, summary_from_proto
from ._exceptions import InvalidArgumentError, RPCError
from ._types import RunInfo, Series, SeriesSummary
from ._validate import check_id, check_name, check_positive_int, check_real

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

    def get_run(
        self,
        project: str,
        run_id: str,
        *,
        timeout: float = CALL_TIMEOUT,
        wait_for_ready: bool = False,
    ) -> RunInfo:
        request = runs_pb2.GetRunRequest(project=project, run_id=run_id)
        response = self._call(
            self._stub.GetRun, request, timeout=timeout, wait_for_ready=wait_for_ready
        )
        return run_info_from_proto(response.run)

    def list_runs(self, project: str, experiment: str) -> list[RunInfo]:
        request = runs_pb2.ListRunsRequest(project=project, experiment=experiment)
        return [run_info_from_proto(r) for r in self._call(self._stub.ListRuns, request).runs]

    def rewind_run(
        self, project: str, run_id: str, step: float, config: struct_pb2.Struct | None
    ) -> RunInfo:
        request = runs_pb2.RewindRunRequest(
            project=project, run_id=run_id, step=step, config=config
        )
        return run_info_from_proto(self._call(self._stub.RewindRun, request).run)

    def update_run_config(
        self,
        project: str,
        run_id: str,
        *,
        config: struct_pb2.Struct | None = None,
        values: struct_pb2.Struct | None = None,
    ) -> RunInfo:
        request = runs_pb2.UpdateRunConfigRequest(
            project=project, run_id=run_id, config=config, values=values
        )
        return run_info_from_proto(self._call(self._stub.UpdateRunConfig, request).run)

    def update_run_tags(
        self, project: str, run_id: str, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> RunInfo:
        request = runs_pb2.UpdateRunTagsRequest(
            project=project, run_id=run_id, add=list(add), remove=list(remove)
        )
        return run_info_from_proto(self._call(self._stub.UpdateRunTags, request).run)

    def list_series(self, selector: runs_pb2.SeriesSelector) -> list[SeriesSummary]:
        response = self._call(self._stub.ListSeries, runs_pb2.ListSeriesRequest(selector=selector))
        return [summary_from_proto(s) for s in response.series]

    def read(
        self,
        selector: runs_pb2.SeriesSelector,
        names: Sequence[str] = (),
        *,
        step_min: float | None = None,
        step_max: float | None = None,
        max_points: int | None = None,
        generation: int | None = None,
    ) -> tuple[dict[str, Series], dict[str, Series]]:
        """Read the named series (every series when `names` is empty).

        Returns (float series, string series) by name: the two kinds are separate namespaces.
        """
        request = runs_pb2.ReadSeriesRequest(
            selector=selector,
            names=list(names),
            step_min=step_min,
            step_max=step_max,
            max_points=max_points,
            generation=generation,
        )
        parts: tuple[dict[str, _Parts], dict[str, _Parts]] = ({}, {})
        try:
            for part in self._stub.ReadSeries(request, timeout=CALL_TIMEOUT):
                kind = parts[1] if part.string_series else parts[0]
                steps, values, timestamps = kind.setdefault(part.name, ([], [], []))
                steps.extend(part.steps)
                timestamps.extend(part.timestamps)
                values.extend(part.string_values if part.string_series else part.values)
        except grpc.RpcError as exc:
            raise RPCError.from_grpc(exc) from None
        floats, strings = (
            {
                name: Series(name=name, steps=steps, values=values, timestamps=timestamps)
                for name, (steps, values, timestamps) in kind.items()
            }
            for kind in parts
        )
        return floats, strings

    def read_series(
        self,
        selector: runs_pb2.SeriesSelector,
        name: str,
        *,
        step_min: float | None = None,
        step_max: float | None = None,
        max_points: int | None = None,
        generation: int | None = None,
        string_series: bool | None = None,
    ) -> Series:
        """One series: the float series `name`, else the string series `name` (or the kind
        `string_series` asks for); an empty Series when there is none."""
        floats, strings = self.read(
            selector,
            [name],
            step_min=step_min,
            step_max=step_max,
            max_points=max_points,
            generation=generation,
        )
        if string_series is None:
            found = floats.get(name, strings.get(name))
        else:
            found = (strings if string_series else floats).get(name)
        return found if found is not None else Series(name=name)


_Parts = tuple[list[float], list[Any], list[float]]


def make_selector(
    project: str | None,
    *,
    run_id: str | None = None,
    incarnation_id: str | None = None,
    experiment: str | None = None,
    own_points_only: bool = False,
) -> runs_pb2.SeriesSelector:
    """A SeriesSelector for exactly one of run_id, incarnation_id and experiment (checked)."""
    given = [
        what
        for what, value in (
            ("run_id", run_id),
            ("incarnation_id", incarnation_id),
            ("experiment", experiment),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise InvalidArgumentError(
            "give exactly one of run_id, incarnation_id and experiment"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if run_id is not None:
        check_id(run_id, "run_id")
    if incarnation_id is not None:
        check_id(incarnation_id, "incarnation_id")
    if experiment is not None:
        check_name(experiment, "experiment")
    if not isinstance(own_points_only, bool):
        raise InvalidArgumentError(f"own_points_only must be a bool, got {own_points_only!r}")
    return runs_pb2.SeriesSelector(
        project=project or "",
        run_id=run_id or "",
        incarnation_id=incarnation_id or "",
        experiment=experiment or "",
        own_points_only=own_points_only,
    )


def check_read_range(
    step_min: object, step_max: object, max_points: object, generation: object
) -> tuple[float | None, float | None, int | None, int | None]:
    """Check the optional arguments of a read; returns them as the types the request wants."""
    lo = None if step_min is None else check_real(step_min, "step_min")
    hi = None if step_max is None else check_real(step_max, "step_max")
    most = None if max_points is None else check_positive_int(max_points, "max_points")
    if generation is not None and (
        isinstance(generation, bool) or not isinstance(generation, int) or generation < 0
    ):
        raise InvalidArgumentError(f"generation must be an int >= 0, got {generation!r}")
    return lo, hi, most, generation


# ---- module-level reads (stepstream.get_run, ...) ----------------------------------------


def get_run(run_id: str, *, project: str | None = None, address: str | None = None) -> RunInfo:
    """Fetch a run's state, tags, config, values and incarnations without opening it."""
    check_id(run_id, "run_id")
    with RunClient(resolve_address(address)) as client:
        return client.get_run(project or "", run_id)


def list_runs(
    *, project: str | None = None, experiment: str | None = None, address: str | None = None
) -> list[RunInfo]:
    """The runs of a project, or of one experiment, oldest first."""
    if experiment is not None:
        check_name(experiment, "experiment")
    with RunClient(resolve_address(address)) as client:
        return client.list_runs(project or "", experiment or "")


def list_series(
    run_id: str | None = None,
    *,
    experiment: str | None = None,
    incarnation_id: str | None = None,
    project: str | None = None,
    address: str | None = None,
    own_points_only: bool = False,
) -> list[SeriesSummary]:
    """Summaries of every series visible in a run, sorted by name.

    Give exactly one of `run_id` (the run's current view), `incarnation_id` (exactly that
    incarnation, archived ones included) and `experiment` (the experiment head's view along
    its lineage).
    """
    selector = make_selector(
        project,
        run_id=run_id,
        incarnation_id=incarnation_id,
        experiment=experiment,
        own_points_only=own_points_only,
    )
    with RunClient(resolve_address(address)) as client:
        return client.list_series(selector)


def read_series(
    run_id: str | None = None,
    name: str | None = None,
    *,
    experiment: str | None = None,
    incarnation_id: str | None = None,
    project: str | None = None,
    address: str | None = None,
    step_min: float | None = None,
    step_max: float | None = None,
    own_points_only: bool = False,
    max_points: int | None = None,
    generation: int | None = None,
    string_series: bool | None = None,
) -> Series:
    """Read one series in step order, inherited points included unless `own_points_only`.

    What to read: exactly one of `run_id` (the run's current view), `incarnation_id` (exactly
    that incarnation, archived ones included: an "immutable run ID") and `experiment` (the
    experiment head's view along its lineage), e.g.
    `stepstream.read_series(name="loss", experiment="lr-sweep")`.

    `step_min`/`step_max` bound the steps (inclusive); `max_points` downsamples to at most
    that many points, keeping each bucket's first, last, minimum, maximum and first NaN (the
    service needs at least 5); `generation` reads an older generation of an overwritten
    series (0 = before the first overwrite; own points of the viewed incarnation only). A
    float and a string series may share a name: the float one is returned unless
    `string_series=True`. A series that does not exist reads as an empty Series.
    """
    if name is None:
        raise InvalidArgumentError("read_series needs the series name")
    check_name(name, "series name")
    selector = make_selector(
        project,
        run_id=run_id,
        incarnation_id=incarnation_id,
        experiment=experiment,
        own_points_only=own_points_only,
    )
    lo, hi, most, gen = check_read_range(step_min, step_max, max_points, generation)
    with RunClient(resolve_address(address)) as client:
        return client.read_series(
            selector,
            name,
            step_min=lo,
            step_max=hi,
            max_points=most,
            generation=gen,
            string_series=string_series,
        )
