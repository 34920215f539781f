"""`stepstream.Run`: what a trainer logs to."""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import copy
import dataclasses
import logging
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TextIO, TypeVar

import grpc

from stepstream.v1 import runs_pb2

from ._client import RunClient, check_read_range, make_selector, read_lineage
from ._convert import dict_from_struct, run_info_from_proto, struct_from_dict
from ._exceptions import (
    InvalidArgumentError,
    RPCError,
    RunClosedError,
    StepstreamError,
    WaitTimeoutError,
)
from ._export import write_export
from ._offline import sender_spool, start_offline
from ._policies import Policies
from ._records import Record, RecordMaker
from ._sender import UNARY_TIMEOUT, Operation, Sender, UnaryCall
from ._targets import Address, resolve_target
from ._types import Incarnation, IngestError, RunInfo, SenderStats, Series, SeriesSummary
from ._validate import (
    check_id,
    check_name,
    check_positive_float,
    check_positive_int,
    check_real,
    check_tags,
    parse_run_moment,
)
from .rules import DESCRIPTION_KEY
from .rules import MAX_BATCH_POINTS as SERVER_MAX_BATCH_POINTS

logger = logging.getLogger("stepstream")

MAX_KEPT_ERRORS = 1000
# Without on_error, this many errors per (reason, series) are logged; the rest only counted.
LOGGED_ERRORS_PER_KIND = 10

_T = TypeVar("_T")

# Runs not closed yet, closed at interpreter exit (bounded by each run's timeouts).
_open_runs: weakref.WeakSet[Run] = weakref.WeakSet()


class Run:
    """A run that streams metrics to a stepstream service.

    Creating a Run creates the run on the service (synchronously: a bad request fails here,
    e.g. RPCError RUN_ALREADY_EXISTS), then starts a background thread that streams every
    logged point. Log calls never wait on the network: they validate, copy and queue. Call
    `close()` (or use the Run as a context manager) to flush, finish the run and stop the
    thread.

    Backpressure: at most `max_queued_points` points wait in memory for the sender; when that
    many are queued, log calls **block** until the sender catches up. Points are never
    dropped silently: what the service rejects is reported to `on_error` (or logged), counted
    in `errors`, and summarised by `close()`.

    Where the run comes from (at most one of these; none creates a new run):

    - `fork_run_id` + `fork_step` (Neptune): a new run inheriting the parent's points with
      step <= fork_step, its tags and description (its config too with `inherit_configs`).
      With `experiment_name`, a parent that does not exist (yet) falls back to the
      experiment's head run: `parent_fallback` is then True.
    - `fork_incarnation_id` + `fork_step`: fork from exactly that incarnation ("immutable run
      ID", e.g. an archived one from `history()`), whatever its run has done since.
    - `fork_from="<run_id>?_step=<N>"` (W&B): the same as fork_run_id=<run_id>, fork_step=N.
    - `resume_from="<run_id>?_step=<N>"` (W&B rewind): the existing run <run_id> is cut back
      to step N (its later history is archived, readable by incarnation ID) and this Run
      attaches to it, logging into its new incarnation. `config` is merged into the run's
      preserved config, `tags` added, `description` set. `run_id` may be omitted.
    - `resume=True`: attach to the existing run `run_id` (created if missing), resuming it if
      it is not RUNNING.

    Args:
        run_id: the run's ID (1-128 characters of [A-Za-z0-9._:-]); None lets the service
            generate one.
        project: the project; None means the service's default.
        experiment_name: an experiment to create the run in (the run becomes its head).
        address: where the service is; default $STEPSTREAM_ADDRESS or 127.0.0.1:50051.
            "host:port"; any gRPC target, e.g. "dns:///metrics:50051", "unix:/path" or
            "ipv4:10.0.0.1:50051,10.0.0.2:50051"; or several replicas, as a list of
            "host:port" strings or one comma-separated string. Over several replicas the
            client balances round-robin, and a stream that fails (or stalls) is reopened on
            another one.
        tags, description, config: initial metadata.
        fork_run_id, fork_incarnation_id, fork_step, fork_from, resume_from, resume: see above.
        inherit_configs: with a fork, inherit the parent's config and single values too.
        writer_id: the stream's writer ID (default: random); batches are numbered per writer,
            so a stable writer_id lets a restarted process continue the numbering.
        on_error: called, from the background thread, with each IngestError; keep it quick.
            Default: log at WARNING on the "stepstream" logger.
        max_queued_points: memory bound of the queue, in points (see Backpressure).
        max_batch_points: at most this many points per batch sent (default and maximum:
            100,000, the service's limit). A batch holds what is queued when the sender is
            ready, so a slow loop still sends small batches promptly; large batches matter
            for wide dicts (1,000 keys: about 3x the throughput of 20,000-point batches).
        max_inflight_batches: batches sent but not yet acknowledged.
        connect_timeout: seconds to wait for the service when creating the run and when
            opening a stream.
        reconnect_timeout: seconds to keep reconnecting a failed stream before the run goes
            offline (with on_unavailable="raise": gives up).
        mode, on_full, on_unavailable, on_rejection, spool_max_bytes: offline runs and the
            spool; see `_policies` and the README's "Offline and unreliable networks".

    Local metadata (DigitalHub's Run object): `run.config`, `run.tags` and `run.description`
    are local copies, read from the service when the Run is created and by `refresh()`. Edit
    them freely; `save()` pushes what you changed. `log_configs`, `add_tags` and
    `remove_tags` update them too (and queue the change for the service). `state`, `values`
    and `incarnations` are as of the last `refresh()` (or creation) and of this Run's own
    calls. These attributes are meant for the thread that owns the Run.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        project: str | None = None,
        experiment_name: str | None = None,
        address: Address | None = None,
        tags: Iterable[str] | None = None,
        description: str | None = None,
        config: Mapping[str, Any] | None = None,
        fork_run_id: str | None = None,
        fork_step: float | None = None,
        fork_incarnation_id: str | None = None,
        fork_from: str | None = None,
        resume_from: str | None = None,
        inherit_configs: bool = False,
        resume: bool = False,
        writer_id: str | None = None,
        on_error: Callable[[IngestError], None] | None = None,
        max_queued_points: int = 1_000_000,
        max_batch_points: int = SERVER_MAX_BATCH_POINTS,
        max_inflight_batches: int = 32,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 300.0,
        mode: str | None = None,
        on_full: str = "spill",
        on_unavailable: str = "offline",
        on_rejection: str = "report",
        spool_max_bytes: int | None = None,
    ) -> None:
        if run_id is not None:
            check_id(run_id, "run_id")
        branch = _branch(
            run_id,
            fork_run_id=fork_run_id,
            fork_step=fork_step,
            fork_incarnation_id=fork_incarnation_id,
            fork_from=fork_from,
            resume_from=resume_from,
            resume=resume,
            inherit_configs=inherit_configs,
        )
        if resume and run_id is None:
            raise InvalidArgumentError("resume=True needs the run_id of the run to attach to")
        for value, what in (
            (project, "project"),
            (experiment_name, "experiment_name"),
            (description, "description"),
        ):
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentError(f"{what} must be a str, got {type(value).__name__}")
        if on_error is not None and not callable(on_error):
            raise InvalidArgumentError(f"on_error must be callable, got {on_error!r}")
        policies = self._policies = Policies.check(
            mode, on_full, on_unavailable, on_rejection, spool_max_bytes, writer_id
        )
        self._writer_id = (
            uuid.uuid4().hex if writer_id is None else check_id(writer_id, "writer_id")
        )
        check_positive_int(max_queued_points, "max_queued_points")
        check_positive_int(max_batch_points, "max_batch_points")
        if max_batch_points > SERVER_MAX_BATCH_POINTS:
            raise InvalidArgumentError(
                f"max_batch_points must be at most {SERVER_MAX_BATCH_POINTS} (the service's "
                f"limit), got {max_batch_points}"
            )
        check_positive_int(max_inflight_batches, "max_inflight_batches")
        self._connect_timeout = check_positive_float(connect_timeout, "connect_timeout")
        self._reconnect_timeout = check_positive_float(reconnect_timeout, "reconnect_timeout")
        config_struct = struct_from_dict(config) if config is not None else None
        if config is not None:
            _check_description_entry(config)
        tag_list = check_tags(tags)
        request = runs_pb2.CreateRunRequest(
            project=project or "",
            experiment=experiment_name or "",
            run_id=run_id or "",
            tags=tag_list,
            description=description or "",
            config=config_struct,
            fork_run_id=branch.fork_run_id,
            fork_incarnation_id=branch.fork_incarnation_id,
            fork_step=branch.fork_step,
            inherit_configs=inherit_configs,
            get_if_exists=resume,
        )

        self._on_error = on_error
        self._errors: collections.deque[IngestError] = collections.deque(maxlen=MAX_KEPT_ERRORS)
        self._error_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._error_points: collections.Counter[tuple[str, str]] = collections.Counter()
        self._errors_lock = threading.Lock()
        self._records = RecordMaker()
        self._closed = False

        self._target = resolve_target(address)
        self._address = self._target.address
        self._client = RunClient(self._target)
        fallback = False
        offline = (request, branch.rewind_run_id, branch.rewind_step, config, tag_list, policies)
        spool = None
        try:
            if policies.offline:
                info, spool = start_offline(*offline, self._writer_id, self._address, None)
            elif branch.rewind_run_id:
                info = self._rewind_existing(
                    project or "",
                    branch.rewind_run_id,
                    branch.rewind_step,
                    experiment_name=experiment_name,
                    config=config,
                    tags=tag_list,
                    description=description,
                )
            else:
                response = self._client.create_run(request, timeout=self._connect_timeout)
                info = run_info_from_proto(response.run)
                fallback = response.parent_fallback
                if resume and info.state != "RUNNING":
                    info = self._client.resume_run(info.project, info.run_id)
        except RPCError as exc:
            if policies.goes_offline(exc):
                why = f"the service at {self._address} is unreachable ({exc.message})"
                info, spool = start_offline(*offline, self._writer_id, self._address, why)
            else:
                self._client.close()
                if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    action = "rewind" if branch.rewind_run_id else "create"
                    raise RPCError(
                        exc.code,
                        f"could not {action} the run: no answer from the stepstream service at "
                        f"{self._address} within {self._connect_timeout:g} s ({exc.message})",
                        reason=exc.reason,
                        domain=exc.domain,
                        metadata=exc.metadata,
                    ) from None
                raise
        except BaseException:
            self._client.close()
            raise
        self._run_id = info.run_id
        self._project = info.project or (project or "")
        self._experiment_name = info.experiment or experiment_name or None
        self._parent_fallback = fallback
        self._adopt(info)
        if fallback:
            parent = info.incarnations[0].parent_run_id if info.incarnations else None
            logger.warning(
                "stepstream: fork parent %r was not found; forked from the head run %r of "
                "experiment %r instead (run.parent_fallback is True)",
                branch.fork_run_id,
                parent,
                self._experiment_name,
            )

        self._sender = Sender(
            address=self._target,
            project=self._project,
            run_id=self._run_id,
            writer_id=self._writer_id,
            report=policies.watch(self._report),
            max_queued_points=max_queued_points,
            max_batch_points=max_batch_points,
            max_inflight_batches=max_inflight_batches,
            connect_timeout=self._connect_timeout,
            reconnect_timeout=self._reconnect_timeout,
            **sender_spool(
                policies, spool, self._project, self._run_id, self._writer_id, self._address
            ),
        )
        self._sender.start()
        _open_runs.add(self)

    def _rewind_existing(
        self,
        project: str,
        run_id: str,
        step: float,
        *,
        experiment_name: str | None,
        config: Mapping[str, Any] | None,
        tags: list[str],
        description: str | None,
    ) -> RunInfo:
        """resume_from: cut the existing run back to `step`, then apply the metadata args."""
        entries = dict(config or {})
        if DESCRIPTION_KEY in entries:  # as in CreateRun and log_configs: the description
            given = entries.pop(DESCRIPTION_KEY)
            description = given if description is None else description
        # GetRun first: a missing run is RUN_NOT_FOUND before anything changes, and a service
        # that is still starting gets connect_timeout to come up.
        current = self._client.get_run(
            project, run_id, timeout=self._connect_timeout, wait_for_ready=True
        )
        if experiment_name is not None and current.experiment != experiment_name:
            raise InvalidArgumentError(
                f"resume_from names run {run_id!r}, which belongs to experiment "
                f"{current.experiment!r}, not experiment_name={experiment_name!r}"
            )
        info = self._client.rewind_run(project, run_id, step, struct_from_dict(entries))
        if tags:
            info = self._client.update_run_tags(project, run_id, add=tags)
        if description is not None:
            description_struct = struct_from_dict({DESCRIPTION_KEY: description})
            info = self._client.update_run_config(project, run_id, config=description_struct)
        return info

    def _adopt(self, info: RunInfo) -> None:
        """Take `info` as the service's current view of the run (local edits are replaced)."""
        self._info = info
        self._incarnation_id = info.incarnation_id
        self._config = copy.deepcopy(info.config)
        self._synced_config = copy.deepcopy(info.config)
        self._tags = list(info.tags)
        self._synced_tags = list(info.tags)
        self._description = info.description
        self._synced_description = info.description

    # ---- identity ---------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The run's ID (generated by the service when none was given)."""
        return self._run_id

    @property
    def project(self) -> str:
        return self._project

    @property
    def experiment_name(self) -> str | None:
        return self._experiment_name

    @property
    def incarnation_id(self) -> str:
        """The immutable ID of the incarnation receiving this run's points (changes on rewind)."""
        return self._sender.incarnation_id or self._incarnation_id

    @property
    def parent_fallback(self) -> bool:
        """True when the fork parent did not exist and the experiment's head was used instead."""
        return self._parent_fallback

    @property
    def writer_id(self) -> str:
        return self._writer_id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def errors(self) -> list[IngestError]:
        """The most recent errors reported for this run (up to 1000), oldest first."""
        with self._errors_lock:
            return list(self._errors)

    @property
    def acknowledged_points(self) -> int:
        """Points the service has durably accepted (or acknowledged as duplicates)."""
        return self._sender.acknowledged_points

    @property
    def stats(self) -> SenderStats:
        """Counters of the background sender (points, batches, re-sends, connections)."""
        return self._sender.stats()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Run project={self._project!r} run_id={self._run_id!r} {state}>"

    # ---- local metadata (DigitalHub: edit, then save(); refresh() re-reads) -------------

    @property
    def config(self) -> dict[str, Any]:
        """The run's config, as a local dict: edit it in place or assign a new dict, then call
        `save()` to push the changes (numbers come back from the service as float)."""
        return self._config

    @config.setter
    def config(self, value: Mapping[str, Any]) -> None:
        if not isinstance(value, Mapping):
            raise InvalidArgumentError(f"config must be a dict, got {type(value).__name__}")
        self._config = dict(value)

    @property
    def tags(self) -> list[str]:
        """The run's tags, as a local list: edit it or assign a new list, then `save()`."""
        return self._tags

    @tags.setter
    def tags(self, value: Iterable[str]) -> None:
        self._tags = check_tags(value)

    @property
    def description(self) -> str:
        """The run's description (attribute sys/description), local until `save()`."""
        return self._description

    @description.setter
    def description(self, value: str) -> None:
        if not isinstance(value, str):
            raise InvalidArgumentError(f"description must be a str, got {type(value).__name__}")
        self._description = value

    @property
    def state(self) -> str:
        """ "RUNNING", "STOPPED", "FINISHED" or "FAILED": as of creation, the last `refresh()`,
        and this Run's own stop/resume/close."""
        return self._info.state

    @property
    def values(self) -> dict[str, Any]:
        """Single-value metrics (`log_metric(..., single_value=True)`), as of the last
        `refresh()` plus the ones this Run logged since."""
        return dict(self._info.values)

    @property
    def incarnations(self) -> list[Incarnation]:
        """The run's incarnations as of creation or the last `refresh()`, oldest first (see
        `history()` for a fresh read)."""
        return list(self._info.incarnations)

    def get_run_url(self) -> str | None:
        """Link to this run in the service's web view, or None when the service serves none."""
        return self.get_run().url

    def get_experiment_url(self) -> str | None:
        """Link to this run's experiment in the web view; None without a web view or an
        experiment."""
        return self.get_run().experiment_url

    # ---- logging (never waits on the network) --------------------------------------------

    def log_metrics(
        self,
        data: Mapping[str, float | Iterable[float]],
        step: float | None = None,
        *,
        overwrite: bool = False,
        timestamp: float | None = None,
    ) -> None:
        """Append one point to each series in `data`, all at `step`.

        With `step` None the service gives each series its next step (floor + 1, or 0 for a
        new series). A list value (DigitalHub) appends its elements at consecutive steps:
        `step`, `step + 1`, ... or the service's next steps. `overwrite=True` replaces each
        named series: its visible history restarts empty (so without a step the first point
        lands at 0) and the replaced points stay readable as an older generation
        (`read_series(..., generation=N)`). `timestamp` (seconds since the epoch) defaults to
        now. Values may be any real numbers, NaN and infinities included. Raises
        InvalidArgumentError (a ValueError) for a bad name, step or value, before anything is
        queued; blocks only while the queue is full.
        """
        if not isinstance(overwrite, bool):
            raise InvalidArgumentError(f"overwrite must be a bool, got {overwrite!r}")
        record = self._records.float_rows(data, step, timestamp, overwrite)
        if record is None:
            return
        if isinstance(record, list):
            for item in record:
                self._put(item)
        else:
            self._put(record)

    def log_metric(
        self,
        name: str,
        value: float | Iterable[float],
        step: float | None = None,
        *,
        overwrite: bool = False,
        single_value: bool = False,
        timestamp: float | None = None,
    ) -> None:
        """Append `value` to the series `name` at `step` (DigitalHub's `log_metric`).

        A list (or other iterable) of values appends each at consecutive steps: `step`,
        `step + 1`, ... when `step` is given, else the service's next steps.
        `overwrite=True` replaces the series (see `log_metrics`): `log_metric("acc",
        [0.8, 0.9], overwrite=True)` leaves the series [0.8, 0.9] at steps 0 and 1.

        `single_value=True` stores one number as a run attribute instead (`run.values`,
        `RunInfo.values`), replacing an earlier value of that name; it has no step or
        timestamp and is queued like `log_configs`. Single values are JSON numbers, so they
        must be finite. A single value and a series may share a name; they are separate.
        """
        if not isinstance(overwrite, bool):
            raise InvalidArgumentError(f"overwrite must be a bool, got {overwrite!r}")
        if single_value:
            self._log_single_value(name, value, step, timestamp)
            return
        record = self._records.float_values(name, value, step, timestamp, overwrite)
        if record is not None:
            self._put(record)

    def _log_single_value(self, name: str, value: object, step: object, timestamp: object) -> None:
        check_name(name, "value name")
        if isinstance(value, Iterable) and not isinstance(value, (str, bytes, bytearray)):
            raise InvalidArgumentError(
                f"single_value=True stores one number, got a {type(value).__name__} for "
                f"{name!r}; log a list without single_value to append it to the series"
            )
        if step is not None:
            raise InvalidArgumentError(
                f"single_value=True stores an attribute, which has no step (got step={step!r})"
            )
        if timestamp is not None:
            raise InvalidArgumentError(
                "single_value=True stores an attribute, which has no timestamp "
                f"(got timestamp={timestamp!r})"
            )
        # Single values travel as JSON numbers (google.protobuf.Struct): finite only.
        number = check_real(value, f"single value {name!r}")
        values = struct_from_dict({name: number}, "values")
        request = runs_pb2.UpdateRunConfigRequest(
            project=self._project, run_id=self._run_id, values=values
        )
        self._submit(
            "UpdateRunConfig", lambda stub: stub.UpdateRunConfig(request, timeout=UNARY_TIMEOUT)
        )
        self._info = dataclasses.replace(self._info, values={**self._info.values, name: number})

    def log_strings(
        self,
        data: Mapping[str, str],
        step: float | None = None,
        *,
        timestamp: float | None = None,
    ) -> None:
        """Append one str to each string series in `data` (e.g. console lines), at `step`."""
        record = self._records.string_rows(data, step, timestamp)
        if record is not None:
            self._put(record)

    def _put(self, record: Record) -> None:
        if self._closed:
            raise RunClosedError(f"run {self._run_id!r} is closed")
        self._policies.check_rejection()
        self._sender.put(record)

    # ---- metadata (queued, applied in order with the points) --------------------------

    def log_configs(self, config: Mapping[str, Any]) -> None:
        """Merge `config` into the run's config (a key "sys/description" sets the description).

        Checked now, sent by the background thread in order with the points; a failure goes
        to on_error. The local `run.config` / `run.description` are updated at once.
        """
        struct = struct_from_dict(config)
        _check_description_entry(config)
        request = runs_pb2.UpdateRunConfigRequest(
            project=self._project, run_id=self._run_id, config=struct
        )
        self._submit(
            "UpdateRunConfig", lambda stub: stub.UpdateRunConfig(request, timeout=UNARY_TIMEOUT)
        )
        for key, value in dict_from_struct(struct).items():
            if key == DESCRIPTION_KEY:
                self._description = self._synced_description = value
            else:
                self._config[key] = value
                self._synced_config[key] = copy.deepcopy(value)

    def add_tags(self, tags: str | Iterable[str]) -> None:
        """Add tags (queued like log_configs; the local `run.tags` is updated at once)."""
        added = check_tags(tags)
        request = runs_pb2.UpdateRunTagsRequest(
            project=self._project, run_id=self._run_id, add=added
        )
        self._submit(
            "UpdateRunTags", lambda stub: stub.UpdateRunTags(request, timeout=UNARY_TIMEOUT)
        )
        self._tags = sorted(set(self._tags) | set(added))
        self._synced_tags = sorted(set(self._synced_tags) | set(added))

    def remove_tags(self, tags: str | Iterable[str]) -> None:
        """Remove tags (queued like log_configs; the local `run.tags` is updated at once)."""
        removed = check_tags(tags)
        request = runs_pb2.UpdateRunTagsRequest(
            project=self._project, run_id=self._run_id, remove=removed
        )
        self._submit(
            "UpdateRunTags", lambda stub: stub.UpdateRunTags(request, timeout=UNARY_TIMEOUT)
        )
        self._tags = sorted(set(self._tags) - set(removed))
        self._synced_tags = sorted(set(self._synced_tags) - set(removed))

    def _submit(
        self, name: str, call: UnaryCall | None = None, *, report: bool = True
    ) -> concurrent.futures.Future[Any]:
        if self._closed:
            raise RunClosedError(f"run {self._run_id!r} is closed")
        self._raise_if_failed()
        try:
            return self._sender.submit(Operation(name, call=call, report=report))
        except RunClosedError:
            self._raise_if_failed()
            raise

    def _raise_if_failed(self) -> None:
        fatal = self._sender.fatal
        if fatal is not None:
            raise _copy_error(fatal) from None

    # ---- waiting and lifecycle ----------------------------------------------------------

    def wait(self, timeout: float | None = None, *, verbose: bool = True) -> Run:
        """Block until every point logged so far is answered and every queued update is done.

        Shows progress on stderr when it takes more than a second (unless `verbose` is
        False). Raises WaitTimeoutError after `timeout` seconds, and RPCError if the sender
        has given up (e.g. the service stayed unreachable for `reconnect_timeout`).
        """
        if self._closed:
            return self
        self._await(self._submit("wait", report=False), timeout, verbose, "wait()")
        return self

    def stop(self) -> None:
        """Wait for everything logged so far, then move the run to STOPPED.

        Points logged while the run is stopped are rejected (RUN_NOT_ACTIVE) until resume().
        """
        request = runs_pb2.StopRunRequest(project=self._project, run_id=self._run_id)
        future = self._submit(
            "StopRun", lambda stub: stub.StopRun(request, timeout=UNARY_TIMEOUT), report=False
        )
        self._note_state(self._await(future, None, True, "stop()"))

    def resume(self) -> None:
        """Move the run back to RUNNING (after stop(), or for a FINISHED/FAILED run)."""
        request = runs_pb2.ResumeRunRequest(project=self._project, run_id=self._run_id)
        future = self._submit(
            "ResumeRun", lambda stub: stub.ResumeRun(request, timeout=UNARY_TIMEOUT), report=False
        )
        self._note_state(self._await(future, None, True, "resume()"))

    def _note_state(self, response: Any) -> None:
        """Keep `state` current after a state change, without touching local edits."""
        run = getattr(response, "run", None)
        if isinstance(run, runs_pb2.Run):
            state = run_info_from_proto(run).state
            self._info = dataclasses.replace(self._info, state=state)

    def close(self, timeout: float | None = None) -> None:
        """Flush, move the run to FINISHED, stop the background thread. Idempotent.

        Shows progress while it waits; logs a summary of everything the service rejected.
        Raises WaitTimeoutError when `timeout` runs out (the thread is stopped anyway and
        the summary says how many points were not acknowledged), and RPCError if the points
        could not be delivered or the run could not be finished.
        """
        request = runs_pb2.FinishRunRequest(project=self._project, run_id=self._run_id)
        self._shutdown(
            "FinishRun", lambda stub: stub.FinishRun(request, timeout=UNARY_TIMEOUT), timeout
        )

    def _shutdown(self, name: str, call: UnaryCall, timeout: float | None) -> None:
        if self._closed:
            return
        self._closed = True
        _open_runs.discard(self)
        deadline = None if timeout is None else time.monotonic() + timeout

        def remaining() -> float | None:
            return None if deadline is None else max(deadline - time.monotonic(), 0.0)

        error: BaseException | None = None
        try:
            self._raise_if_failed()
            final = self._sender.submit(Operation(name, call=call))
            stop = self._sender.submit(Operation("stop", stop=True))
            self._note_state(self._await(final, remaining(), True, "close()"))
            self._await(stop, remaining(), False, "close()")
            self._sender.join(remaining())
        except RunClosedError:
            error = _copy_error(self._sender.fatal) if self._sender.fatal else None
        except BaseException as exc:
            error = exc
        finally:
            self._sender.abort()
            self._client.close()
            self._summarise()
        if error is not None:
            raise error

    def _await(
        self,
        future: concurrent.futures.Future[_T],
        timeout: float | None,
        verbose: bool,
        action: str,
    ) -> _T:
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        progress = _Progress(sys.stderr) if verbose else None
        try:
            while True:
                now = time.monotonic()
                step = 0.25 if deadline is None else min(0.25, max(deadline - now, 0.0))
                try:
                    return future.result(timeout=step)
                except concurrent.futures.TimeoutError:
                    pass
                except StepstreamError as exc:
                    raise _copy_error(exc) from None
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    pending = self._sender.stats().pending_points
                    raise WaitTimeoutError(
                        f"{action} timed out after {timeout:g} s with {pending:,} points "
                        "not yet acknowledged"
                    )
                if progress is not None and now - start >= 1.0:
                    progress.show(self._sender.stats())
        finally:
            if progress is not None:
                progress.end()

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.fail(repr(exc))
        except Exception as error:  # never hide the exception that is propagating
            logger.warning("stepstream: could not mark run %r as failed: %s", self._run_id, error)

    def detach(self, timeout: float | None = None) -> None:
        """Like close(), but the run keeps its state: for one of several processes sharing a
        run (the ranks of a distributed job), which must not finish it for the others."""
        request = runs_pb2.GetRunRequest(project=self._project, run_id=self._run_id)
        self._shutdown("GetRun", lambda stub: stub.GetRun(request, timeout=UNARY_TIMEOUT), timeout)

    def fail(self, reason: str, timeout: float | None = None) -> None:
        """Like close(), but the run ends FAILED with `reason` (e.g. from a framework's
        failure hook). Idempotent: a closed Run stays as it ended."""
        request = runs_pb2.FailRunRequest(
            project=self._project, run_id=self._run_id, reason=reason[:4096]
        )
        self._shutdown(
            "FailRun", lambda stub: stub.FailRun(request, timeout=UNARY_TIMEOUT), timeout
        )

    # ---- errors -------------------------------------------------------------------------

    def _report(self, error: IngestError) -> None:
        key = (error.reason, error.series)
        with self._errors_lock:
            self._errors.append(error)
            self._error_counts[key] += 1
            self._error_points[key] += error.count
            seen = self._error_counts[key]
        if self._on_error is not None:
            self._on_error(error)
        elif seen <= LOGGED_ERRORS_PER_KIND:
            more = (
                " (further ones are counted and summarised at close())"
                if (seen == LOGGED_ERRORS_PER_KIND)
                else ""
            )
            logger.warning("stepstream: run %r: %s%s", self._run_id, error, more)

    def _summarise(self) -> None:
        stats = self._sender.stats()
        with self._errors_lock:
            kinds = sorted(self._error_counts.items())
            points = dict(self._error_points)
        lines = []
        for (reason, series), count in kinds:
            where = f"series {series!r}" if series else "whole batches/run"
            lines.append(
                f"  {reason} ({where}): {points[reason, series]:,} points in {count:,} reports"
            )
        lost = stats.pending_points - stats.spooled_points  # spooled: the spool's own warning
        if lost > 0:
            lines.append(f"  {lost:,} logged points were never acknowledged")
        if lines:
            logger.warning(
                "stepstream: run %r closed with problems (acknowledged %s of %s points):\n%s",
                self._run_id,
                f"{stats.acknowledged_points:,}",
                f"{stats.logged_points:,}",
                "\n".join(lines),
            )

    # ---- reads (synchronous) --------------------------------------------------------

    @contextlib.contextmanager
    def _reader(self) -> Iterator[RunClient]:
        """The Run's own RunService channel, or a temporary one once the Run is closed."""
        if not self._closed:
            yield self._client
            return
        client = RunClient(self._target)
        try:
            yield client
        finally:
            client.close()

    def _flush(self) -> None:
        """wait() quietly, unless there is nothing a wait could deliver any more."""
        if not self._closed and self._sender.fatal is None:
            self.wait(verbose=False)

    def _selector(
        self, incarnation_id: str | None, own_points_only: bool
    ) -> runs_pb2.SeriesSelector:
        if incarnation_id is None:
            return make_selector(
                self._project, run_id=self._run_id, own_points_only=own_points_only
            )
        return make_selector(
            self._project, incarnation_id=incarnation_id, own_points_only=own_points_only
        )

    def read_series(
        self,
        name: str,
        *,
        step_min: float | None = None,
        step_max: float | None = None,
        own_points_only: bool = False,
        max_points: int | None = None,
        incarnation_id: str | None = None,
        generation: int | None = None,
        string_series: bool | None = None,
    ) -> Series:
        """Read one series of this run, in step order.

        By default the run's current view, with the points it inherits from its fork parents
        (Neptune's "show inherited metrics"); `own_points_only=True` returns only the points
        this run's incarnation stored itself. `incarnation_id` reads exactly that incarnation
        instead (an archived one from `history()`, or any other "immutable run ID").

        `step_min`/`step_max` bound the steps (inclusive). `max_points` downsamples to at
        most that many points for plotting, keeping each bucket's first, last, minimum and
        maximum point and its first NaN (the service needs max_points >= 5). `generation`
        reads an older generation of a series replaced by `overwrite=True` (0 = before the
        first overwrite; own points of the viewed incarnation). A float and a string series
        may share a name: the float one is returned unless `string_series=True`. A series
        that does not exist reads as an empty Series.

        Reads what the service has stored: call wait() first to read what you just logged.
        """
        check_name(name, "series name")
        selector = self._selector(incarnation_id, own_points_only)
        lo, hi, most, gen = check_read_range(step_min, step_max, max_points, generation)
        with self._reader() as client:
            return client.read_series(
                selector,
                name,
                step_min=lo,
                step_max=hi,
                max_points=most,
                generation=gen,
                string_series=string_series,
            )

    def list_series(
        self, *, own_points_only: bool = False, incarnation_id: str | None = None
    ) -> list[SeriesSummary]:
        """Summaries of every series visible in this run (or in `incarnation_id`), sorted by
        name; float and string series alike."""
        selector = self._selector(incarnation_id, own_points_only)
        with self._reader() as client:
            return client.list_series(selector)

    def summary(
        self, *, own_points_only: bool = False, incarnation_id: str | None = None
    ) -> dict[str, SeriesSummary]:
        """W&B's run summary: float series name -> SeriesSummary (count, last step, last,
        min, max, generation), computed by the service from the current view, so it follows
        rewinds and overwrites. String series are left out (see `logs()`)."""
        return {
            s.name: s
            for s in self.list_series(
                own_points_only=own_points_only, incarnation_id=incarnation_id
            )
            if not s.string_series
        }

    def logs(
        self,
        *,
        step_min: float | None = None,
        step_max: float | None = None,
        own_points_only: bool = False,
        incarnation_id: str | None = None,
    ) -> dict[str, list[tuple[float, str]]]:
        """The run's string series (console lines, `log_strings`): name -> [(step, line)].

        Inherited lines are included unless `own_points_only`; a rewind cuts them back like
        any other series. Reads what the service has stored: call wait() first.
        """
        selector = self._selector(incarnation_id, own_points_only)
        lo, hi, _, _ = check_read_range(step_min, step_max, None, None)
        with self._reader() as client:
            names = [s.name for s in client.list_series(selector) if s.string_series]
            if not names:
                return {}
            _, strings = client.read(selector, names, step_min=lo, step_max=hi)
        return {
            name: list(zip(series.steps, series.values, strict=True))  # type: ignore[arg-type]
            for name, series in sorted(strings.items())
        }

    def get_run(self) -> RunInfo:
        """The run as the service knows it now: state, tags, config, values, incarnations."""
        with self._reader() as client:
            return client.get_run(self._project, self._run_id)

    def history(self) -> list[Incarnation]:
        """This run's rewind history (W&B's "Forked From"): its incarnations, oldest first.

        The last one is current; each earlier one was archived by a rewind and stays readable
        with `read_series(..., incarnation_id=...)`. Each has its parent (the incarnation it
        continues: the previous one for a rewind, the fork parent for the first incarnation
        of a fork), the step where that parent was cut (`fork_step`) and its creation time.
        """
        return list(self.get_run().incarnations)

    def lineage(self) -> list[Incarnation]:
        """Where this run's current view comes from: the chain of incarnations, oldest first,
        ending with the current one.

        Follows parents across runs (forks) and within a run (rewinds). Each entry's
        `fork_step` is where its parent was cut, so the points visible now are: the oldest
        entry's up to the next entry's fork_step, and so on (each hop also limited by the
        cuts below it). A parent that cannot be read (e.g. in another project) ends the
        chain with an entry whose origin is "UNKNOWN".
        """
        with self._reader() as client:
            return read_lineage(client, self._project, self.get_run())

    # ---- DigitalHub CRUD: refresh, save, export -----------------------------------------

    def refresh(self) -> Run:
        """Re-read the run from the service into this object: state, tags, description,
        config, values, incarnations. Waits for everything logged so far first (like
        wait()), so it reads this Run's own queued updates; unsaved local edits of
        `config`, `tags` and `description` are replaced. Returns the Run."""
        self._flush()
        with self._reader() as client:
            info = client.get_run(self._project, self._run_id)
        self._adopt(info)
        return self

    def save(self) -> Run:
        """Push the local metadata you changed to the service, then refresh. Returns the Run.

        Local metadata is `run.config`, `run.tags` and `run.description`. Config entries
        added or changed since the last read are merged into the service's config; tags
        added or removed locally are added or removed; a changed description is set. Changes
        made on the service meanwhile by others are kept (only your edits are sent). The
        service's config can only be merged into, so a config key deleted locally raises
        InvalidArgumentError (set it to None instead). Everything is checked before anything
        is sent; earlier log calls and queued updates are applied first.
        """
        removed = sorted(key for key in self._synced_config if key not in self._config)
        if removed:
            raise InvalidArgumentError(
                f"config keys {removed} were removed from run.config, but the service's config "
                "can only be merged into; put them back (set them to None to clear them)"
            )
        if DESCRIPTION_KEY in self._config:
            raise InvalidArgumentError(
                f"run.config has a {DESCRIPTION_KEY!r} key; set run.description instead"
            )
        changed = {
            key: value
            for key, value in self._config.items()
            if key not in self._synced_config or self._synced_config[key] != value
        }
        description = self._description
        if not isinstance(description, str):
            raise InvalidArgumentError(
                f"run.description must be a str, got {type(description).__name__}"
            )
        if description != self._synced_description:
            changed[DESCRIPTION_KEY] = description
        struct = struct_from_dict(changed, "run.config") if changed else None
        tags = set(check_tags(self._tags, "run.tags"))
        add = sorted(tags - set(self._synced_tags))
        remove = sorted(set(self._synced_tags) - tags)
        self._flush()
        with self._reader() as client:
            if struct is not None:
                client.update_run_config(self._project, self._run_id, config=struct)
            if add or remove:
                client.update_run_tags(self._project, self._run_id, add=add, remove=remove)
            info = client.get_run(self._project, self._run_id)
        self._adopt(info)
        return self

    def export(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        format: str | None = None,
        include_series: bool = False,
    ) -> str:
        """Write the run to a local YAML, JSON or Parquet file; returns the file's path.

        The file holds the run as the service has it, after everything logged so far is
        acknowledged (unsaved local edits are not in it: save() first): project, run_id,
        experiment, state, description, tags, config, values, times, the rewind history, the
        lineage (incarnations with their parents and fork steps, oldest first), a summary of
        every series, and with `include_series=True` every series' points (steps, values,
        timestamps; inherited points included). `path` defaults to "<run_id>.yaml" in the
        current directory; the format comes from `format` ("yaml" or "json") or else from the
        extension (.yaml, .yml, .json, .parquet). YAML needs the `yaml` extra (PyYAML), Parquet
        the `parquet` extra (pyarrow; a Parquet file always holds every point); a missing one
        raises MissingExtraError. `stepstream.load_export()` reads any of them back.
        """
        self._flush()
        with self._reader() as client:
            return write_export(client, self._project, self._run_id, path, format, include_series)


def _branch(
    run_id: str | None,
    *,
    fork_run_id: str | None,
    fork_step: float | None,
    fork_incarnation_id: str | None,
    fork_from: str | None,
    resume_from: str | None,
    resume: bool,
    inherit_configs: bool,
) -> _Branch:
    """Check the arguments that say where a run comes from (fork, rewind, new)."""
    if fork_from is not None and resume_from is not None:
        raise InvalidArgumentError(
            "fork_from and resume_from are mutually exclusive: fork_from starts a new run from "
            "'<run_id>?_step=<N>', resume_from rewinds that run itself; give one of them"
        )
    moment = (
        "fork_from" if fork_from is not None else "resume_from" if resume_from is not None else None
    )
    if moment is not None:
        others = [
            what
            for what, value in (
                ("fork_run_id", fork_run_id),
                ("fork_step", fork_step),
                ("fork_incarnation_id", fork_incarnation_id),
            )
            if value is not None
        ]
        if others:
            raise InvalidArgumentError(
                f"{moment} already names the run and the step ('<run_id>?_step=<N>'); do not "
                f"also give {', '.join(others)}"
            )
    if fork_from is not None:
        parent, step = parse_run_moment(fork_from, "fork_from")
        if run_id is not None and run_id == parent:
            raise InvalidArgumentError(
                f"fork_from {fork_from!r} names this run's own run_id {run_id!r}; a fork is a "
                f"new run and needs another run_id (or none). To cut run {run_id!r} back to "
                f"that step and continue it, use resume_from={fork_from!r} instead"
            )
        return _Branch(fork_run_id=parent, fork_step=step)
    if resume_from is not None:
        target, step = parse_run_moment(resume_from, "resume_from")
        if run_id is not None and run_id != target:
            raise InvalidArgumentError(
                f"run_id {run_id!r} and resume_from {resume_from!r} name different runs; "
                f"resume_from rewinds and attaches to run {target!r}: omit run_id or give "
                f"run_id={target!r}"
            )
        if resume:
            raise InvalidArgumentError(
                "resume_from already attaches to the run it rewinds; drop resume=True"
            )
        if inherit_configs:
            raise InvalidArgumentError(
                "inherit_configs applies to forks; resume_from keeps the run's config (merge "
                "entries into it with config=...)"
            )
        return _Branch(rewind_run_id=target, rewind_step=step)
    if fork_incarnation_id is not None:
        if fork_run_id is not None:
            raise InvalidArgumentError(
                "give fork_run_id or fork_incarnation_id, not both (got "
                f"fork_run_id={fork_run_id!r}, fork_incarnation_id={fork_incarnation_id!r})"
            )
        check_id(fork_incarnation_id, "fork_incarnation_id")
        if fork_step is None:
            raise InvalidArgumentError(
                f"fork_incarnation_id needs fork_step (got fork_incarnation_id="
                f"{fork_incarnation_id!r}, fork_step=None)"
            )
        return _Branch(
            fork_incarnation_id=fork_incarnation_id, fork_step=check_real(fork_step, "fork_step")
        )
    if (fork_run_id is None) != (fork_step is None):
        raise InvalidArgumentError(
            "fork_run_id and fork_step must be given together "
            f"(got fork_run_id={fork_run_id!r}, fork_step={fork_step!r})"
        )
    if fork_run_id is not None:
        check_id(fork_run_id, "fork_run_id")
        return _Branch(fork_run_id=fork_run_id, fork_step=check_real(fork_step, "fork_step"))
    if inherit_configs:
        raise InvalidArgumentError(
            "inherit_configs=True needs a fork: give fork_run_id, fork_incarnation_id or fork_from"
        )
    return _Branch()


@dataclasses.dataclass(frozen=True)
class _Branch:
    """Where a new Run comes from: a fork parent (run or incarnation, with the step), a run
    to rewind (resume_from), or nothing."""

    fork_run_id: str = ""
    fork_incarnation_id: str = ""
    fork_step: float | None = None
    rewind_run_id: str = ""
    rewind_step: float = 0.0


def _check_description_entry(config: Mapping[str, Any]) -> None:
    if DESCRIPTION_KEY in config and not isinstance(config[DESCRIPTION_KEY], str):
        value = config[DESCRIPTION_KEY]
        raise InvalidArgumentError(
            f"config[{DESCRIPTION_KEY!r}] sets the description and must be a str, got "
            f"{type(value).__name__}"
        )


def _copy_error(error: StepstreamError) -> StepstreamError:
    """A fresh exception equal to `error`, so that raising it again and again (one failure
    seen by many calls) does not grow one traceback forever."""
    if isinstance(error, RPCError):
        return RPCError(
            error.code,
            error.message,
            reason=error.reason,
            domain=error.domain,
            metadata=error.metadata,
        )
    return type(error)(*error.args)


class _Progress:
    """Progress of a long wait on stderr: one updating line on a terminal, else a line every
    five seconds."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._tty = stream.isatty()
        except Exception:  # a replaced stderr without isatty
            self._tty = False
        self._width = 0
        self._last = 0.0

    def show(self, stats: SenderStats) -> None:
        now = time.monotonic()
        if not self._tty and now - self._last < 5.0:
            return
        self._last = now
        done = stats.logged_points - stats.pending_points
        text = f"stepstream: {done:,} of {stats.logged_points:,} points acknowledged"
        if not stats.connected:
            text += " (reconnecting)"
        try:
            if self._tty:
                self._stream.write("\r" + text.ljust(self._width))
                self._width = len(text)
            else:
                self._stream.write(text + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed: progress is best effort
            pass

    def end(self) -> None:
        if self._tty and self._width:
            try:
                self._stream.write("\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass


def _close_open_runs() -> None:
    """atexit: close runs the program forgot, each bounded by its reconnect timeout."""
    for run in list(_open_runs):
        try:
            run.close(timeout=run._reconnect_timeout + run._connect_timeout)
        except BaseException as exc:
            logger.warning("stepstream: closing run %r at exit failed: %s", run.run_id, exc)


atexit.register(_close_open_runs)
