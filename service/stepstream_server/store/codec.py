"""What every engine shares: how a chunk is packed, how a view is walked and how chunks read back
become floors and points. The engines differ only in the SQL around these."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from ..model import (
    NO_CHUNK_CAP,
    ChunkWrite,
    Floats,
    Incarnation,
    Origin,
    Segment,
    SeriesPoints,
    value_token,
)

# Acknowledgements kept per writer for exact re-acks of re-sent batches; a client never has more
# than its in-flight window unacknowledged, which is far below this.
ACK_RETENTION = 4096

Ref = TypeVar("Ref")


def encode_values(values: Floats | list[str]) -> bytes:
    if isinstance(values, list):
        raw = [v.encode("utf-8", "surrogatepass") for v in values]
        lengths = np.fromiter((len(r) for r in raw), dtype=np.int64, count=len(raw))
        return lengths.tobytes() + b"".join(raw)
    return np.ascontiguousarray(values, dtype=np.float64).tobytes()


# -- the steps and ts columns: packed float64, or a compact form (docs/scaling.md) ----------
#
# Packed is 8 bytes a point; a compact form's length is never a multiple of 8, and its first
# byte names it: b"A" + first + delta (an exact progression), b"R" + (value, count) per run of
# equal values. A value's bits are kept exactly in every form.

_PROGRESSION = b"A"
_RUNS = b"R"
_TWO_DOUBLES = struct.Struct("<dd")


def _progression(first: float, delta: float, n: int) -> Floats:
    with np.errstate(over="ignore"):  # a point past the float range: then not a progression
        return first + np.arange(n, dtype=np.float64) * delta


def pack_floats(column: Floats) -> bytes:
    """A steps or timestamps column, in its shortest form."""
    a = np.ascontiguousarray(column, dtype=np.float64)
    n = len(a)
    if n <= 2:
        return a.tobytes()
    bits = a.view(np.int64)
    first = float(a[0])
    delta = float(a[1]) - first
    # Finite operands only: what NaN bits arithmetic makes is up to the machine.
    if (
        math.isfinite(first)
        and math.isfinite(delta)
        and np.array_equal(_progression(first, delta, n).view(np.int64), bits)
    ):
        return _PROGRESSION + _TWO_DOUBLES.pack(first, delta)
    starts = np.flatnonzero(bits[1:] != bits[:-1]) + 1
    runs = len(starts) + 1
    if 1 + 16 * runs < 8 * n:
        starts = np.concatenate([[0], starts])
        counts = np.diff(np.concatenate([starts, [n]]))
        return _RUNS + np.stack([bits[starts], counts.astype(np.int64)], axis=1).tobytes()
    return a.tobytes()


def pack_rows(matrix: np.ndarray[Any, Any]) -> list[bytes]:
    """`pack_floats` of every row of a (rows, n) matrix. Equal rows are packed once: the
    series of one block share their steps and timestamps."""
    a = np.ascontiguousarray(matrix, dtype=np.float64)
    bits = a.view(np.int64)
    if len(a) and np.array_equal(bits, np.broadcast_to(bits[0], bits.shape)):
        return [pack_floats(a[0])] * len(a)
    packed: dict[bytes, bytes] = {}
    out = []
    for raw in map(bytes, a):
        found = packed.get(raw)
        if found is None:
            found = packed[raw] = pack_floats(np.frombuffer(raw, dtype=np.float64))
        out.append(found)
    return out


def unpack_floats(blob: bytes, n: int) -> Floats:
    """The `n` values of a column `pack_floats` wrote (or packed float64, from any version)."""
    if len(blob) % 8 == 0:
        return np.frombuffer(blob, dtype=np.float64, count=n)
    tag = blob[:1]
    if tag == _PROGRESSION:
        first, delta = _TWO_DOUBLES.unpack_from(blob, 1)
        return _progression(first, delta, n)
    if tag == _RUNS:
        table = np.frombuffer(blob, dtype=np.int64, offset=1).reshape(-1, 2)
        out: Floats = np.repeat(table[:, 0], table[:, 1]).view(np.float64)
        if len(out) != n:
            raise ValueError(f"a run-length column holds {len(out)} values, not {n}")
        return out
    raise ValueError(f"unknown column form {tag!r} ({len(blob)} bytes for {n} values)")


def decode_values(blob: bytes, n: int, is_string: bool) -> Floats | list[str]:
    if not is_string:
        return np.frombuffer(blob, dtype=np.float64, count=n)
    lengths = np.frombuffer(blob, dtype=np.int64, count=n)
    ends = np.cumsum(lengths) + 8 * n
    out: list[str] = []
    start = 8 * n
    for end in ends.tolist():
        out.append(blob[start:end].decode("utf-8", "surrogatepass"))
        start = end
    return out


def chunk_columns(
    chunk: ChunkWrite,
) -> tuple[float, float, int, bytes, bytes, bytes, bytes | None]:
    """min_step, max_step, n, the three packed columns and the stats of a chunk row (many
    chunks at once: `chunk_rows`)."""
    return (
        float(chunk.steps[0]),
        float(chunk.steps[-1]),
        len(chunk.steps),
        pack_floats(chunk.steps),
        encode_values(chunk.values),
        pack_floats(chunk.timestamps),
        None if chunk.is_string else chunk_stats(chunk.steps, chunk.values, chunk.timestamps),  # type: ignore[arg-type]
    )


# -- per-chunk stats (schema version 3) ------------------------------------------------------
#
# A float chunk keeps, for every block of STATS_BLOCK points, the (step, value, timestamp) of
# its first, minimum, maximum, first NaN (the first point when none) and last point, as packed
# float64. A downsampled read whose buckets are at least a block wide reads these instead of the
# points: min, max, first, last and the NaN and infinity flags of every block (and so of the
# chunk) are all there, in 5 points per block, so spikes, NaN and infinities stay visible.
# Chunks written before version 3 have no stats and are read whole.

STATS_BLOCK = 256


def extremes(values: Floats, width: int) -> Floats:
    """Indices of the points to keep when `values` are cut into buckets of `width` points:
    each bucket's first, minimum, maximum, first NaN and last point, sorted, without repeats.
    The one rule of downsampling, for stored block stats and for reads alike."""
    n = len(values)
    return np.unique(_bucket_picks(values, width).ravel()) if n else np.empty(0, np.int64)


def _bucket_picks(values: Floats, width: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Per bucket: (first, min, max, first NaN or first, last) indices, shape (buckets, 5)."""
    picks: np.ndarray[Any, np.dtype[np.int64]]
    picks = _bucket_picks_rows(np.asarray(values, dtype=np.float64)[None, :], width)[0]
    return picks


def _bucket_picks_rows(
    matrix: np.ndarray[Any, Any], width: int
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """`_bucket_picks` of every row of a (rows, n) matrix at once: shape (rows, buckets, 5).
    The whole buckets are a view of the matrix and the last, shorter one is taken apart, so
    nothing is padded or copied; NaN is masked only when there is one."""
    k, n = matrix.shape
    if n == 0:
        return np.empty((k, 0, 5), dtype=np.int64)
    width = min(width, n)
    whole = n // width
    picks = []
    if whole:
        grid = matrix[:, : whole * width].reshape(k, whole, width)
        picks.append(_grid_picks(grid, np.arange(0, whole * width, width)))
    if n % width:
        tail = matrix[:, whole * width :]
        picks.append(_grid_picks(tail[:, None, :], np.array([whole * width])))
    return picks[0] if len(picks) == 1 else np.concatenate(picks, axis=1)


def _grid_picks(
    grid: np.ndarray[Any, Any], starts: np.ndarray[Any, Any]
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """(first, min, max, first NaN or first, last) of buckets of equal width: grid (rows,
    buckets, width), `starts` each bucket's first index; NaN never is a minimum or maximum."""
    k, buckets, width = grid.shape
    nan = np.isnan(grid)
    if nan.any():
        low = np.where(nan, np.inf, grid).argmin(axis=2)
        high = np.where(nan, -np.inf, grid).argmax(axis=2)
        first_nan = np.where(nan.any(axis=2), nan.argmax(axis=2), 0)
    else:
        low = grid.argmin(axis=2)
        high = grid.argmax(axis=2)
        first_nan = np.zeros((k, buckets), dtype=np.int64)
    start = np.broadcast_to(starts, (k, buckets))
    last = np.broadcast_to(starts + (width - 1), (k, buckets))
    out: np.ndarray[Any, np.dtype[np.int64]] = np.stack(
        [start, start + low, start + high, start + first_nan, last], axis=2
    ).astype(np.int64)
    return out


def chunk_stats(steps: Floats, values: Floats, timestamps: Floats) -> bytes:
    return _stats_rows(steps[None, :], np.asarray(values)[None, :], timestamps[None, :])[0]


def _stats_rows(
    steps: np.ndarray[Any, Any], values: np.ndarray[Any, Any], timestamps: np.ndarray[Any, Any]
) -> list[bytes]:
    """`chunk_stats` of every row of (rows, n) values, computed together; `steps` and
    `timestamps` are (rows, n) too, or one (n,) column that every row shares."""
    vals = np.asarray(values, dtype=np.float64)
    picks = np.sort(_bucket_picks_rows(vals, STATS_BLOCK), axis=2)
    rows = np.arange(len(vals))[:, None, None]

    def at(column: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return column[picks] if column.ndim == 1 else column[rows, picks]

    table = np.stack([at(steps), vals[rows, picks], at(timestamps)], axis=-1)
    return [row.tobytes() for row in table]


def chunk_rows(
    chunks: Sequence[ChunkWrite],
) -> list[tuple[float, float, int, bytes, bytes, bytes, bytes | None]]:
    """`chunk_columns` of many chunks, in order. Float chunks of equal length (a block's series
    in one group: the common case) are packed and their stats computed as one matrix each, so
    the numpy work is per group of equal lengths rather than per chunk."""
    out: list[Any] = [None] * len(chunks)
    by_length: dict[int, list[int]] = {}
    for i, chunk in enumerate(chunks):
        if chunk.is_string:
            out[i] = chunk_columns(chunk)
        else:
            by_length.setdefault(len(chunk.steps), []).append(i)
    for indices in by_length.values():
        if len(indices) == 1:
            out[indices[0]] = chunk_columns(chunks[indices[0]])
            continue
        group = [chunks[i] for i in indices]
        values = np.stack([np.asarray(c.values, dtype=np.float64) for c in group])
        first = group[0]
        if all(c.steps is first.steps and c.timestamps is first.timestamps for c in group):
            # One block's series (verdict.py shares their columns): packed once.
            stats = _stats_rows(first.steps, values, first.timestamps)
            n = len(first.steps)
            low, high = float(first.steps[0]), float(first.steps[-1])
            packed = (pack_floats(first.steps), pack_floats(first.timestamps))
            for j, i in enumerate(indices):
                out[i] = (low, high, n, packed[0], values[j].tobytes(), packed[1], stats[j])
            continue
        steps = np.stack([c.steps for c in group])
        ts = np.stack([c.timestamps for c in group])
        stats = _stats_rows(steps, values, ts)
        packed_steps, packed_ts = pack_rows(steps), pack_rows(ts)
        lows, highs = steps[:, 0].tolist(), steps[:, -1].tolist()
        n = steps.shape[1]
        for j, i in enumerate(indices):
            out[i] = (
                lows[j],
                highs[j],
                n,
                packed_steps[j],
                values[j].tobytes(),
                packed_ts[j],
                stats[j],
            )
    return out


def stats_points(name: str, blob: bytes) -> SeriesPoints:
    """The points a chunk's stats keep, in step order (repeats dropped)."""
    table = np.frombuffer(blob, dtype=np.float64).reshape(-1, 3)
    steps = table[:, 0]
    keep = np.concatenate([[True], steps[1:] != steps[:-1]]) if len(steps) else steps > 0
    return SeriesPoints(name, False, steps[keep], table[keep, 1], table[keep, 2])


# What a summary needs of one chunk's visible points: (count, last step, last value, the values
# the minimum and maximum are among). `SUMMARY_COLUMNS` selects a chunk row for it, with the
# points left out (NULL) when the stats suffice: a float chunk with stats lying wholly at or
# below the segment's step cap (its stats keep every block's first, minimum, maximum and last).
SummaryPiece = tuple[int, float, "float | str", Floats]
_NO_VALUES: Floats = np.empty(0, dtype=np.float64)


def summary_columns(chunk: str, step_cap: str) -> str:
    """n, stats, steps, vals of a chunk row for `summary_piece` (SQL; `chunk` the
    table's alias with a dot, or '', `step_cap` the segment's step cap as SQL)."""
    whole = f"{chunk}stats IS NULL OR {chunk}max_step > {step_cap}"
    return (
        f"{chunk}n, {chunk}stats, CASE WHEN {whole} THEN {chunk}steps END,"
        f" CASE WHEN {whole} THEN {chunk}vals END"
    )


def summary_piece(is_string: bool, step_cap: float, row: Sequence[Any]) -> SummaryPiece | None:
    """The summary piece of a chunk row selected by `summary_columns`: from its stats when its
    points were left out, else from its points at or below `step_cap` (None when none are)."""
    n, stats, steps_blob, vals_blob = row
    if steps_blob is None:
        table = np.frombuffer(bytes(stats), dtype=np.float64).reshape(-1, 3)
        return int(n), float(table[-1, 0]), float(table[-1, 1]), table[:, 1]
    steps = unpack_floats(bytes(steps_blob), n)
    k = int(np.searchsorted(steps, step_cap, side="right"))
    if k == 0:
        return None
    values = decode_values(bytes(vals_blob), n, is_string)
    if is_string:
        return k, float(steps[k - 1]), str(values[k - 1]), _NO_VALUES
    floats = np.asarray(values, dtype=np.float64)[:k]
    return k, float(steps[k - 1]), float(floats[-1]), floats


def sampled_points(
    name: str,
    rows: Iterable[tuple[Any, int, float, float, bytes | None]],
    step_min: float,
    step_max: float,
    fetch: Callable[[Any], tuple[int, bytes, bytes, bytes]],
) -> Iterator[SeriesPoints]:
    """A sampled read of one float series' chunk rows (chunk key, n, min_step, max_step,
    stats): the stats of every chunk lying wholly in [step_min, step_max], the points of the
    others (range edges, chunks from before stats), fetched by key."""
    for key, _, lo, hi, stats in rows:
        if stats is not None and lo >= step_min and hi <= step_max:
            yield stats_points(name, bytes(stats))
            continue
        points = points_of(name, False, fetch(key), step_min, step_max)
        if points is not None:
            yield points


def view_segments(
    incarnation_id: str, get_incarnation: Callable[[str], Incarnation | None]
) -> list[Segment]:
    """The view of an incarnation, oldest ancestor first, each hop cut at its fork step and
    at the chunk snapshot taken when the child was created."""
    out = [Segment(incarnation_id)]
    step_cap, chunk_cap = math.inf, NO_CHUNK_CAP
    current = get_incarnation(incarnation_id)
    while current is not None and current.parent_incarnation_id is not None:
        assert current.fork_step is not None and current.snapshot_chunk is not None
        step_cap = min(step_cap, current.fork_step)
        chunk_cap = min(chunk_cap, current.snapshot_chunk)
        out.append(Segment(current.parent_incarnation_id, step_cap, chunk_cap))
        current = get_incarnation(current.parent_incarnation_id)
    out.reverse()
    return out


def fold_visible(
    hops: Iterable[tuple[Segment, Iterable[tuple[str, bool, Ref, int]]]],
) -> dict[tuple[str, bool], list[tuple[Segment, Ref, int]]]:
    """Per series of a view: (segment, series, generation), oldest first. `hops` go from the
    viewed incarnation up, each with the (name, is_string, series, generation) of the newest
    generation its snapshot can see; a generation above 0 was an overwrite and hides
    everything older."""
    found: dict[tuple[str, bool], list[tuple[Segment, Ref, int]]] = {}
    closed: set[tuple[str, bool]] = set()
    for seg, rows in hops:
        for name, is_string, series, generation in rows:
            key = (name, bool(is_string))
            if key in closed:
                continue
            found.setdefault(key, []).append((seg, series, generation))
            if generation > 0:
                closed.add(key)
    for parts in found.values():
        parts.reverse()
    return found


def own_generation(parts: Sequence[tuple[Segment, Any, int]], segments: Sequence[Segment]) -> int:
    """The generation a series has in the viewed incarnation itself (0 when only inherited)."""
    return parts[-1][2] if parts[-1][0] is segments[-1] else 0


def floor_of(
    name: str, is_string: bool, n: int, steps_blob: bytes, vals_blob: bytes, step_cap: float
) -> tuple[str, tuple[float, str]]:
    """The floor key of a series and its last point at or below `step_cap` in this chunk."""
    steps = unpack_floats(steps_blob, n)
    idx = int(np.searchsorted(steps, step_cap, side="right")) - 1
    values = decode_values(vals_blob, n, is_string)
    key = ("s:" if is_string else "f:") + name
    return key, (float(steps[idx]), value_token(values[idx]))


def points_of(
    name: str,
    is_string: bool,
    row: tuple[int, bytes, bytes, bytes],
    step_min: float,
    step_max: float,
) -> SeriesPoints | None:
    """The points of one chunk row (n, steps, vals, ts) within [step_min, step_max]."""
    n, steps_blob, vals_blob, ts_blob = row
    steps = unpack_floats(steps_blob, n)
    lo_i = int(np.searchsorted(steps, step_min, side="left"))
    hi_i = int(np.searchsorted(steps, step_max, side="right"))
    if lo_i >= hi_i:
        return None
    values = decode_values(vals_blob, n, is_string)
    ts = unpack_floats(ts_blob, n)
    return SeriesPoints(name, is_string, steps[lo_i:hi_i], values[lo_i:hi_i], ts[lo_i:hi_i])


def incarnation_from_row(row: Sequence[Any]) -> Incarnation:
    """From (id, project, run_id, parent, parent run, fork step, snapshot, origin, created,
    archived)."""
    iid, project, run_id, parent, parent_run, fork_step, snapshot, origin, created, archived = row
    return Incarnation(
        incarnation_id=iid,
        project=project,
        run_id=run_id,
        parent_incarnation_id=parent,
        parent_run_id=parent_run,
        fork_step=fork_step,
        snapshot_chunk=snapshot,
        origin=Origin(origin),
        created_at=created,
        archived=bool(archived),
    )


def run_changes(
    placeholder: str,
    *,
    now: float,
    state: int | None,
    tags: Sequence[str] | None,
    config: dict[str, Any] | None,
    description: str | None,
    failure_reason: str | None,
    values: dict[str, Any] | None,
    encode_text: Callable[[str], Any] = lambda text: text,
) -> tuple[str, list[Any]]:
    """`Store.update_run`'s SET clause and its arguments, for either engine: `placeholder` is
    its parameter marker, `encode_text` how it stores free text. A state change also raises
    the fence (ingest must see it: docs/replicas.md)."""
    sets = [f"updated_at = {placeholder}"]
    args: list[Any] = [now]
    if state is not None:
        sets.append(f"state = {placeholder}, fence = fence + 1")
        args.append(state)
    for column, value in (
        ("tags", None if tags is None else json.dumps(sorted(set(tags)))),
        ("config", None if config is None else json.dumps(config)),
        ("description", None if description is None else encode_text(description)),
        ("failure_reason", None if failure_reason is None else encode_text(failure_reason)),
        ("vals", None if values is None else json.dumps(values)),
    ):
        if value is not None:
            sets.append(f"{column} = {placeholder}")
            args.append(value)
    return ", ".join(sets), args
