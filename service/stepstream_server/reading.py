"""Reading series back: resolving what to read into a view, and summarising it."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from stepstream.rules import MIN_DOWNSAMPLE, POINTS_PER_MESSAGE

from . import errors
from .limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from .model import Floats, Incarnation, RunRecord, Segment, SeriesPoints, SeriesSummary
from .store import AsyncStore, Store
from .store.codec import STATS_BLOCK, SummaryPiece, extremes
from .validation import project_of, run_id_of

# Points per streamed message: keeps every message far below gRPC's size limits.


@dataclass(frozen=True)
class Selector:
    """What to read: a run's current view or an exact incarnation."""

    project: str
    run_id: str
    incarnation_id: str
    own_points_only: bool
    experiment: str = ""


class Reader:
    """Plain logic behind ListSeries and ReadSeries."""

    def __init__(self, store: AsyncStore) -> None:
        self.store = store

    async def view(self, sel: Selector) -> tuple[str, list[Segment]]:
        given = [k for k in ("run_id", "incarnation_id", "experiment") if getattr(sel, k)]
        if len(given) != 1:
            raise errors.invalid(
                "INVALID_SELECTOR",
                "give exactly one of run_id, incarnation_id and experiment"
                + (f"; got {', '.join(given)}" if given else ""),
                given=",".join(given),
            )
        if sel.incarnation_id:
            inc = await self.store.read(lambda s: s.get_incarnation(sel.incarnation_id))
            if inc is None:
                raise errors.incarnation_not_found(sel.incarnation_id)
            incarnation_id = inc.incarnation_id
        elif sel.experiment:
            project = project_of(sel.project)
            head = await self.store.read(lambda s: s.experiment_head(project, sel.experiment))
            if head is None:
                raise errors.not_found(
                    "EXPERIMENT_NOT_FOUND",
                    f"experiment {sel.experiment!r} has no runs in project {project!r}",
                    project=project,
                    experiment=sel.experiment,
                )
            incarnation_id = head.current_incarnation_id
        else:
            project, run_id = project_of(sel.project), run_id_of(sel.run_id)
            record = await self.store.read(lambda s: s.get_run(project, run_id))
            if record is None:
                raise errors.run_not_found(project, run_id)
            incarnation_id = record.current_incarnation_id
        segments = await self.store.read(
            lambda s: s.segments(incarnation_id, own_only=sel.own_points_only)
        )
        return incarnation_id, segments

    async def summaries(self, sel: Selector) -> tuple[str, list[SeriesSummary]]:
        incarnation_id, segments = await self.view(sel)
        keys = await self.store.read(lambda s: s.series_keys(segments))
        names = [(name, is_string) for name, is_string, _ in keys]
        return incarnation_id, await self.store.read(lambda s: _summarise(s, segments, names))

    async def page(
        self, sel: Selector, page_size: int, page_token: str
    ) -> tuple[str, list[SeriesSummary], str]:
        """One page of ListSeries (AIP-158): (incarnation, summaries, next page token)."""
        size = page_size_of(page_size)
        after = cursor_of(sel, page_token)
        incarnation_id, segments = await self.view(sel)
        summaries = await self.store.read(lambda s: _page(s, segments, after, size + 1))
        more = len(summaries) > size
        summaries = summaries[:size]
        last = summaries[-1] if more else None
        token = page_token_of(sel, (last.name, last.is_string)) if last else ""
        return incarnation_id, summaries, token

    async def read(
        self,
        sel: Selector,
        names: Sequence[str],
        step_min: float,
        step_max: float,
        *,
        max_points: int | None = None,
        generation: int | None = None,
    ) -> list[SeriesPoints]:
        """Every selected series' points, whole (the servicer slices them into messages)."""
        if max_points is not None and max_points < MIN_DOWNSAMPLE:
            raise errors.invalid(
                "INVALID_MAX_POINTS",
                f"max_points must be at least {MIN_DOWNSAMPLE}, got {max_points}",
                max_points=max_points,
            )
        _, segments = await self.view(sel)
        wanted = list(names)
        return await self.store.read(
            lambda s: _read_all(s, segments, wanted, step_min, step_max, max_points, generation)
        )


def _read_all(
    store: Store,
    segments: Sequence[Segment],
    names: list[str],
    lo: float,
    hi: float,
    max_points: int | None,
    generation: int | None,
) -> list[SeriesPoints]:
    asked = [(n, k) for n in names for k in (False, True)]
    if generation is not None:
        keys = asked
    else:
        keys = [(n, k) for n, k, _ in store.series_keys(segments, asked or None)]
    out = []
    for name, is_string in keys:
        if max_points is not None and generation is None and not is_string:
            sampled = _sampled(store, segments, name, lo, hi, max_points)
            if len(sampled.steps):
                out.append(sampled)
            continue
        parts = list(store.read(segments, name, is_string, lo, hi, generation))
        points = merge(parts, name, is_string)
        if len(points.steps) == 0:
            continue
        if max_points is not None and len(points.steps) > max_points:
            points = downsample(points, max_points)
        out.append(points)
    return out


def downsample(points: SeriesPoints, max_points: int) -> SeriesPoints:
    """At most `max_points` points: equal buckets, each keeping its first, last, minimum and
    maximum point and its first NaN, so spikes, infinities and NaN stay visible."""
    n = len(points.steps)
    buckets = max(1, max_points // MIN_DOWNSAMPLE)
    width = -(-n // buckets)
    if points.is_string:
        starts = np.arange(0, n, width)
        keep = np.unique(np.concatenate([starts, np.minimum(starts + width, n) - 1]))
    else:
        keep = extremes(np.asarray(points.values, dtype=np.float64), width)
    values: Floats | list[str]
    if points.is_string:
        values = [points.values[i] for i in keep.tolist()]
    else:
        values = np.asarray(points.values)[keep]
    return SeriesPoints(
        points.name, points.is_string, points.steps[keep], values, points.timestamps[keep]
    )


def _sampled(
    store: Store, segments: Sequence[Segment], name: str, lo: float, hi: float, max_points: int
) -> SeriesPoints:
    """A float series downsampled from chunk stats when its buckets are at least a stats
    block wide (O(chunks) instead of every point), else from its points."""
    buckets = max(1, max_points // MIN_DOWNSAMPLE)
    if store.count(segments, name, False, lo, hi) >= buckets * STATS_BLOCK:
        parts = list(store.read_sampled(segments, name, lo, hi))
    else:
        parts = list(store.read(segments, name, False, lo, hi))
    points = merge(parts, name, False)
    return downsample(points, max_points) if len(points.steps) > max_points else points


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


def page_size_of(page_size: int) -> int:
    if page_size < 0:
        raise errors.invalid(
            "INVALID_PAGE_SIZE",
            f"page_size must not be negative, got {page_size}",
            page_size=page_size,
        )
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _fingerprint(sel: Selector) -> str:
    text = "\0".join(
        (sel.project, sel.run_id, sel.incarnation_id, sel.experiment, str(sel.own_points_only))
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def page_token_of(sel: Selector, last: tuple[str, bool]) -> str:
    """Opaque to clients: the selector it belongs to and the last key of the page."""
    doc = json.dumps([_fingerprint(sel), last[0], last[1]], ensure_ascii=False)
    return base64.urlsafe_b64encode(doc.encode()).decode()


def cursor_of(sel: Selector, token: str) -> tuple[str, bool] | None:
    """The key the page continues after; None for the first page."""
    if not token:
        return None
    try:
        fingerprint, name, is_string = json.loads(base64.urlsafe_b64decode(token.encode()))
        valid = isinstance(name, str) and isinstance(is_string, bool)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise errors.invalid(
            "INVALID_PAGE_TOKEN",
            "page_token is not a token this service issued; pass next_page_token unchanged",
            page_token=token[:64],
        )
    if fingerprint != _fingerprint(sel):
        raise errors.invalid(
            "INVALID_PAGE_TOKEN",
            "page_token belongs to another selector; list from the first page",
            page_token=token[:64],
        )
    return name, is_string


def _page(
    store: Store, segments: Sequence[Segment], after: tuple[str, bool] | None, limit: int
) -> list[SeriesSummary]:
    """The summaries of the first `limit` visible series after `after`, in order: candidates
    from the series rows, in rounds, each round's candidates summarised together (a candidate
    without a visible point has no summary)."""
    out: list[SeriesSummary] = []
    while len(out) < limit:
        candidates = store.series_names(segments, after, limit)
        if not candidates:
            break
        out += _summarise(store, segments, candidates)
        if len(candidates) < limit:
            break
        after = candidates[-1]
    return out[:limit]


# Series summarised from one store read (ListSeries pages, the web view's summaries).
SUMMARY_BATCH = 1000


def _summarise(
    store: Store, segments: Sequence[Segment], keys: Sequence[tuple[str, bool]]
) -> list[SeriesSummary]:
    """The summaries of those of `keys` with a visible point, in the order of `keys`."""
    out = []
    for i in range(0, len(keys), SUMMARY_BATCH):  # a few queries a batch, bounded memory
        batch = keys[i : i + SUMMARY_BATCH]
        found = store.read_summary_pieces(segments, batch)
        for name, is_string in batch:
            if (name, is_string) in found:
                generation, pieces = found[(name, is_string)]
                out.append(summary_of(name, is_string, generation, pieces))
    return out


def summary_of(
    name: str, is_string: bool, generation: int, pieces: Sequence[SummaryPiece]
) -> SeriesSummary:
    """A series' summary from the pieces of its visible chunks, in order (at least one): the
    count, the last point, and the minimum and maximum of the values that are not NaN
    (infinities count), each the first such value in step order."""
    count = sum(p[0] for p in pieces)
    _, last_step, last, _ = pieces[-1]
    if is_string:
        return SeriesSummary(
            name, True, count, last_step, math.nan, math.nan, math.nan, str(last), generation
        )
    values = np.concatenate([p[3] for p in pieces])
    shown = values[~np.isnan(values)]
    lo = float(shown[shown.argmin()]) if len(shown) else math.nan
    hi = float(shown[shown.argmax()]) if len(shown) else math.nan
    return SeriesSummary(name, False, count, last_step, float(last), lo, hi, "", generation)


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


# -- lineage --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineageNode:
    """One incarnation of a run's family, with how much of it the run's current view sees."""

    inc: Incarnation
    # The viewed run's current incarnation.
    current: bool
    # Whether the run's current view reads any of it (its chain of ancestors).
    in_view: bool
    # The largest step of this incarnation visible in the run's current view (None: all).
    visible_to: float | None
    # The current incarnation of its own run (an archived one never is).
    run_current: bool


async def lineage(store: AsyncStore, record: RunRecord) -> list[LineageNode]:
    """The whole family of a run: its current view's chain of ancestors (oldest first, each
    with the step up to which the view sees it), then every other incarnation connected to it
    by a fork or a rewind, up or down, in any run of the project (oldest first)."""
    return await store.read(lambda s: _family(s, record))


def _family(store: Store, record: RunRecord) -> list[LineageNode]:
    runs = {(r.project, r.run_id): r for r in store.list_runs(record.project, "")}
    runs[(record.project, record.run_id)] = record
    known = {i.incarnation_id: i for r in runs.values() for i in r.incarnations}
    current_of_run = {r.current_incarnation_id for r in runs.values()}

    def get(iid: str) -> Incarnation | None:
        if iid not in known:
            inc = store.get_incarnation(iid)  # a parent in another project
            if inc is None:
                return None
            known[iid] = inc
        return known[iid]

    # The chain the current view reads, newest first, without recursion (a run may have been
    # rewound many times).
    chain: list[tuple[Incarnation, float | None]] = []
    visible_to = math.inf
    next_id: str | None = record.current_incarnation_id
    while next_id is not None and next_id not in {i.incarnation_id for i, _ in chain}:
        inc = get(next_id)
        if inc is None:
            break
        chain.append((inc, None if math.isinf(visible_to) else visible_to))
        if inc.fork_step is not None:
            visible_to = min(visible_to, inc.fork_step)
        next_id = inc.parent_incarnation_id
    # Everything connected to it through parent links, both ways.
    children: dict[str, list[str]] = {}
    for inc in list(known.values()):
        if inc.parent_incarnation_id is not None:
            children.setdefault(inc.parent_incarnation_id, []).append(inc.incarnation_id)
    seen = {i.incarnation_id for i, _ in chain} | {i.incarnation_id for i in record.incarnations}
    todo = list(seen)
    while todo:
        iid = todo.pop()
        inc = get(iid)
        linked = [*children.get(iid, []), *([inc.parent_incarnation_id] if inc else [])]
        for other in linked:
            if other is not None and other not in seen and get(other) is not None:
                seen.add(other)
                todo.append(other)
    in_chain = {i.incarnation_id for i, _ in chain}
    nodes = [
        LineageNode(inc, k == 0, True, to, inc.incarnation_id in current_of_run)
        for k, (inc, to) in enumerate(chain)
    ]
    nodes.reverse()
    rest = sorted(
        (known[i] for i in seen - in_chain),
        key=lambda i: (i.created_at, i.incarnation_id),
    )
    nodes += [LineageNode(i, False, False, None, i.incarnation_id in current_of_run) for i in rest]
    return nodes
