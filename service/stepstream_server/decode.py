"""Wire batches to domain entries: shape and name checks per series, step checks per batch.

The checks every series needs (finite, strictly increasing steps) run once over the batch's
concatenated steps; only a batch that fails them is examined series by series, to name the
first bad step of each bad series.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import numpy as np
from stepstream.rules import name_problem
from stepstream.v1 import ingest_pb2

from .limits import (
    MAX_BATCH_ENTRIES,
    MAX_BATCH_NAME_BYTES,
    MAX_BATCH_POINTS,
    MAX_BATCH_SERIES,
    MAX_BLOCK_NAMES,
    OFFLOAD_ENTRIES,
)
from .model import BatchFailure, Floats, Rejection, SeriesEntry

__all__ = ["MAX_BATCH_POINTS", "Decoded", "Decoder", "step_problem", "too_many_entries"]

# Names already seen valid; bounded so that a writer inventing names cannot grow it forever.
_KNOWN_NAMES_LIMIT = 100_000
# Repeated doubles of at most this many items are converted item by item (`_floats`).
_SHORT_FIELD = 48

Wire = ingest_pb2.FloatSeries | ingest_pb2.StringSeries
# A decoded batch: the entries to judge, the series rejected on sight, or a whole-batch failure.
Decoded = tuple[list[SeriesEntry], list[Rejection], BatchFailure | None]


class Decoder:
    """Decodes PointBatch messages; remembers valid names to skip re-checking them."""

    def __init__(self) -> None:
        self._known: set[str] = set()

    async def decode(self, batch: ingest_pb2.PointBatch, now: float) -> Decoded:
        """The batch's entries and rejections, or the first bound it exceeds. A batch of many
        series is checked and decoded on a thread: it costs microseconds per series, and the
        event loop must not hold for a whole batch of 100,000 (docs/faults.md section 5)."""
        if _series_at_least(batch, OFFLOAD_ENTRIES + 1):
            return await asyncio.to_thread(self._decode, batch, now)
        return self._decode(batch, now)

    def _decode(self, batch: ingest_pb2.PointBatch, now: float) -> Decoded:
        total = _points(batch)
        failure = bound_failure(batch, total)
        if failure is not None:
            return [], [], failure
        clock = np.full(total, now, dtype=np.float64)  # shared by entries without timestamps
        entries: list[SeriesEntry] = []
        rejections: list[Rejection] = []
        for fs in batch.float_series:
            self._shape(fs, False, clock, entries, rejections)
        for ss in batch.string_series:
            self._shape(ss, True, clock, entries, rejections)
        entries = self._check_steps(entries, rejections)
        for block in batch.float_blocks:  # applied after float_series (see the proto)
            self._block(block, clock, entries, rejections)
        return entries, rejections, None

    def _block(
        self,
        block: ingest_pb2.FloatBlock,
        clock: Floats,
        entries: list[SeriesEntry],
        rejections: list[Rejection],
    ) -> None:
        """One entry per series of the block, sharing the block's steps and timestamps; the
        values are the columns of the row-major matrix."""
        names = list(block.names)
        rows, width, n_values = len(block.steps), len(names), len(block.values)

        def reject_all(reason: str, message: str) -> None:
            for name in names or [""]:
                rejections.append(Rejection(name, reason, message, rows))

        if n_values != rows * width:
            return reject_all(
                "LENGTH_MISMATCH",
                f"block has {n_values} values for {rows} steps x {width} series",
            )
        if n_values == 0:
            return None
        timestamps = _timestamps(block.timestamps, rows, clock, "block has {n} steps")
        if isinstance(timestamps, tuple):
            return reject_all(*timestamps)
        steps = _floats(block.steps)
        problem = step_problem(steps)
        if problem is not None:
            return reject_all(*problem)
        # One contiguous column per series: later concatenations and packing copy whole rows.
        columns = _floats(block.values).reshape(rows, width).T.copy()
        if len(self._known.intersection(names)) == width:  # all known, so distinct: the usual
            entries.extend(SeriesEntry.block(names, steps, columns, timestamps))
            return None
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                rejections.append(
                    Rejection(
                        name,
                        "DUPLICATE_SERIES_IN_BLOCK",
                        f"series {name[:64]!r} appears more than once in one block",
                        rows,
                    )
                )
                continue
            seen.add(name)
            if name not in self._known:
                why = name_problem(name)
                if why is not None:
                    rejections.append(
                        Rejection(
                            name, "INVALID_SERIES_NAME", f"series name {name[:64]!r} {why}", rows
                        )
                    )
                    continue
                if len(self._known) < _KNOWN_NAMES_LIMIT:
                    self._known.add(name)
            entries.append(SeriesEntry(name, False, steps, columns[i], timestamps, False))
        return None

    def _shape(
        self,
        wire: Wire,
        is_string: bool,
        clock: Floats,
        entries: list[SeriesEntry],
        rejections: list[Rejection],
    ) -> None:
        name, wire_values, wire_steps = wire.name, wire.values, wire.steps
        n = len(wire_values)
        n_steps = len(wire_steps)

        def reject(reason: str, message: str) -> None:
            rejections.append(Rejection(name, reason, message, n, is_string=is_string))

        if n == 0:
            if n_steps:
                reject("LENGTH_MISMATCH", f"series has {n_steps} steps but no values")
            return
        if name not in self._known:
            problem = name_problem(name)
            if problem is not None:
                return reject("INVALID_SERIES_NAME", f"series name {name[:64]!r} {problem}")
            if len(self._known) < _KNOWN_NAMES_LIMIT:
                self._known.add(name)
        timestamps = _timestamps(wire.timestamps, n, clock, "series has {n} values")
        if isinstance(timestamps, tuple):
            return reject(*timestamps)
        values: Floats | list[str]
        if isinstance(wire, ingest_pb2.StringSeries):
            values = list(wire.values)
        else:
            values = _floats(wire.values)
        if wire.assign_steps:
            if n_steps:
                return reject(
                    "STEPS_WITH_ASSIGN_STEPS",
                    f"series has assign_steps set and {n_steps} explicit steps; send one or the other",
                )
            entries.append(
                SeriesEntry(name, is_string, None, values, timestamps, True, wire.overwrite)
            )
            return None
        if n_steps != n:
            return reject("LENGTH_MISMATCH", f"series has {n} values but {n_steps} steps")
        steps = _floats(wire_steps)
        entries.append(
            SeriesEntry(name, is_string, steps, values, timestamps, False, wire.overwrite)
        )
        return None

    @staticmethod
    def _check_steps(entries: list[SeriesEntry], rejections: list[Rejection]) -> list[SeriesEntry]:
        explicit = [e.steps for e in entries if e.steps is not None]
        if not explicit:
            return entries
        cat = np.concatenate(explicit) if len(explicit) > 1 else explicit[0]
        ok = bool(np.isfinite(cat).all())
        if ok and len(cat) > 1:
            falls = cat[1:] <= cat[:-1]
            starts = np.cumsum([len(s) for s in explicit])[:-1]  # boundaries may fall
            falls[starts - 1] = False
            ok = not falls.any()
        if ok:
            return entries
        good = []
        for e in entries:
            problem = None if e.steps is None else step_problem(e.steps)
            if problem is None:
                good.append(e)
            else:
                reason, message = problem
                rejections.append(
                    Rejection(e.name, reason, message, e.count, is_string=e.is_string)
                )
        return good


def _points(batch: ingest_pb2.PointBatch) -> int:
    return (
        sum(len(s.values) for s in batch.float_series)
        + sum(len(s.values) for s in batch.string_series)
        + sum(len(b.values) for b in batch.float_blocks)
    )


def _series_at_least(batch: ingest_pb2.PointBatch, n: int) -> bool:
    """Whether the batch has n series or more, counting at most n blocks' names."""
    entries = len(batch.float_series) + len(batch.string_series) + len(batch.float_blocks)
    if entries >= n:
        return True
    return entries + sum(len(b.names) for b in batch.float_blocks) >= n


def _too_big(reason: str, message: str, **metadata: int) -> BatchFailure:
    return BatchFailure(
        grpc.StatusCode.INVALID_ARGUMENT.name,
        reason,
        message,
        {k: str(v) for k, v in metadata.items()},
    )


def bound_failure(batch: ingest_pb2.PointBatch, total: int) -> BatchFailure | None:
    """The first bound of limits.py the batch of `total` points exceeds, as its whole-batch
    failure (it uses up its sequence number, like every whole-batch INVALID_ARGUMENT), or None."""
    if total > MAX_BATCH_POINTS:
        return _too_big(
            "BATCH_TOO_LARGE",
            f"batch has {total} points; the limit is {MAX_BATCH_POINTS}",
            points=total,
            limit=MAX_BATCH_POINTS,
        )
    entries = len(batch.float_series) + len(batch.string_series) + len(batch.float_blocks)
    if entries > MAX_BATCH_ENTRIES:
        return too_many_entries(entries)
    names = 0
    for i, block in enumerate(batch.float_blocks):
        if len(block.names) > MAX_BLOCK_NAMES:
            return _too_big(
                "BLOCK_TOO_MANY_NAMES",
                f"float block {i} has {len(block.names)} names; the limit is {MAX_BLOCK_NAMES}",
                block=i,
                names=len(block.names),
                limit=MAX_BLOCK_NAMES,
            )
        names += len(block.names)
    series = names + len(batch.float_series) + len(batch.string_series)
    if series > MAX_BATCH_SERIES:
        return _too_big(
            "BATCH_TOO_MANY_SERIES",
            f"batch has {series} series; the limit is {MAX_BATCH_SERIES}",
            series=series,
            limit=MAX_BATCH_SERIES,
        )
    size = _name_bytes(batch)
    if size > MAX_BATCH_NAME_BYTES:
        return _too_big(
            "BATCH_NAMES_TOO_LARGE",
            f"series names of the batch take {size} bytes; the limit is {MAX_BATCH_NAME_BYTES}",
            bytes=size,
            limit=MAX_BATCH_NAME_BYTES,
        )
    return None


def too_many_entries(entries: int | None) -> BatchFailure:
    """`entries` None: the raw scan stopped counting at the limit."""
    if entries is None:
        return _too_big(
            "BATCH_TOO_MANY_ENTRIES",
            f"batch has more than {MAX_BATCH_ENTRIES} series entries; the limit is"
            f" {MAX_BATCH_ENTRIES}",
            limit=MAX_BATCH_ENTRIES,
        )
    return _too_big(
        "BATCH_TOO_MANY_ENTRIES",
        f"batch has {entries} series entries; the limit is {MAX_BATCH_ENTRIES}",
        entries=entries,
        limit=MAX_BATCH_ENTRIES,
    )


def _name_bytes(batch: ingest_pb2.PointBatch) -> int:
    """UTF-8 bytes of the batch's names; counted in characters first (a UTF-8 character takes
    at most 4 bytes), which settles almost every batch without encoding a name."""
    groups: list[Sequence[str]] = [[s.name for s in batch.float_series]]
    groups += [[s.name for s in batch.string_series]]
    groups += [b.names for b in batch.float_blocks]
    chars = sum(len(n) for g in groups for n in g)
    if chars * 4 <= MAX_BATCH_NAME_BYTES:
        return chars
    return sum(len(n.encode("utf-8", "surrogatepass")) for g in groups for n in g)


def _floats(wire: Sequence[float]) -> Floats:
    """A repeated double field as a float64 array. numpy's conversion of the field costs about
    5 µs whatever its length, counting its items in about 75 ns each: the items are counted in
    for short fields, which halves the decoding of a batch of 100,000 one-point series."""
    n = len(wire)
    if n <= _SHORT_FIELD:
        return np.fromiter(wire, dtype=np.float64, count=n)
    return np.array(wire, dtype=np.float64)


def _timestamps(
    wire: Sequence[float], n: int, clock: Floats, what: str
) -> Floats | tuple[str, str]:
    """n timestamps (the receive time when none were sent), or (reason, message)."""
    if not wire:
        return clock[:n]
    if len(wire) != n:
        return "LENGTH_MISMATCH", f"{what.format(n=n)} but {len(wire)} timestamps"
    timestamps = _floats(wire)
    if not np.isfinite(timestamps).all():
        return "INVALID_TIMESTAMP", "timestamps must be finite"
    return timestamps


def step_problem(steps: Floats) -> tuple[str, str] | None:
    """The first reason a series' steps are unusable, or None."""
    finite = np.isfinite(steps)
    if not finite.all():
        bad = int(np.argmin(finite))
        return (
            "NON_FINITE_STEP",
            f"step {float(steps[bad])!r} at index {bad} is not a finite number",
        )
    rising = steps[1:] > steps[:-1]
    if not rising.all():
        bad = int(np.argmin(rising)) + 1
        return (
            "STEPS_NOT_STRICTLY_INCREASING",
            f"step {float(steps[bad])!r} at index {bad} does not follow"
            f" {float(steps[bad - 1])!r}; steps in a batch must strictly increase",
        )
    return None
