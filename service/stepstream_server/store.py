"""The durable store: the source of truth for runs, points, floors and writer sequences.

Every method is synchronous and runs on a store thread; the service calls them through
`asyncio.to_thread`-style executors. `commit` is the only method that writes points, and it
writes them together with the writers' sequence numbers and acknowledgements in one transaction,
which is what makes delivery exactly-once across restarts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from .model import (
    ChunkWrite,
    Incarnation,
    Origin,
    RunRecord,
    RunState,
    Segment,
    SeriesPoints,
    WriterCommit,
)


class Store(Protocol):
    """What the service needs from a durable store."""

    def close(self) -> None: ...

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
    ) -> RunRecord: ...

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
    ) -> RunRecord: ...

    def add_incarnation(
        self,
        *,
        project: str,
        run_id: str,
        incarnation_id: str,
        parent: Incarnation,
        fork_step: float,
        origin: Origin,
        config: dict[str, Any],
        now: float,
    ) -> RunRecord: ...

    def get_incarnation(self, incarnation_id: str) -> Incarnation | None: ...

    def experiment_head(self, project: str, experiment: str) -> RunRecord | None: ...

    # Ingest.
    def writer_sequence(self, project: str, run_id: str, writer_id: str) -> int: ...

    def writer_outcome(
        self, project: str, run_id: str, writer_id: str, sequence: int
    ) -> str | None: ...

    def commit(self, chunks: Sequence[ChunkWrite], writers: Sequence[WriterCommit]) -> None: ...

    # Reading.
    def segments(self, incarnation_id: str, *, own_only: bool = False) -> list[Segment]: ...

    def floors(self, segments: Sequence[Segment]) -> dict[str, tuple[float, str]]: ...

    def series_keys(self, segments: Sequence[Segment]) -> list[tuple[str, bool, int]]: ...

    def read(
        self,
        segments: Sequence[Segment],
        name: str,
        is_string: bool,
        step_min: float,
        step_max: float,
        generation: int | None = None,
    ) -> Iterator[SeriesPoints]: ...
