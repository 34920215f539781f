"""Wire batches to domain entries: shape and name checks per series, step checks per batch.

The checks every series needs (finite, strictly increasing steps) run once over the batch's
concatenated steps; only a batch that fails them is examined series by series, to name the
first bad step of each bad series.

Decoding takes turns with the event loop (`turns`): a batch of 100,000 one-point series costs
about a second of Python, and no other stream may wait behind it for more than a turn. The
work is a generator that yields where it may pause (after each series, each chunk of names);
the driver lets the loop run once `TURN_SECONDS` have passed since the last turn, so a small
batch decodes at once. It runs on the event loop, not on a thread: a thread holding the GIL made
the loop wait up to the switch interval (5 ms) after every system call, a light stream's round
trip tens of them (docs/faults.md section 5).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Sequence
from typing import TypeVar

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
    TURN_SECONDS,
)
from .model import BatchFailure, Floats, Rejection, SeriesEntry

__all__ = ["MAX_BATCH_POINTS", "Decoded", "Decoder", "step_problem", "too_many_entries", "turns"]

# Names already seen valid; bounded so that a writer inventing names cannot grow it forever.
_KNOWN_NAMES_LIMIT = 100_000
# Items counted or checked between two looks at the clock (a look costs ~50 ns).
_CHUNK = 64

Wire = ingest_pb2.FloatSeries | ingest_pb2.StringSeries
# A decoded batch: the entries to judge, the series rejected on sight, or a whole-batch failure.
Decoded = tuple[list[SeriesEntry], list[Rejection], BatchFailure | None]
T = TypeVar("T")
_M = TypeVar("_M")


async def turns(work: Generator[None, None, T]) -> T:
    """Runs `work` to its end, letting the event loop run whenever a pause point comes
    `TURN_SECONDS` or more after the last turn."""
    clock = time.perf_counter
    due = clock() + TURN_SECONDS
    while True:
        try:
            next(work)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if clock() >= due:
            await asyncio.sleep(0)
            due = clock() + TURN_SECONDS


class Decoder:
    """Decodes PointBatch messages; remembers valid names to skip re-checking them."""

    def __init__(self) -> None:
        self._known: set[str] = set()

    async def decode(self, batch: ingest_pb2.PointBatch, now: float) -> Decoded:
        """The batch's entries and rejections, or the first bound it exceeds; in turns with the
        event loop."""
        return await turns(self._decode(batch, now))

    def _decode(self, batch: ingest_pb2.PointBatch, now: float) -> Generator[None, None, Decoded]:
        total = yield from _points(batch)
        failure = yield from bound_failure(batch, total)
        if failure is not None:
            return [], [], failure
        clock = np.full(total, now, dtype=np.float64)  # shared by entries without timestamps
        entries: list[SeriesEntry] = []
        rejections: list[Rejection] = []
        for fs in batch.float_series:
            self._shape(fs, False, clock, entries, rejections)
            yield
        for ss in batch.string_series:
            self._shape(ss, True, clock, entries, rejections)
            yield
        entries = yield from self._check_steps(entries, rejections)
        for block in batch.float_blocks:  # applied after float_series (see the proto)
            yield from self._block(block, clock, entries, rejections)
        return entries, rejections, None

    def _block(
        self,
        block: ingest_pb2.FloatBlock,
        clock: Floats,
        entries: list[SeriesEntry],
        rejections: list[Rejection],
    ) -> Generator[None, None, None]:
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
        steps = np.array(block.steps, dtype=np.float64)
        problem = step_problem(steps)
        if problem is not None:
            return reject_all(*problem)
        # One contiguous column per series: later concatenations and packing copy whole rows.
        columns = np.array(block.values, dtype=np.float64).reshape(rows, width).T.copy()
        if len(self._known.intersection(names)) == width:  # all known, so distinct: the usual
            for name, column in zip(names, columns, strict=True):
                entries.append(SeriesEntry(name, False, steps, column, timestamps, False))
                yield
            return None
        seen: set[str] = set()
        for i, name in enumerate(names):
            yield
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
        name = wire.name
        n = len(wire.values)
        n_steps = len(wire.steps)

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
            values = np.array(wire.values, dtype=np.float64)
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
        steps = np.array(wire.steps, dtype=np.float64)
        entries.append(
            SeriesEntry(name, is_string, steps, values, timestamps, False, wire.overwrite)
        )
        return None

    @staticmethod
    def _check_steps(
        entries: list[SeriesEntry], rejections: list[Rejection]
    ) -> Generator[None, None, list[SeriesEntry]]:
        explicit = [e.steps for e in entries if e.steps is not None]
        if not explicit:
            return entries
        yield
        cat = np.concatenate(explicit) if len(explicit) > 1 else explicit[0]
        yield
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
            yield
            problem = None if e.steps is None else step_problem(e.steps)
            if problem is None:
                good.append(e)
            else:
                reason, message = problem
                rejections.append(
                    Rejection(e.name, reason, message, e.count, is_string=e.is_string)
                )
        return good


def _total(items: Sequence[_M], measure: Callable[[_M], int]) -> Generator[None, None, int]:
    """sum(measure(item) for item in items), pausing every _CHUNK items."""
    total = 0
    for i in range(0, len(items), _CHUNK):
        total += sum(measure(item) for item in items[i : i + _CHUNK])
        yield
    return total


def _values(
    message: ingest_pb2.FloatSeries | ingest_pb2.StringSeries | ingest_pb2.FloatBlock,
) -> int:
    return len(message.values)


def _points(batch: ingest_pb2.PointBatch) -> Generator[None, None, int]:
    floats = yield from _total(batch.float_series, _values)
    strings = yield from _total(batch.string_series, _values)
    blocks = yield from _total(batch.float_blocks, _values)
    return floats + strings + blocks


def _too_big(reason: str, message: str, **metadata: int) -> BatchFailure:
    return BatchFailure(
        grpc.StatusCode.INVALID_ARGUMENT.name,
        reason,
        message,
        {k: str(v) for k, v in metadata.items()},
    )


def bound_failure(
    batch: ingest_pb2.PointBatch, total: int
) -> Generator[None, None, BatchFailure | None]:
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
    size = yield from _name_bytes(batch)
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


def _name_bytes(batch: ingest_pb2.PointBatch) -> Generator[None, None, int]:
    """UTF-8 bytes of the batch's names; counted in characters first (a UTF-8 character takes
    at most 4 bytes), which settles almost every batch without encoding a name."""
    groups: list[Sequence[str]] = []
    for series in (batch.float_series, batch.string_series):
        names: list[str] = []
        for i in range(0, len(series), _CHUNK):
            names += [s.name for s in series[i : i + _CHUNK]]
            yield
        groups.append(names)
    groups += [b.names for b in batch.float_blocks]
    chars = 0
    for g in groups:
        chars += yield from _total(g, len)
    if chars * 4 <= MAX_BATCH_NAME_BYTES:
        return chars
    size = 0
    for g in groups:
        size += yield from _total(g, _utf8)
    return size


def _utf8(name: str) -> int:
    return len(name.encode("utf-8", "surrogatepass"))


def _timestamps(
    wire: Sequence[float], n: int, clock: Floats, what: str
) -> Floats | tuple[str, str]:
    """n timestamps (the receive time when none were sent), or (reason, message)."""
    if not wire:
        return clock[:n]
    if len(wire) != n:
        return "LENGTH_MISMATCH", f"{what.format(n=n)} but {len(wire)} timestamps"
    timestamps = np.array(wire, dtype=np.float64)
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
