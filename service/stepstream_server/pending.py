"""What the ingest worker queues: a writer's sequence state, a batch (or a part of one) waiting
for its group commit, and the worker's bounds."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .model import BatchFailure, Outcome, Rejection, SeriesEntry
from .store.parts_rule import Position

if TYPE_CHECKING:
    from .parts import Resume, Split


@dataclass(eq=False)  # one object per writer at a time: compared (and hashed) by identity
class Writer:
    """Sequence state of one (run, writer): committed, expected next, and what is in flight."""

    project: str
    run_id: str
    writer_id: str
    committed: int
    next_expected: int
    inflight: dict[int, asyncio.Future[Outcome]] = field(default_factory=dict)
    queued_points: int = 0  # of its batches waiting in the queue (fair sharing)
    resume: Resume | None = None  # a batch whose first parts are durable (parts.py)
    answered_at: float = float("-inf")  # loop time of its latest acknowledgement

    @property
    def waiting(self) -> bool:
        """A batch of it is in flight: queued, being judged or committing, unanswered."""
        return any(not f.done() for f in self.inflight.values())

    @property
    def run_key(self) -> tuple[str, str]:
        return (self.project, self.run_id)


@dataclass
class Pending:
    """A batch waiting for its group commit."""

    writer: Writer
    sequence: int
    entries: list[SeriesEntry]
    rejections: list[Rejection]
    failure: BatchFailure | None
    points: int
    future: asyncio.Future[Outcome]
    attempts: int = 0  # judged this many times (a refused part is judged again)
    # A part of a batch committed in parts: its batch, and where in it the part starts and
    # ends (docs/faults.md, section 5). In the queue, a cut batch's remainder holds `split`.
    split: Split | None = None
    start: Position = (0, 0)
    end: Position = (0, 0)


@dataclass(frozen=True)
class WorkerLimits:
    """Bounds that keep memory flat and groups reasonably sized."""

    max_queued_points: int = 2_000_000
    # One writer's share of the queue: a heavy stream cannot fill it for everyone else.
    max_writer_queued_points: int = 500_000
    max_group_points: int = 500_000
    max_group_batches: int = 512
    # While several writers queue, a bigger batch is committed in parts of this many points,
    # so that no group (and no light stream's batch in it) waits for a whole big batch.
    max_part_points: int = 8_192
    # ... and of at most this many series entries: a new series costs the store (a series row,
    # a chunk) about what a few hundred points do. 128 rather than 256: beside a 100,000-series
    # batch the light stream's median round trip was 13-20 ms instead of 23-26 (its worst
    # 159-593 ms instead of 292-902), and the wide batch was not answered later (hostile bench).
    max_part_entries: int = 128
    # Cut a big batch in parts while another writer whose latest batch is small has one in
    # flight, or had one answered in the last `light_recent` seconds: a stream that sends one
    # batch at a time has none in flight between an answer and its next batch
    # (docs/faults.md section 5). Off: big batches are committed whole.
    cut_parts: bool = True
    light_recent: float = 1.0
    # Cut big batches in parts even for a lone writer (every commit then stays small; the
    # tests use it to reach the parts' failure cases with one stream).
    always_cut: bool = False
    # A batch refused this many times fails (COMMIT_FAILED) instead of being judged again.
    max_attempts: int = 16
