"""The plain values the client returns and reports: no protobuf types past this point."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class IngestError:
    """Something the service did not accept, delivered to `Run(on_error=...)`.

    One is reported per rejected series of a batch (a `SeriesRejection`: `series` names it) and
    one per batch that failed as a whole (`series` is "", `reason` comes from the error's
    `ErrorInfo`, `count` is the number of points in the batch). A failed config or tag update,
    and the sender giving up for good, are reported the same way with `count` 0.

    Attributes:
        series: the series name, or "" for a whole-batch or run-level error.
        reason: UPPER_SNAKE reason, e.g. STEP_NOT_INCREASING, RUN_NOT_ACTIVE.
        message: human-readable explanation.
        count: number of points that were not stored.
        first_step: lowest rejected step (NaN when unknown or server-assigned).
        last_step: highest rejected step (NaN when unknown or server-assigned).
        floor: the series' floor when judged (-inf for a new series, NaN when not consulted).
        sequence: the batch sequence number (0 when not about a batch).
        string_series: True when `series` is a string series.
    """

    series: str
    reason: str
    message: str
    count: int = 0
    first_step: float = math.nan
    last_step: float = math.nan
    floor: float = math.nan
    sequence: int = 0
    string_series: bool = False

    def __str__(self) -> str:
        where = f"series {self.series!r}" if self.series else "run"
        return f"{self.reason} ({where}, {self.count} points): {self.message}"


@dataclass(frozen=True)
class Series:
    """Points of one series, in step order.

    `values` holds floats for a metric series (NaN and infinities included) and strs for a
    string series. `timestamps` are seconds since the Unix epoch.
    """

    name: str
    steps: list[float] = field(default_factory=list)
    values: list[float] | list[str] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class SeriesSummary:
    """Summary of one series as seen in a view (a run's current view, an incarnation, or an
    experiment's lineage).

    Attributes:
        name: the series name.
        string_series: True for a string series.
        count: number of visible points.
        last_step: largest visible step (the floor new points must exceed).
        last: value at `last_step` (NaN for a string series).
        min: smallest value, ignoring NaN (NaN when there is none).
        max: largest value, ignoring NaN (NaN when there is none).
        last_string: the string at `last_step`, for a string series ("" otherwise).
        generation: how often the series was overwritten (`log_metric(..., overwrite=True)`)
            in the viewed incarnation; 0 if never. Older generations stay readable with
            `read_series(..., generation=N)`.
    """

    name: str
    string_series: bool
    count: int
    last_step: float
    last: float
    min: float
    max: float
    last_string: str = ""
    generation: int = 0


@dataclass(frozen=True)
class Incarnation:
    """One immutable stretch of a run's history ("immutable run ID").

    A fork's first incarnation has the parent run's incarnation as parent; a rewind's new
    incarnation has the run's previous incarnation as parent. `fork_step` is where that
    parent's history was cut: the parent's points with step <= fork_step are visible here.

    Attributes:
        incarnation_id: the immutable ID.
        run_id: the run it belongs to.
        origin: "CREATED", "FORKED" or "REWOUND"; "UNKNOWN" only in `Run.lineage()`, for a
            parent that could not be read (e.g. a fork across projects).
        parent_incarnation_id: the parent incarnation, or None.
        parent_run_id: the parent's run ID, or None.
        fork_step: where the parent's history was cut, or None without a parent.
        archived: True when a rewind replaced it (read-only).
        create_time: when it was created (UTC), if known.
    """

    incarnation_id: str
    run_id: str
    origin: str
    parent_incarnation_id: str | None = None
    parent_run_id: str | None = None
    fork_step: float | None = None
    archived: bool = False
    create_time: datetime.datetime | None = None


@dataclass(frozen=True)
class RunInfo:
    """A run as the service knows it (`Run.get_run()`, `RunHandle.info`).

    Attributes:
        run_id: the user-visible run ID.
        project: its project.
        experiment: its experiment, or None.
        state: "RUNNING", "STOPPED", "FINISHED" or "FAILED".
        tags: sorted tags.
        description: the description ("" when unset).
        config: the config, as plain Python values with their types (ints, floats with NaN
            and infinities, bools, None, str, lists, dicts).
        incarnation_id: the current incarnation (the one receiving writes).
        incarnations: every incarnation, oldest first; the last is current.
        failure_reason: why the run failed, for FAILED runs, else None.
        create_time: when the run was created (UTC), if known.
        update_time: when it last changed (UTC), if known.
        values: single-value metrics (`log_metric(..., single_value=True)`), with their types.
        experiment_head: True when the run is the most recently created run of its
            experiment (the one an experiment read follows).
        url: link to the run in the service's web view; None when the service serves none.
        experiment_url: link to the run's experiment in the web view; None without a web
            view or an experiment.
    """

    run_id: str
    project: str
    experiment: str | None
    state: str
    tags: list[str]
    description: str
    config: dict[str, Any]
    incarnation_id: str
    incarnations: list[Incarnation]
    failure_reason: str | None = None
    create_time: datetime.datetime | None = None
    update_time: datetime.datetime | None = None
    values: dict[str, Any] = field(default_factory=dict)
    experiment_head: bool = False
    url: str | None = None
    experiment_url: str | None = None


@dataclass(frozen=True)
class SenderStats:
    """Counters of a Run's background sender (`Run.stats`), for progress and diagnostics.

    Attributes:
        logged_points: points handed to log calls so far.
        acknowledged_points: points the service accepted or acknowledged as duplicates.
        rejected_points: points answered with a rejection or a batch error.
        pending_points: logged points without an answer yet (queued or in flight).
        batches_sent: batches sent for the first time.
        batches_resent: batch transmissions repeated after a reconnect.
        duplicate_batches: answers flagged duplicate_batch (a resent batch already committed).
        inflight_batches: batches sent and not yet answered.
        connections: streams opened successfully (1 + number of reconnects).
        connected: whether a stream is open right now.
        spooled_points: points durable in the local spool, not yet acknowledged.
        offline: whether the run is offline (logging only to the spool).
    """

    logged_points: int
    acknowledged_points: int
    rejected_points: int
    pending_points: int
    batches_sent: int
    batches_resent: int
    duplicate_batches: int
    inflight_batches: int
    connections: int
    connected: bool
    spooled_points: int = 0
    offline: bool = False
