"""Reading series back: resolving what to read into a view, and summarising it."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from . import errors
from .ingest import IngestWorker
from .model import Floats, Segment, SeriesPoints, SeriesSummary
from .store import Store
from .validation import project_of, run_id_of

# Points per streamed message: keeps every message far below gRPC's size limits.
POINTS_PER_MESSAGE = 65_536


@dataclass(frozen=True)
class Selector:
    """What to read: a run's current view or an exact incarnation."""

    project: str
    run_id: str
    incarnation_id: str
    own_points_only: bool


class Reader:
    """Plain logic behind ListSeries and ReadSeries."""

    def __init__(self, worker: IngestWorker) -> None:
        self.worker = worker
        self.store: Store = worker.store

    async def view(self, sel: Selector) -> tuple[str, list[Segment]]:
        if sel.incarnation_id and sel.run_id:
            raise errors.invalid(
                "CONFLICTING_SELECTOR",
                "give run_id or incarnation_id, not both",
                run_id=sel.run_id,
                incarnation_id=sel.incarnation_id,
            )
        if sel.incarnation_id:
            inc = await self.worker.in_store(self.store.get_incarnation, sel.incarnation_id)
            if inc is None:
                raise errors.not_found(
                    "INCARNATION_NOT_FOUND",
                    f"incarnation {sel.incarnation_id!r} not found",
                    incarnation_id=sel.incarnation_id,
                )
            incarnation_id = inc.incarnation_id
        else:
            project, run_id = project_of(sel.project), run_id_of(sel.run_id)
            record = await self.worker.in_store(self.store.get_run, project, run_id)
            if record is None:
                raise errors.not_found(
                    "RUN_NOT_FOUND",
                    f"run {run_id!r} not found in project {project!r}",
                    project=project,
                    run_id=run_id,
                )
            incarnation_id = record.current_incarnation_id
        segments = await self.worker.in_store(
            lambda: self.store.segments(incarnation_id, own_only=sel.own_points_only)
        )
        return incarnation_id, segments

    async def summaries(self, sel: Selector) -> tuple[str, list[SeriesSummary]]:
        incarnation_id, segments = await self.view(sel)
        return incarnation_id, await self.worker.in_store(_summarise, self.store, segments)

    async def read(
        self,
        sel: Selector,
        names: Sequence[str],
        step_min: float,
        step_max: float,
    ) -> list[SeriesPoints]:
        """Every selected series' points, whole (the servicer slices them into messages)."""
        _, segments = await self.view(sel)
        return await self.worker.in_store(
            _read_all, self.store, segments, list(names), step_min, step_max
        )


def _read_all(
    store: Store, segments: Sequence[Segment], names: list[str], lo: float, hi: float
) -> list[SeriesPoints]:
    keys = store.series_keys(segments)
    if names:
        wanted = set(names)
        keys = [k for k in keys if k[0] in wanted]
    out = []
    for name, is_string in keys:
        points = merge(list(store.read(segments, name, is_string, lo, hi)), name, is_string)
        if len(points.steps):
            out.append(points)
    return out


def merge(parts: list[SeriesPoints], name: str, is_string: bool) -> SeriesPoints:
    if len(parts) == 1:
        return parts[0]
    empty = np.empty(0, dtype=np.float64)
    steps = np.concatenate([p.steps for p in parts]) if parts else empty
    ts = np.concatenate([p.timestamps for p in parts]) if parts else empty
    values: Floats | list[str]
    if is_string:
        values = [v for p in parts for v in p.values]
    else:
        values = np.concatenate([p.values for p in parts]) if parts else empty
    return SeriesPoints(name, is_string, steps, values, ts)


def _summarise(store: Store, segments: Sequence[Segment]) -> list[SeriesSummary]:
    out = []
    for name, is_string in store.series_keys(segments):
        pts = merge(
            list(store.read(segments, name, is_string, -math.inf, math.inf)), name, is_string
        )
        n = len(pts.steps)
        if n == 0:
            continue
        if is_string:
            out.append(
                SeriesSummary(
                    name,
                    True,
                    n,
                    float(pts.steps[-1]),
                    math.nan,
                    math.nan,
                    math.nan,
                    str(pts.values[-1]),
                )
            )
            continue
        vals = np.asarray(pts.values, dtype=np.float64)
        finite_or_inf = vals[~np.isnan(vals)]
        lo = float(finite_or_inf.min()) if len(finite_or_inf) else math.nan
        hi = float(finite_or_inf.max()) if len(finite_or_inf) else math.nan
        out.append(SeriesSummary(name, False, n, float(pts.steps[-1]), float(vals[-1]), lo, hi))
    return out


def slices(points: SeriesPoints, size: int = POINTS_PER_MESSAGE) -> Iterator[SeriesPoints]:
    n = len(points.steps)
    for start in range(0, n, size):
        end = min(n, start + size)
        yield SeriesPoints(
            points.name,
            points.is_string,
            points.steps[start:end],
            points.values[start:end],
            points.timestamps[start:end],
        )
