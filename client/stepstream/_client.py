"""Synchronous RunService calls: where grpc.RpcError becomes RPCError for the trainer's thread.
Channels come from `_targets.resolve_target`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from stepstream.v1 import runs_pb2, runs_pb2_grpc

from ._convert import run_info_from_proto, summary_from_proto
from ._exceptions import InvalidArgumentError, RPCError
from ._security import Connection, Unpack
from ._targets import Address, Target, resolve_target
from ._types import Incarnation, RunInfo, Series, SeriesSummary
from ._validate import check_id, check_name, check_positive_int, check_real

# Deadline for one read or state call made from the trainer's thread.
CALL_TIMEOUT = 60.0
# Series per ListSeries page the client asks for (the service caps pages at 10,000).
LIST_PAGE_SIZE = 10_000
# A rotating target retries a round of entries that all failed after this pause (doubling).
ROUND_PAUSE_MIN = 0.05
ROUND_PAUSE_MAX = 2.0

_Response = TypeVar("_Response")
_Stub = runs_pb2_grpc.RunServiceStub
_SETTLED = frozenset(
    {
        grpc.ChannelConnectivity.READY,
        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        grpc.ChannelConnectivity.SHUTDOWN,
    }
)


def _wait_connected(channel: grpc.Channel, timeout: float) -> bool:
    """Whether `channel` is connected, or connects within `timeout` s; False at once when it
    fails to connect. Sends nothing, so giving up on a stalled service is never ambiguous."""
    settled = threading.Event()
    states: list[grpc.ChannelConnectivity] = []

    def watch(state: grpc.ChannelConnectivity) -> None:
        if state in _SETTLED and not settled.is_set():
            states.append(state)
            settled.set()

    channel.subscribe(watch, try_to_connect=True)
    try:
        settled.wait(timeout)
    finally:
        channel.unsubscribe(watch)
    return bool(states) and states[0] is grpc.ChannelConnectivity.READY


class RunClient:
    """RunService over a synchronous channel (one per entry of a rotating target); every gRPC
    failure raises RPCError."""

    def __init__(self, address: Address | Target) -> None:
        self.target = resolve_target(address)
        self.address = self.target.address
        self._channels: dict[int, grpc.Channel] = {}
        self._stubs: dict[int, _Stub] = {}
        self._index = 0  # the entry of a rotating target that calls go to

    def _stub(self) -> _Stub:
        stub = self._stubs.get(self._index)
        if stub is None:
            channel = self._channels[self._index] = self.target.channel(self._index)
            stub = self._stubs[self._index] = runs_pb2_grpc.RunServiceStub(channel)
        return stub

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __enter__(self) -> RunClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(
        self,
        method: Callable[[_Stub], Callable[..., _Response]],
        request: object,
        *,
        timeout: float = CALL_TIMEOUT,
        wait_for_ready: bool = False,
        read: bool = False,
    ) -> _Response:
        return self._failover(
            lambda stub, left, ready: method(stub)(request, timeout=left, wait_for_ready=ready),
            timeout=timeout,
            wait_for_ready=wait_for_ready,
            read=read,
        )

    def _failover(
        self,
        attempt: Callable[[_Stub, float, bool], _Response],
        *,
        timeout: float,
        wait_for_ready: bool,
        read: bool,
    ) -> _Response:
        """`attempt(stub, timeout, wait_for_ready)`, gRPC errors as RPCError.

        A rotating target runs it on the current entry if that one connects, else on the next
        one that does: each entry gets its share of the time left to connect (a stalled one
        never does), one that fails to connect is skipped at once, and nothing was sent to
        the entries skipped. Once every entry failed, the call fails; with `wait_for_ready`
        another round follows after a pause, until `timeout`. A call that fails with
        UNAVAILABLE moves the client to the next entry; a `read` (RETRIED_METHODS, as the
        round-robin channels retry them) is then tried there, anything else fails.
        """
        if not self.target.rotating:
            try:
                return attempt(self._stub(), timeout, wait_for_ready)
            except grpc.RpcError as exc:
                raise RPCError.from_grpc(exc) from None
        entries = len(self.target.grpc_targets)
        deadline = time.monotonic() + timeout
        failed = 0
        pause = ROUND_PAUSE_MIN
        while True:
            stub = self._stub()
            left = deadline - time.monotonic()
            share = left / (entries - failed % entries)
            if _wait_connected(self._channels[self._index], share):
                try:
                    return attempt(stub, max(deadline - time.monotonic(), 0.0), False)
                except grpc.RpcError as exc:
                    error = RPCError.from_grpc(exc)
                if error.code is not grpc.StatusCode.UNAVAILABLE:
                    raise error from None
                if not read:
                    self._index = (self._index + 1) % entries
                    raise error from None
            else:
                error = RPCError(
                    grpc.StatusCode.UNAVAILABLE
                    if time.monotonic() < deadline
                    else grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"could not connect to {self.target.grpc_targets[self._index]}",
                )
            self._index = (self._index + 1) % entries
            failed += 1
            if failed % entries == 0:
                if not wait_for_ready or time.monotonic() + pause >= deadline:
                    raise RPCError(
                        error.code,
                        f"every entry of {self.address} failed (the last: {error.message})",
                        reason=error.reason,
                        domain=error.domain,
                        metadata=error.metadata,
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, ROUND_PAUSE_MAX)

    def create_run(
        self, request: runs_pb2.CreateRunRequest, *, timeout: float
    ) -> runs_pb2.CreateRunResponse:
        # wait_for_ready: a service that is still starting gets `timeout` to come up.
        return self._call(
            lambda stub: stub.CreateRun, request, timeout=timeout, wait_for_ready=True
        )

    def resume_run(self, project: str, run_id: str) -> RunInfo:
        request = runs_pb2.ResumeRunRequest(project=project, run_id=run_id)
        return run_info_from_proto(self._call(lambda stub: stub.ResumeRun, request).run)

    def fail_run(self, project: str, run_id: str, reason: str, *, timeout: float) -> RunInfo:
        request = runs_pb2.FailRunRequest(project=project, run_id=run_id, reason=reason)
        response = self._call(lambda stub: stub.FailRun, request, timeout=timeout)
        return run_info_from_proto(response.run)

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
            lambda stub: stub.GetRun,
            request,
            timeout=timeout,
            wait_for_ready=wait_for_ready,
            read=True,
        )
        return run_info_from_proto(response.run)

    def list_runs(self, project: str, experiment: str) -> list[RunInfo]:
        request = runs_pb2.ListRunsRequest(project=project, experiment=experiment)
        return [
            run_info_from_proto(r)
            for r in self._call(lambda stub: stub.ListRuns, request, read=True).runs
        ]

    def rewind_run(self, project: str, run_id: str, step: float, config_json: str) -> RunInfo:
        request = runs_pb2.RewindRunRequest(
            project=project, run_id=run_id, step=step, config_json=config_json
        )
        return run_info_from_proto(self._call(lambda stub: stub.RewindRun, request).run)

    def update_run_config(
        self,
        project: str,
        run_id: str,
        *,
        config_json: str = "",
        values_json: str = "",
    ) -> RunInfo:
        """Merge typed JSON config entries and/or single values (stepstream.configjson)."""
        request = runs_pb2.UpdateRunConfigRequest(
            project=project, run_id=run_id, config_json=config_json, values_json=values_json
        )
        return run_info_from_proto(self._call(lambda stub: stub.UpdateRunConfig, request).run)

    def update_run_tags(
        self, project: str, run_id: str, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> RunInfo:
        request = runs_pb2.UpdateRunTagsRequest(
            project=project, run_id=run_id, add=list(add), remove=list(remove)
        )
        return run_info_from_proto(self._call(lambda stub: stub.UpdateRunTags, request).run)

    def list_series(self, selector: runs_pb2.SeriesSelector) -> list[SeriesSummary]:
        """Every page of ListSeries, followed transparently."""
        out: list[SeriesSummary] = []
        token = ""
        while True:
            request = runs_pb2.ListSeriesRequest(
                selector=selector, page_size=LIST_PAGE_SIZE, page_token=token
            )
            response = self._call(lambda stub: stub.ListSeries, request, read=True)
            out += [summary_from_proto(s) for s in response.series]
            token = response.next_page_token
            if not token:
                return out

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

        def attempt(
            stub: _Stub, timeout: float, wait_for_ready: bool
        ) -> tuple[dict[str, _Parts], dict[str, _Parts]]:
            parts: tuple[dict[str, _Parts], dict[str, _Parts]] = ({}, {})
            for part in stub.ReadSeries(request, timeout=timeout, wait_for_ready=wait_for_ready):
                kind = parts[1] if part.string_series else parts[0]
                steps, values, timestamps = kind.setdefault(part.name, ([], [], []))
                steps.extend(part.steps)
                timestamps.extend(part.timestamps)
                values.extend(part.string_values if part.string_series else part.values)
            return parts

        parts = self._failover(attempt, timeout=CALL_TIMEOUT, wait_for_ready=False, read=True)
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


def read_lineage(client: RunClient, project: str, info: RunInfo) -> list[Incarnation]:
    """The chain of incarnations behind `info`'s current one, oldest first (see
    Run.lineage); one GetRun per other run on the way."""
    known = {i.incarnation_id: i for i in info.incarnations}
    read_runs = {info.run_id}
    current = known.get(info.incarnation_id)
    if current is None:  # the service always lists the current incarnation; be safe anyway
        return []
    chain = [current]
    seen = {current.incarnation_id}
    while current.parent_incarnation_id and current.parent_incarnation_id not in seen:
        parent_id = current.parent_incarnation_id
        seen.add(parent_id)
        parent_run = current.parent_run_id
        if parent_id not in known and parent_run and parent_run not in read_runs:
            read_runs.add(parent_run)
            try:
                parent_info = client.get_run(project, parent_run)
            except RPCError as exc:
                if exc.code is not grpc.StatusCode.NOT_FOUND:
                    raise
            else:
                known.update((i.incarnation_id, i) for i in parent_info.incarnations)
        parent = known.get(parent_id)
        if parent is None:
            chain.append(
                Incarnation(incarnation_id=parent_id, run_id=parent_run or "", origin="UNKNOWN")
            )
            break
        chain.append(parent)
        current = parent
    chain.reverse()
    return chain


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


def get_run(
    run_id: str,
    *,
    project: str | None = None,
    address: Address | None = None,
    **connection: Unpack[Connection],
) -> RunInfo:
    """Fetch a run's state, tags, config, values and incarnations without opening it.

    Every read function takes Run's `tls`, `root_certificates`, `client_certificate`,
    `client_key` and `token` keywords too (README: Security)."""
    check_id(run_id, "run_id")
    with RunClient(resolve_target(address, **connection)) as client:
        return client.get_run(project or "", run_id)


def list_runs(
    *,
    project: str | None = None,
    experiment: str | None = None,
    address: Address | None = None,
    **connection: Unpack[Connection],
) -> list[RunInfo]:
    """The runs of a project, or of one experiment, oldest first."""
    if experiment is not None:
        check_name(experiment, "experiment")
    with RunClient(resolve_target(address, **connection)) as client:
        return client.list_runs(project or "", experiment or "")


def list_series(
    run_id: str | None = None,
    *,
    experiment: str | None = None,
    incarnation_id: str | None = None,
    project: str | None = None,
    address: Address | None = None,
    own_points_only: bool = False,
    **connection: Unpack[Connection],
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
    with RunClient(resolve_target(address, **connection)) as client:
        return client.list_series(selector)


def read_series(
    run_id: str | None = None,
    name: str | None = None,
    *,
    experiment: str | None = None,
    incarnation_id: str | None = None,
    project: str | None = None,
    address: Address | None = None,
    step_min: float | None = None,
    step_max: float | None = None,
    own_points_only: bool = False,
    max_points: int | None = None,
    generation: int | None = None,
    string_series: bool | None = None,
    **connection: Unpack[Connection],
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
    with RunClient(resolve_target(address, **connection)) as client:
        return client.read_series(
            selector,
            name,
            step_min=lo,
            step_max=hi,
            max_points=most,
            generation=gen,
            string_series=string_series,
        )
