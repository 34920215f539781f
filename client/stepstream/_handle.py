"""`stepstream.get_run()`: a read-only handle on a run, and the read half `Run` builds on.

A `RunHandle` reads the run as the service has it (state, config, tags, values, history,
lineage, series, logs) and exports it, but never writes: no call on it changes the run's
state, config or points. Writing means opening the run with `stepstream.Run(run_id,
resume=True)`, which resumes it. `Run` is a `RunHandle` that also logs; it replaces three
hooks: `_reader()` (its own channel), `_flush()` (reads wait for what it logged) and `_adopt()`
(its local, editable copies of config, tags and description).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypeVar

from stepstream.v1 import runs_pb2

from ._client import RunClient, check_read_range, make_selector, read_lineage
from ._exceptions import InvalidArgumentError
from ._export import write_export
from ._security import Connection, Unpack
from ._targets import Address, Target, resolve_target
from ._types import Incarnation, RunInfo, Series, SeriesSummary
from ._validate import check_id, check_name

_H = TypeVar("_H", bound="RunHandle")


class RunHandle:
    """A run, read-only: what `stepstream.get_run()` returns.

    Creating one reads the run (RPCError RUN_NOT_FOUND when there is none). The attributes
    (`state`, `failure_reason`, `config`, `tags`, `values`, `incarnations`, ... the fields of
    `RunInfo`) are as of that read or the last `refresh()`; the methods read the service
    anew. Nothing here changes the run: exporting a FAILED run leaves it FAILED with its
    reason. To log into the run, open it with `stepstream.Run(run_id, resume=True)`.

    The handle keeps one channel to the service; `close()` (or a `with` block) closes it (a
    later read opens a new one).
    """

    _target: Target
    _project: str
    _run_id: str
    _experiment_name: str | None
    _info: RunInfo

    def __init__(
        self,
        run_id: str,
        *,
        project: str | None = None,
        address: Address | None = None,
        **connection: Unpack[Connection],
    ) -> None:
        check_id(run_id, "run_id")
        if project is not None and not isinstance(project, str):
            raise InvalidArgumentError(f"project must be a str, got {type(project).__name__}")
        self._target = resolve_target(address, **connection)
        self._handle_client: RunClient | None = None
        with self._reader() as client:
            info = client.get_run(project or "", run_id)
        self._run_id = info.run_id
        self._project = info.project
        self._experiment_name = info.experiment
        self._adopt(info)

    # ---- hooks Run replaces --------------------------------------------------------------

    @contextlib.contextmanager
    def _reader(self) -> Iterator[RunClient]:
        """The channel reads go through."""
        if self._handle_client is None:
            self._handle_client = RunClient(self._target)
        yield self._handle_client

    def _flush(self) -> None:
        """Before a read: nothing to wait for (a Run waits for what it logged)."""

    def _adopt(self, info: RunInfo) -> None:
        """Take `info` as the service's current view of the run."""
        self._info = info

    def close(self) -> None:
        """Close the handle's channel (the run is not touched; reads reopen one)."""
        client, self._handle_client = self._handle_client, None
        if client is not None:
            client.close()

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<RunHandle project={self._project!r} run_id={self._run_id!r} "
            f"state={self._info.state}>"
        )

    # ---- what the run is (as of the last read) ----------------------------------------------

    @property
    def run_id(self) -> str:
        """The run's ID."""
        return self._run_id

    @property
    def project(self) -> str:
        return self._project

    @property
    def experiment_name(self) -> str | None:
        return self._experiment_name

    @property
    def experiment(self) -> str | None:
        """The run's experiment, or None (as `RunInfo.experiment`)."""
        return self._experiment_name

    @property
    def info(self) -> RunInfo:
        """Everything the last read returned, as a RunInfo."""
        return self._info

    @property
    def state(self) -> str:
        """ "RUNNING", "STOPPED", "FINISHED" or "FAILED", as of the last read."""
        return self._info.state

    @property
    def failure_reason(self) -> str | None:
        """Why the run failed, for a FAILED run (as of the last read), else None."""
        return self._info.failure_reason

    @property
    def config(self) -> dict[str, Any]:
        """The run's config with its types (a copy: editing it changes nothing)."""
        return copy.deepcopy(self._info.config)

    @property
    def tags(self) -> list[str]:
        return list(self._info.tags)

    @property
    def description(self) -> str:
        return self._info.description

    @property
    def values(self) -> dict[str, Any]:
        """Single-value metrics (`log_metric(..., single_value=True)`)."""
        return dict(self._info.values)

    @property
    def incarnation_id(self) -> str:
        """The run's current incarnation."""
        return self._info.incarnation_id

    @property
    def incarnations(self) -> list[Incarnation]:
        """The run's incarnations as of the last read, oldest first (`history()` reads anew)."""
        return list(self._info.incarnations)

    @property
    def create_time(self) -> datetime.datetime | None:
        return self._info.create_time

    @property
    def update_time(self) -> datetime.datetime | None:
        return self._info.update_time

    @property
    def experiment_head(self) -> bool:
        return self._info.experiment_head

    @property
    def url(self) -> str | None:
        """Link to the run in the web view (None without one), as of the last read."""
        return self._info.url

    @property
    def experiment_url(self) -> str | None:
        return self._info.experiment_url

    def get_run_url(self) -> str | None:
        """Link to this run in the service's web view, or None when the service serves none."""
        return self.get_run().url

    def get_experiment_url(self) -> str | None:
        """Link to this run's experiment in the web view; None without a web view or an
        experiment."""
        return self.get_run().experiment_url

    # ---- reads ------------------------------------------------------------------------------

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

        Reads what the service has stored: on a Run, call wait() first to read what you just
        logged.
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
        any other series. Reads what the service has stored.
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
        """The run as the service knows it now: state, tags, config, values, incarnations
        (the handle's attributes are not updated: see `refresh()`)."""
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

    def refresh(self: _H) -> _H:
        """Re-read the run from the service into this object: state, tags, description,
        config, values, incarnations. On a Run, waits for everything logged so far first
        (like wait()), so it reads the Run's own queued updates, and unsaved local edits of
        `config`, `tags` and `description` are replaced. Returns the object."""
        self._flush()
        with self._reader() as client:
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
        Exporting never changes the run (a FAILED run stays FAILED, with its reason).

        The file holds the run as the service has it (on a Run: after everything logged so
        far is acknowledged; unsaved local edits are not in it, save() first): project,
        run_id, experiment, state, failure reason, description, tags, config (with its types),
        values, times, the rewind history, the lineage (incarnations with their parents and
        fork steps, oldest first), a summary of every series, and with `include_series=True`
        every series' points (steps, values, timestamps; inherited points included). `path`
        defaults to "<run_id>.yaml" in the current directory; the format comes from `format`
        ("yaml" or "json") or else from the extension (.yaml, .yml, .json, .parquet). YAML
        needs the `yaml` extra (PyYAML), Parquet the `parquet` extra (pyarrow; a Parquet file
        always holds every point); a missing one raises MissingExtraError.
        `stepstream.load_export()` reads any of them back.
        """
        self._flush()
        with self._reader() as client:
            return write_export(client, self._project, self._run_id, path, format, include_series)


def get_run(
    run_id: str,
    *,
    project: str | None = None,
    address: Address | None = None,
    **connection: Unpack[Connection],
) -> RunHandle:
    """A read-only handle on run `run_id` (see RunHandle): its state, config, tags, values and
    incarnations as of now, and methods that read its series, history and lineage and export
    it. Never changes the run; RPCError RUN_NOT_FOUND when it does not exist. Takes Run's
    `tls`, `root_certificates`, `client_certificate`, `client_key` and `token` keywords too
    (README: Security)."""
    return RunHandle(run_id, project=project, address=address, **connection)
