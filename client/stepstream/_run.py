"""`stepstream.Run`: what a trainer logs to."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

from stepstream.v1 import runs_pb2

from . import _lifecycle
from ._client import RunClient
from ._convert import config_json, run_info_from_proto
from ._error_log import ErrorLog
from ._exceptions import InvalidArgumentError, RunClosedError
from ._offline import sender_spool
from ._operations import UNARY_TIMEOUT, Operation, UnaryCall
from ._origin import branch as _branch
from ._origin import check_description_entry, open_run
from ._policies import Policies
from ._progress import await_result, copy_error
from ._records import Record, RecordMaker
from ._security import Pem
from ._sender import Sender
from ._targets import Address, resolve_target
from ._types import IngestError, RunInfo, SenderStats
from ._updates import QueuedUpdates
from ._validate import (
    check_id,
    check_positive_float,
    check_positive_int,
    check_tags,
)
from .rules import MAX_BATCH_POINTS as SERVER_MAX_BATCH_POINTS

logger = logging.getLogger("stepstream")

_T = TypeVar("_T")


class Run(QueuedUpdates):
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
        tls, root_certificates, client_certificate, client_key, token: how to authenticate
            (README: Security): TLS with the system's roots (tls=True) or with a CA file,
            a client certificate for mTLS, and the access token of a service that runs with
            --auth required. Default: $STEPSTREAM_TLS, $STEPSTREAM_TLS_CA,
            $STEPSTREAM_TLS_CERT, $STEPSTREAM_TLS_KEY and $STEPSTREAM_TOKEN.
        mode, on_full, on_unavailable, on_rejection, spool_max_bytes: offline runs and the
            spool; see `_policies` and the README's "Offline and unreliable networks".

    Local metadata (DigitalHub's Run object): `run.config`, `run.tags` and `run.description`
    are local copies, read from the service when the Run is created and by `refresh()`. Edit
    them freely; `save()` pushes what you changed. `log_configs`, `add_tags` and
    `remove_tags` update them too (and queue the change for the service). `state`, `values`
    and `incarnations` are as of the last `refresh()` (or creation) and of this Run's own
    calls. These attributes are meant for the thread that owns the Run.

    Reads (`read_series`, `list_series`, `summary`, `logs`, `get_run`, `history`, `lineage`,
    `refresh`, `export`) are those of `RunHandle`, after waiting for what this Run logged.

    How the run ends: `close()` or the end of a `with` block finishes it; an exception
    through `with` fails it with "<type>: <message>". A Run left open ends FINISHED at a
    normal interpreter exit, FAILED on an uncaught exception, Ctrl-C or SIGTERM (see
    docs/run-states.md: the SIGTERM handler is installed only over Python's default).
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
        tls: bool | None = None,
        root_certificates: Pem | None = None,
        client_certificate: Pem | None = None,
        client_key: Pem | None = None,
        token: str | None = None,
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
        config_text = config_json(config) if config is not None else ""
        if config is not None:
            check_description_entry(config)
        tag_list = check_tags(tags)
        request = runs_pb2.CreateRunRequest(
            project=project or "",
            experiment=experiment_name or "",
            run_id=run_id or "",
            tags=tag_list,
            description=description or "",
            config_json=config_text,
            fork_run_id=branch.fork_run_id,
            fork_incarnation_id=branch.fork_incarnation_id,
            fork_step=branch.fork_step,
            inherit_configs=inherit_configs,
            get_if_exists=resume,
        )

        self._error_log = ErrorLog(run_id or "", on_error)
        self._records = RecordMaker()
        self._closed = False

        self._target = resolve_target(
            address,
            tls=tls,
            root_certificates=root_certificates,
            client_certificate=client_certificate,
            client_key=client_key,
            token=token,
        )
        self._address = self._target.address
        self._client = RunClient(self._target)
        opened = open_run(
            self._client,
            request,
            branch,
            policies,
            writer_id=self._writer_id,
            config=config,
            tags=tag_list,
            description=description,
            experiment_name=experiment_name,
            resume=resume,
            connect_timeout=self._connect_timeout,
        )
        info, fallback = opened.info, opened.parent_fallback
        self._run_id = self._error_log.run_id = info.run_id
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
            report=policies.watch(self._error_log.report),
            max_queued_points=max_queued_points,
            max_batch_points=max_batch_points,
            max_inflight_batches=max_inflight_batches,
            connect_timeout=self._connect_timeout,
            reconnect_timeout=self._reconnect_timeout,
            **sender_spool(
                policies, opened.spool, self._project, self._run_id, self._writer_id, self._address
            ),
        )
        # The per-call pattern's path, bound once (each attribute lookup shows in its cost).
        self._put_point = self._sender.buffer.put_point
        self._float_rows = self._records.float_rows
        self._check_rejection = policies.check_rejection if policies.raises_rejections else None
        self._sender.start()
        _lifecycle.track(self)

    def _adopt(self, info: RunInfo) -> None:
        """Take `info` as the service's current view of the run (local edits are replaced)."""
        super()._adopt(info)
        self._incarnation_id = info.incarnation_id

    # ---- identity ---------------------------------------------------------------------

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
        return self._error_log.errors

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
        if overwrite is not False and not isinstance(overwrite, bool):
            raise InvalidArgumentError(f"overwrite must be a bool, got {overwrite!r}")
        record = self._float_rows(data, step, timestamp, overwrite)
        if type(record) is tuple:  # a one-key call: the per-call pattern's fast path
            if self._closed:
                raise RunClosedError(f"run {self._run_id!r} is closed")
            if self._check_rejection is not None:
                self._check_rejection()
            self._put_point(record)
        elif isinstance(record, list):
            for item in record:
                self._put(item)
        elif record is not None:
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
        timestamp and is queued like `log_configs`. It keeps its type, like config: an int
        stays an int, and a float may be NaN or infinite. A single value and a series may
        share a name; they are separate.
        """
        if not isinstance(overwrite, bool):
            raise InvalidArgumentError(f"overwrite must be a bool, got {overwrite!r}")
        if single_value:
            self._log_single_value(name, value, step, timestamp)
            return
        record = self._records.float_values(name, value, step, timestamp, overwrite)
        if record is not None:
            self._put(record)

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
        if self._check_rejection is not None:
            self._check_rejection()
        if type(record) is tuple:
            self._put_point(record)
        else:
            self._sender.put(record)

    # ---- queued operations ------------------------------------------------------------

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
            raise copy_error(fatal) from None

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
        _lifecycle.untrack(self)
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
            error = copy_error(self._sender.fatal) if self._sender.fatal else None
        except BaseException as exc:
            error = exc
        finally:
            self._sender.abort()
            self._client.close()
            self._error_log.summarise(self._sender.stats())
        if error is not None:
            raise error

    def _await(
        self,
        future: concurrent.futures.Future[_T],
        timeout: float | None,
        verbose: bool,
        action: str,
    ) -> _T:
        return await_result(future, timeout, verbose, action, self._sender.stats)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
            self.close()
            return
        try:
            self.fail(_lifecycle.failure_reason(exc))
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

    def _fail_directly(self, reason: str, timeout: float) -> None:
        """FailRun on a channel of its own, past the sender (SIGTERM's last resort, when the
        orderly fail() could not run): what is still queued is lost, the state is truthful."""
        self._closed = True
        _lifecycle.untrack(self)
        with RunClient(self._target) as client:
            client.fail_run(self._project, self._run_id, reason[:4096], timeout=timeout)

    # ---- reads (RunHandle's, through the Run's channel) ----------------------------------

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
