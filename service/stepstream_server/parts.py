"""A big batch committed in parts across several groups (docs/faults.md, section 5).

A `Split` follows one batch from its first part to its last: where the next part starts, what
the parts that landed acknowledged so far, and the batch's future, resolved when the last part
lands. Positions are `(entry, point)`: the first point of a part; the batch ends at
`(len(entries), 0)`. This module cuts entries and merges acknowledgements; the worker
(`ingest.py`) queues the parts and the store checks their progress (`store/parts_rule.py`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from .model import (
    AppendAck,
    Assigned,
    BatchFailure,
    Outcome,
    Rejection,
    SeriesEntry,
    WriterCommit,
)
from .pending import Pending
from .store.parts_rule import PartCommit, Position, partial_json


@dataclass(frozen=True)
class Resume:
    """A batch whose first parts are durable (read from the store when a stream opens)."""

    sequence: int
    progress: Position
    so_far: AppendAck


class Split:
    """One batch being committed in parts."""

    def __init__(
        self,
        entries: list[SeriesEntry],
        rejections: list[Rejection],
        future: asyncio.Future[Outcome],
        resume: Resume | None = None,
    ) -> None:
        self.entries = entries
        self.rejections = rejections  # the batch's own (validation) rejections: first part
        self.future = future
        self.end: Position = (len(entries), 0)
        self.cursor: Position = (0, 0) if resume is None else _clamp(resume.progress, self.end)
        self.so_far: AppendAck | None = None if resume is None else resume.so_far

    @property
    def remaining(self) -> int:
        return points_from(self.entries, self.cursor)

    @property
    def taken_all(self) -> bool:
        return self.cursor >= self.end

    def cut(
        self, max_points: int, max_entries: int
    ) -> tuple[list[SeriesEntry], Position, Position, int]:
        """The next part from the cursor: at most `max_points` points in at most
        `max_entries` entries (a series costs the store far more than a point)."""
        start = self.cursor
        e, p = start
        out: list[SeriesEntry] = []
        taken = 0
        while e < len(self.entries) and taken < max_points and len(out) < max_entries:
            entry = self.entries[e]
            room = min(entry.count - p, max_points - taken)
            if p == 0 and room == entry.count:
                out.append(entry)
            else:
                out.append(_slice(entry, p, p + room))
            taken += room
            p += room
            if p >= entry.count:
                e, p = e + 1, 0
        self.cursor = (e, p)
        return out, start, self.cursor, taken

    def merge(self, start: Position, end: Position, outcome: Outcome) -> tuple[Outcome, bool]:
        """The batch's acknowledgement with the part [start, end) judged `outcome`, and
        whether the batch is finished with it."""
        if isinstance(outcome, BatchFailure):
            if self.so_far is None:
                return outcome, True
            # Parts landed already: they stay acknowledged, the rest is reported rejected.
            rest = [
                Rejection(e.name, outcome.reason, outcome.message, e.count, is_string=e.is_string)
                for e in self.cut_from(start)
            ]
            return replace(self.so_far, rejections=(*self.so_far.rejections, *rest)), True
        merged = outcome if self.so_far is None else merge_acks(self.so_far, outcome)
        return merged, end >= self.end

    def cut_from(self, start: Position) -> list[SeriesEntry]:
        e, p = start
        out = []
        for k in range(e, len(self.entries)):
            entry = self.entries[k]
            lo = p if k == e else 0
            if lo < entry.count:
                out.append(entry if lo == 0 else _slice(entry, lo, entry.count))
        return out


def points_from(entries: list[SeriesEntry], position: Position) -> int:
    e, p = position
    return sum(x.count for x in entries[e:]) - (p if e < len(entries) else 0)


def _clamp(position: Position, end: Position) -> Position:
    return min((int(position[0]), int(position[1])), end)


def _slice(entry: SeriesEntry, lo: int, hi: int) -> SeriesEntry:
    return SeriesEntry(
        entry.name,
        entry.is_string,
        None if entry.steps is None else entry.steps[lo:hi],
        entry.values[lo:hi],
        entry.timestamps[lo:hi],
        entry.assign,
        entry.overwrite and lo == 0,  # a later slice continues the new generation
    )


def merge_acks(a: AppendAck, b: AppendAck) -> AppendAck:
    """Two consecutive parts' acknowledgements as one: a series cut between them reports one
    rejected run and one assigned range when they join up."""
    rejections = list(a.rejections)
    for r in b.rejections:
        last = rejections[-1] if rejections else None
        if (
            last is not None
            and last.series == r.series
            and last.is_string == r.is_string
            and last.reason == r.reason == "STEP_NOT_INCREASING"
        ):
            rejections[-1] = replace(
                last,
                count=last.count + r.count,
                last_step=r.last_step,
                message=f"{last.count + r.count} point(s) at steps {last.first_step!r}.."
                f"{r.last_step!r} are not above the series' floor {last.floor!r}",
            )
        else:
            rejections.append(r)
    assigned = list(a.assigned)
    for s in b.assigned:
        last_a = assigned[-1] if assigned else None
        if (
            last_a is not None
            and last_a.series == s.series
            and last_a.is_string == s.is_string
            and last_a.first_step + last_a.count == s.first_step
        ):
            assigned[-1] = Assigned(
                s.series, last_a.first_step, last_a.count + s.count, s.is_string
            )
        else:
            assigned.append(s)
    return AppendAck(
        a.accepted + b.accepted,
        a.duplicates + b.duplicates,
        tuple(rejections),
        tuple(assigned),
        b.incarnation_id or a.incarnation_id,
    )


def cut(item: Pending, max_points: int, max_entries: int) -> Pending:
    """The next part of a batch in parts; its points move from the batch to the part."""
    assert item.split is not None
    entries, start, end, n = item.split.cut(max_points, max_entries)
    item.points -= n
    rejections = item.split.rejections if start == (0, 0) else []
    return Pending(
        item.writer,
        item.sequence,
        entries,
        rejections,
        None,
        n,
        item.future,
        split=item.split,
        start=start,
        end=end,
    )


def writer_commit(item: Pending, outcome: Outcome) -> WriterCommit:
    """What the store records for the batch (or the part of a batch) with the group."""
    w = item.writer
    if item.split is None:
        return WriterCommit(w.project, w.run_id, w.writer_id, item.sequence, outcome.to_json())
    merged, final = item.split.merge(item.start, item.end, outcome)
    text = merged.to_json() if final else partial_json(item.end, merged)
    key = (w.project, w.run_id, w.writer_id, item.sequence, text)
    return PartCommit(*key, start=item.start, partial=not final)
