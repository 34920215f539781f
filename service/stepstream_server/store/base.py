"""The durable store: the source of truth for runs, points, floors, fences and writer sequences.

Every method is synchronous and runs on a store thread; the service reaches them only through
`AsyncStore` (seam.py). `commit` is the only method that writes points, and it writes them
together with the writers' sequence numbers and acknowledgements in one transaction, which is
what makes delivery exactly-once across restarts and replicas. The fence (docs/replicas.md) is
checked in that same transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from ..errors import ServiceError
from ..model import (
    ChunkWrite,
    Incarnation,
    Origin,
    RunRecord,
    RunState,
    Segment,
    SeriesPoints,
    WriterCommit,
)
from .codec import SummaryPiece


@dataclass(frozen=True)
class RunCommit:
    """What one group commits for one run, judged under `epoch` (docs/replicas.md). A commit
    holds at most one part per run."""

    project: str
    run_id: str
    epoch: int
    chunks: Sequence[ChunkWrite]
    writers: Sequence[WriterCommit]


# A refused part: the run's fence is above the part's epoch, or one of its writers already
# has a sequence at or above one in the part. Maps (project, run_id) to the run's fence.
Refused = dict[tuple[str, str], int]


class StoreUnavailable(ServiceError):
    """The store cannot take this call now (disk full, I/O or lock error, the database
    restarting or failing over, a connection killed) but may later: nothing of the call was
    kept, or, when its COMMIT was cut off, it may have been (exactly-once rests on the writer
    sequences, not on knowing which). Each engine turns its driver's transient errors into
    this one exception at its edge; the ingest worker retries (docs/faults.md), and a client
    call gets UNAVAILABLE `STORE_UNAVAILABLE`."""

    def __init__(self, cause: BaseException) -> None:
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            "STORE_UNAVAILABLE",
            f"the store cannot take this now ({detail}); retry later",
            {"detail": detail},
        )
        self.detail = detail


class Store(Protocol):
    """What the service needs from a durable store."""

    def close(self) -> None: ...

    def interrupt(self) -> None:
        """Abort the statements under way on other threads (shutdown: a long read must not
        keep the process alive past its grace period). Thread-safe."""
        ...

    # Runs and incarnations.
    def create_run(
        self,
        *,
        project: str,
        run_id: str,
        experiment: str,
        tags: Sequence[str],
        description: str,
        config: dict[str, Any],
        values: dict[str, Any],
        incarnation_id: str,
        parent: Incarnation | None,
        fork_step: float | None,
        now: float,
    ) -> RunRecord:
        """Create a run and its first incarnation. A fork's snapshot (the highest chunk ID)
        is read while the parent run's row is held, so no commit to it straddles the snapshot."""
        ...

    def get_run(self, project: str, run_id: str) -> RunRecord | None: ...

    def list_runs(self, project: str, experiment: str) -> list[RunRecord]: ...

    def list_projects(self) -> list[str]: ...

    def update_run(
        self,
        project: str,
        run_id: str,
        *,
        now: float,
        state: RunState | None = None,
        tags: Sequence[str] | None = None,
        config: dict[str, Any] | None = None,
        description: str | None = None,
        failure_reason: str | None = None,
        values: dict[str, Any] | None = None,
    ) -> RunRecord:
        """Change a run; a state change also raises its fence (ingest must see it)."""
        ...

    def add_incarnation(
        self,
        *,
        project: str,
        run_id: str,
        incarnation_id: str,
        fork_step: float,
        origin: Origin,
        config: dict[str, Any],
        now: float,
    ) -> RunRecord:
        """Rewind: give a run a new current incarnation whose parent is its current one at
        `fork_step` (read inside the transaction, so concurrent rewinds chain), archive the old
        one, merge `config` into the run's, make it RUNNING and raise its fence."""
        ...

    def get_incarnation(self, incarnation_id: str) -> Incarnation | None: ...

    def experiment_head(self, project: str, experiment: str) -> RunRecord | None: ...

    # Ingest.
    def writer_sequence(self, project: str, run_id: str, writer_id: str) -> int: ...

    def writer_outcome(
        self, project: str, run_id: str, writer_id: str, sequence: int
    ) -> str | None: ...

    def commit(self, parts: Sequence[RunCommit]) -> Refused:
        """Write every part that is not refused, in one transaction; return the refused ones."""
        ...

    def raise_fence(self, project: str, run_id: str, at_least: int) -> int:
        """Raise the run's fence to at least `at_least` (waiting for commits holding the run)
        and return it. `RUN_NOT_FOUND` if there is no such run."""
        ...

    def advance_fence(self, project: str, run_id: str) -> int:
        """Raise the run's fence by one and return it (a new epoch above every one used)."""
        ...

    # Reading.
    def segments(self, incarnation_id: str, *, own_only: bool = False) -> list[Segment]: ...

    def floors(
        self, segments: Sequence[Segment], keys: Sequence[tuple[str, bool]] | None = None
    ) -> dict[str, tuple[float, str]]:
        """Floors ("f:<name>" / "s:<name>" -> (step, value token)) of the view's series with a
        visible point: every one, or only those of `keys` ((name, is_string) pairs)."""
        ...

    def series_names(
        self, segments: Sequence[Segment], after: tuple[str, bool] | None, limit: int
    ) -> list[tuple[str, bool]]:
        """Up to `limit` (name, is_string) with a series row in the view's incarnations, sorted,
        all above `after`; a superset of the visible ones in that range (visibility aside)."""
        ...

    def series_keys(
        self, segments: Sequence[Segment], keys: Sequence[tuple[str, bool]] | None = None
    ) -> list[tuple[str, bool, int]]: ...

    def read(
        self,
        segments: Sequence[Segment],
        name: str,
        is_string: bool,
        step_min: float,
        step_max: float,
        generation: int | None = None,
    ) -> Iterator[SeriesPoints]: ...

    def count(
        self,
        segments: Sequence[Segment],
        name: str,
        is_string: bool,
        step_min: float,
        step_max: float,
    ) -> int:
        """The points of the view's chunks of a series that overlap [step_min, step_max]: at
        least the points in that range, read from chunk rows alone."""
        ...

    def read_sampled(
        self, segments: Sequence[Segment], name: str, step_min: float, step_max: float
    ) -> Iterator[SeriesPoints]:
        """A float series' points in the view for a downsampled read: a chunk lying wholly in
        the range gives the points its stats keep (codec.chunk_stats), any other its points."""
        ...

    def read_summary_pieces(
        self, segments: Sequence[Segment], keys: Sequence[tuple[str, bool]]
    ) -> dict[tuple[str, bool], tuple[int, list[SummaryPiece]]]:
        """For each series of `keys` (name, is_string) with a visible point: its generation in
        the viewed incarnation (as `series_keys` gives it) and the summary pieces of its
        visible chunks in view order (codec.summary_piece: from the chunk's stats where
        they suffice), for several series in a few queries (the summaries of a page)."""
        ...
