"""Wire batches to domain entries: shape and name checks per series, step checks per batch.

The checks every series needs (finite, strictly increasing steps) run once over the batch's
concatenated steps; only a batch that fails them is examined series by series, to name the
first bad step of each bad series.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np
from stepstream.rules import MAX_BATCH_POINTS, name_problem
from stepstream.v1 import ingest_pb2

from .model import BatchFailure, Floats, Rejection, SeriesEntry

# Names already seen valid; bounded so that a writer inventing names cannot grow it forever.
_KNOWN_NAMES_LIMIT = 100_000

Wire = ingest_pb2.FloatSeries | ingest_pb2.StringSeries


class Decoder:
    """Decodes PointBatch messages; remembers valid names to skip re-checking them."""

    def __init__(self) -> None:
        self._known: set[str] = set()

    def batch(
        self, batch: ingest_pb2.PointBatch, now: float
    ) -> tuple[list[SeriesEntry], list[Rejection], BatchFailure | None]:
        total = (
            sum(len(s.values) for s in batch.float_series)
            + sum(len(s.values) for s in batch.string_series)
            + sum(len(b.values) for b in batch.float_blocks)
        )
        if total > MAX_BATCH_POINTS:
            return (
                [],
                [],
                BatchFailure(
                    grpc.StatusCode.INVALID_ARGUMENT.name,
                    "BATCH_TOO_LARGE",
                    f"batch has {total} points; the limit is {MAX_BATCH_POINTS}",
                    {"points": str(total), "limit": str(MAX_BATCH_POINTS)},
                ),
            )
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
        steps = np.array(block.steps, dtype=np.float64)
        problem = step_problem(steps)
        if problem is not None:
            return reject_all(*problem)
        matrix = np.array(block.values, dtype=np.float64).reshape(rows, width)
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
            entries.append(SeriesEntry(name, False, steps, matrix[:, i], timestamps, False))
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
