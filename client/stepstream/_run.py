"""`stepstream.Run`: what a trainer logs to."""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import logging
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TextIO, TypeVar

import grpc

from stepstream.v1 import runs_pb2

from ._client import RunClient, resolve_address
from ._convert import struct_from_dict
from ._exceptions import (
    InvalidArgumentError,
    RPCError,
    RunClosedError,
    StepstreamError,
    WaitTimeoutError,
)
from ._records import Record, RecordMaker
from ._sender import UNARY_TIMEOUT, Operation, Sender, UnaryCall
from ._types import IngestError, RunInfo, SenderStats, Series, SeriesSummary
from ._validate import (
    check_id,
    check_name,
    check_positive_float,
    check_positive_int,
    check_real,
    check_tags,
)

logger = logging.getLogger("stepstream")

SERVER_MAX_BATCH_POINTS = 100_000
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

    Args:
        run_id: the run's ID (1-128 characters of [A-Za-z0-9._:-]); None lets the service
            generate one.
        project: the project; None means the service's default.
        experiment_name: an experiment to create the run in (the run becomes its head).
        address: "host:port" of the service; default $STEPSTREAM_ADDRESS or 127.0.0.1:50051.
        tags, description, config: initial metadata.
        fork_run_id, fork_step: fork from this run at this step (both or neither).
        inherit_configs: with a fork, inherit the parent's config too.
        resume: attach to an existing run `run_id` (created if missing), resuming it if it
            is not RUNNING. Without it, an existing run_id is an error.
        writer_id: the stream's writer ID (default: random); batches are numbered per writer,
            so a stable writer_id lets a restarted process continue the numbering.
        on_error: called, from the background thread, with each IngestError; keep it quick.
            Default: log at WARNING on the "stepstream" logger.
        max_queued_points: memory bound of the queue, in points (see Backpressure).
        max_batch_points: points per batch sent (the service accepts up to 100,000).
        max_inflight_batches: batches sent but not yet acknowledged.
        connect_timeout: seconds to wait for the service when creating the run and when
            opening a stream.
        reconnect_timeout: seconds to keep reconnecting a failed stream before giving up.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        project: str | None = None,
        experiment_name: str | None = None,
        address: str | None = None,
        tags: Iterable[str] | None = None,
        description: str | None = None,
        config: Mapping[str, Any] | None = None,
        fork_run_id: str | None = None,
        fork_step: float | None = None,
        inherit_configs: bool = False,
        resume: bool = False,
        writer_id: str | None = None,
        on_error: Callable[[IngestError], None] | None = None,
        max_queued_points: int = 1_000_000,
        max_batch_points: int = 20_000,
        max_inflight_batches: int = 32,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 300.0,
    ) -> None:
        if run_id is not None:
            check_id(run_id, "run_id")
        if (fork_run_id is None) != (fork_step is None):
            raise InvalidArgumentError(
                "fork_run_id and fork_step must be given together "
                f"(got fork_run_id={fork_run_id!r}, fork_step={fork_step!r})"
            )
        if fork_run_id is not None:
            check_id(fork_run_id, "fork_run_id")
            fork_step = check_real(fork_step, "fork_step")
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
        request = runs_pb2.CreateRunRequest(
            project=project or "",
            experiment=experiment_name or "",
            run_id=run_id or "",
            tags=check_tags(tags),
            description=description or "",
            config=struct_from_dict(config) if config is not None else None,
            fork_run_id=fork_run_id or "",
            fork_step=fork_step,
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

        self._address = resolve_address(address)
        self._client = RunClient(self._address)
        try:
            response = self._client.create_run(request, timeout=self._connect_timeout)
            created = response.run
            if resume and created.state != runs_pb2.RUN_STATE_RUNNING:
                self._client.resume_run(created.project, created.run_id)
        except RPCError as exc:
            self._client.close()
            if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise RPCError(
                    exc.code,
                    f"could not create the run: no answer from the stepstream service at "
                    f"{self._address} within {self._connect_timeout:g} s ({exc.message})",
                    reason=exc.reason,
                    domain=exc.domain,
                    metadata=exc.metadata,
                ) from None
            raise
        except BaseException:
            self._client.close()
            raise
        self._run_id = created.run_id
        self._project = created.project or (project or "")
        self._experiment_name = created.experiment or experiment_name or None
        self._incarnation_id = created.current_incarnation_id
        self._parent_fallback = response.parent_fallback

        self._sender = Sender(
            address=self._address,
            project=self._project,
            run_id=self._run_id,
            writer_id=self._writer_id,
            report=self._report,
            max_queued_points=max_queued_points,
            max_batch_points=max_batch_points,
            max_inflight_batches=max_inflight_batches,
            connect_timeout=self._connect_timeout,
            reconnect_timeout=self._reconnect_timeout,
        )
        self._sender.start()
        _open_runs.add(self)

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

    # ---- logging (never waits on the network) --------------------------------------------

    def log_metrics(
        self,
        data: Mapping[str, float],
        step: float | None = None,
        *,
        timestamp: float | None = None,
    ) -> None:
        """Append one point to each series in `data`, all at `step`.

        With `step` None the service gives each series its next step (floor + 1, or 0 for a
        new series). `timestamp` (seconds since the epoch) defaults to now. Values may be any
        real numbers, NaN and infinities included. Raises InvalidArgumentError (a ValueError)
        for a bad name, step or value; blocks only while the queue is full.
        """
        record = self._records.float_rows(data, step, timestamp)
        if record is not None:
            self._put(record)

    def log_metric(
        self,
        name: str,
        value: float | Iterable[float],
        step: float | None = None,
        *,
        timestamp: float | None = None,
    ) -> None:
        """Append `value` to the series `name` at `step`.

        A list (or other iterable) of values appends each at consecutive steps: `step`,
        `step + 1`, ... when `step` is given, else the service's next steps.
        """
        record = self._records.float_values(name, value, step, timestamp)
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
        self._sender.put(record)

    # ---- metadata (queued, applied in order with the points) --------------------------

    def log_configs(self, config: Mapping[str, Any]) -> None:
        """Merge `config` into the run's config (a key "sys/description" sets the description).

        Checked now, sent by the background thread in order with the points; a failure goes
        to on_error.
        """
        request = runs_pb2.UpdateRunConfigRequest(
            project=self._project, run_id=self._run_id, config=struct_from_dict(config)
        )
        self._submit(
            "UpdateRunConfig", lambda stub: stub.UpdateRunConfig(request, timeout=UNARY_TIMEOUT)
        )

    def add_tags(self, tags: str | Iterable[str]) -> None:
        """Add tags (queued like log_configs)."""
        request = runs_pb2.UpdateRunTagsRequest(
            project=self._project, run_id=self._run_id, add=check_tags(tags)
        )
        self._submit(
            "UpdateRunTags", lambda stub: stub.UpdateRunTags(request, timeout=UNARY_TIMEOUT)
        )

    def remove_tags(self, tags: str | Iterable[str]) -> None:
        """Remove tags (queued like log_configs)."""
        request = runs_pb2.UpdateRunTagsRequest(
            project=self._project, run_id=self._run_id, remove=check_tags(tags)
        )
        self._submit(
            "UpdateRunTags", lambda stub: stub.UpdateRunTags(request, timeout=UNARY_TIMEOUT)
        )

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
        """Wait for everything logged so far, then move the run to STOPPED."""
        request = runs_pb2.StopRunRequest(project=self._project, run_id=self._run_id)
        future = self._submit(
            "StopRun", lambda stub: stub.StopRun(request, timeout=UNARY_TIMEOUT), report=False
        )
        self._await(future, None, True, "stop()")

    def resume(self) -> None:
        """Move the run back to RUNNING (after stop(), or for a FINISHED/FAILED run)."""
        request = runs_pb2.ResumeRunRequest(project=self._project, run_id=self._run_id)
        future = self._submit(
            "ResumeRun", lambda stub: stub.ResumeRun(request, timeout=UNARY_TIMEOUT), report=False
        )
        self._await(future, None, True, "resume()")

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
            self._await(final, remaining(), True, "close()")
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
        request = runs_pb2.FailRunRequest(
            project=self._project, run_id=self._run_id, reason=repr(exc)[:4096]
        )
        try:
            self._shutdown(
                "FailRun", lambda stub: stub.FailRun(request, timeout=UNARY_TIMEOUT), None
            )
        except Exception as error:  # never hide the exception that is propagating
            logger.warning("stepstream: could not mark run %r as failed: %s", self._run_id, error)

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
        if stats.pending_points:
            lines.append(f"  {stats.pending_points:,} logged points were never acknowledged")
        if lines:
            logger.warning(
                "stepstream: run %r closed with problems (acknowledged %s of %s points):\n%s",
                self._run_id,
                f"{stats.acknowledged_points:,}",
                f"{stats.logged_points:,}",
                "\n".join(lines),
            )

    # ---- reads (synchronous) --------------------------------------------------------

    def _read_client(self) -> RunClient:
        return RunClient(self._address) if self._closed else self._client

    def read_series(
        self,
        name: str,
        *,
        step_min: float | None = None,
        step_max: float | None = None,
        own_points_only: bool = False,
    ) -> Series:
        """Read one series of this run (inherited points included unless own_points_only).

        Reads what the service has stored: call wait() first to read what you just logged.
        """
        check_name(name, "series name")
        lo = None if step_min is None else check_real(step_min, "step_min")
        hi = None if step_max is None else check_real(step_max, "step_max")
        client = self._read_client()
        try:
            return client.read_series(
                self._project,
                self._run_id,
                name,
                step_min=lo,
                step_max=hi,
                own_points_only=own_points_only,
            )
        finally:
            if client is not self._client:
                client.close()

    def list_series(self, *, own_points_only: bool = False) -> list[SeriesSummary]:
        """Summaries of every series visible in this run, sorted by name."""
        client = self._read_client()
        try:
            return client.list_series(self._project, self._run_id, own_points_only=own_points_only)
        finally:
            if client is not self._client:
                client.close()

    def get_run(self) -> RunInfo:
        """The run as the service knows it now: state, tags, config, lineage."""
        client = self._read_client()
        try:
            return client.get_run(self._project, self._run_id)
        finally:
            if client is not self._client:
                client.close()


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
