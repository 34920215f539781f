"""A chunk row's steps and ts columns (docs/scaling.md): packed float64 or a compact form,
chosen by codec.pack_floats, read back bit for bit by codec.unpack_floats, through both real
stores, next to rows written packed by earlier versions."""

from __future__ import annotations

import math
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pg import create_database, drop_database
from stepstream_server.model import ChunkWrite, WriterCommit
from stepstream_server.store import codec
from stepstream_server.store.base import RunCommit, Store
from stepstream_server.store.postgres import PostgresStore
from stepstream_server.store.sqlite import SqliteStore
from store_runs import create_plain_run

INF = math.inf


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a64 = np.ascontiguousarray(a, dtype=np.float64)
    b64 = np.ascontiguousarray(b, dtype=np.float64)
    return a64.shape == b64.shape and bool((a64.view(np.int64) == b64.view(np.int64)).all())


COLUMNS = {
    "progression": (np.arange(1000, dtype=np.float64) * 3 + 7, "A", 17),
    "one value": (np.full(500, 1.7e9 + 0.123), "A", 17),  # a progression with delta 0
    "three runs": (np.repeat([1.0, 2.0, -0.0], [100, 50, 10]), "R", 49),
    "negative zero first": (np.array([-0.0, 1.0, 2.0, 3.0]), None, 32),  # 0.0 + i != -0.0
    "sums of tenths": (np.cumsum(np.full(300, 0.1)), None, 2400),  # not exactly i * delta
    "fractions": (np.array([0.0, 0.5, 1.0, 1.5, 2.0]), "A", 17),
    "irregular": (np.array([1.0, 2.0, 4.0, 8.0, 16.0]), None, 40),
    "nan runs": (np.full(64, math.nan), "R", 17),  # never a progression: NaN arithmetic
    "infinities": (np.array([INF] * 10 + [1.0]), "R", 33),
    "two points": (np.array([5.0, 6.0]), None, 16),  # never compact: 16 bytes is packed
    "one point": (np.array([5.0]), None, 8),
    "alternating": (np.tile([1.0, 2.0], 50), None, 800),  # runs longer than packed
    "huge delta": (np.array([-1.7e308, 0.0, 1.7e308]), None, 24),  # delta overflows
}


@pytest.mark.parametrize("name", list(COLUMNS))
def test_pack_picks_the_form_and_unpacks_every_bit(name: str) -> None:
    column, tag, size = COLUMNS[name]
    blob = codec.pack_floats(column)
    assert len(blob) == size
    if tag is None:
        assert blob == column.tobytes()
    else:
        assert blob[:1] == tag.encode() and len(blob) % 8 != 0
    assert same_bits(codec.unpack_floats(blob, len(column)), column)


def test_pack_rows_packs_equal_rows_once_and_others_each() -> None:
    shared = np.tile(np.arange(100.0), (4, 1))
    assert codec.pack_rows(shared) == [codec.pack_floats(shared[0])] * 4
    mixed = np.stack([np.arange(10.0), np.arange(10.0) * 0.1, np.full(10, 2.0), np.arange(10.0)])
    assert codec.pack_rows(mixed) == [codec.pack_floats(row) for row in mixed]


def test_a_damaged_column_is_an_error_not_wrong_points() -> None:
    with pytest.raises(ValueError, match="unknown column form"):
        codec.unpack_floats(b"Z" + bytes(16), 3)
    runs = codec.pack_floats(np.repeat([1.0, 2.0], [5, 5]))
    with pytest.raises(ValueError, match="holds 10 values, not 11"):
        codec.unpack_floats(runs, 11)


# -- through the real stores ------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s: Store = SqliteStore(tmp_path / "s.sqlite3")
        try:
            yield s
        finally:
            s.close()
        return
    url = create_database()
    try:
        s = PostgresStore(url)
        try:
            yield s
        finally:
            s.close()
    finally:
        drop_database(url)


def _run(store: Store) -> str:
    project = "p" + secrets.token_hex(3)
    record = create_plain_run(store, project=project, incarnation_id=f"{project}-r-1")
    return record.current_incarnation_id


def test_compact_columns_read_back_exactly_from_both_stores(store: Store) -> None:
    inc = _run(store)
    project = inc.split("-")[0]
    n = 600
    block_steps = np.arange(n, dtype=np.float64)
    block_ts = np.repeat([1.7e9, 1.7e9 + 1], [400, 200])
    rng = np.random.default_rng(3)
    chunks = [
        # A block's series: equal steps and timestamps, packed as one matrix.
        ChunkWrite(inc, f"block/{k}", False, block_steps, rng.normal(size=n), block_ts)
        for k in range(5)
    ]
    odd_steps = np.cumsum(rng.random(50) + 0.01)
    odd_ts = rng.random(50) * 1e9
    chunks.append(ChunkWrite(inc, "odd", False, odd_steps, rng.normal(size=50), odd_ts))
    chunks.append(ChunkWrite(inc, "text", True, np.arange(3.0), ["a", "b", "c"], np.zeros(3)))
    commit = RunCommit(project, "r", 0, chunks, [WriterCommit(project, "r", "w", 1, "{}")])
    assert store.commit([commit]) == {}
    segments = store.segments(inc)
    for chunk in chunks:
        got = list(store.read(segments, chunk.name, chunk.is_string, -INF, INF))
        steps = np.concatenate([p.steps for p in got])
        ts = np.concatenate([p.timestamps for p in got])
        assert same_bits(steps, chunk.steps) and same_bits(ts, chunk.timestamps), chunk.name
        if not chunk.is_string:
            values = np.concatenate([np.asarray(p.values) for p in got])
            assert same_bits(values, np.asarray(chunk.values))
    # A range read and the floors cut compact columns like packed ones.
    got = list(store.read(segments, "block/0", False, 399.5, 401))
    assert [list(p.steps) for p in got] == [[400.0, 401.0]]
    assert [list(p.timestamps) for p in got] == [[1.7e9 + 1, 1.7e9 + 1]]
    floors = store.floors(segments)
    assert floors["f:block/0"][0] == n - 1
    assert floors["f:odd"][0] == float(odd_steps[-1])


def test_rows_written_packed_before_compact_forms_still_read(tmp_path: Path) -> None:
    """A file from before: its steps and ts are plain float64 (written here by hand)."""
    store = SqliteStore(tmp_path / "old.sqlite3")
    try:
        inc = _run(store)
        project = inc.split("-")[0]
        steps = np.arange(10.0)
        chunk = ChunkWrite(inc, "loss", False, steps, steps * 2, np.full(10, 5.0))
        commit = RunCommit(project, "r", 0, [chunk], [WriterCommit(project, "r", "w", 1, "{}")])
        assert store.commit([commit]) == {}
        store.flush()  # from the staged row to its chunk (docs/staging.md)
        with sqlite3.connect(tmp_path / "old.sqlite3") as conn:
            stored = conn.execute("SELECT length(steps), length(ts) FROM chunks").fetchall()
            assert stored == [(17, 17)]  # compact as written now
            conn.execute(
                "UPDATE chunks SET steps = ?, ts = ?", (steps.tobytes(), (steps + 5).tobytes())
            )
        got = list(store.read(store.segments(inc), "loss", False, -INF, INF))
        assert [list(p.steps) for p in got] == [list(steps)]
        assert [list(p.timestamps) for p in got] == [list(steps + 5)]
        assert store.floors(store.segments(inc))["f:loss"][0] == 9.0
    finally:
        store.close()


# -- the stats rows, against the first (padded) implementation ------------------------------


def _reference_picks(matrix: np.ndarray, width: int) -> np.ndarray:
    """The buckets' (first, min, max, first NaN or first, last) as first written: every row
    padded with NaN to whole buckets, NaN masked everywhere."""
    k, n = matrix.shape
    width = min(width, max(n, 1))
    starts = np.arange(0, n, width)
    buckets = len(starts)
    ends = np.minimum(starts + width, n) - 1
    pad = buckets * width - n
    if pad:
        matrix = np.concatenate([matrix, np.full((k, pad), np.nan)], axis=1)
    grid = matrix.reshape(k, buckets, width)
    real = (np.arange(buckets * width) < n).reshape(buckets, width)
    nan = np.isnan(grid)
    low = np.where(nan, np.inf, grid).argmin(axis=2)
    high = np.where(nan, -np.inf, grid).argmax(axis=2)
    real_nan = nan & real
    first_nan = np.where(real_nan.any(axis=2), real_nan.argmax(axis=2), 0)
    start = np.broadcast_to(starts, (k, buckets))
    last = np.broadcast_to(ends, (k, buckets))
    picks = np.stack([start, start + low, start + high, start + first_nan, last], axis=2)
    return np.minimum(picks, ends[None, :, None]).astype(np.int64)


def _reference_stats(steps: np.ndarray, values: np.ndarray, ts: np.ndarray) -> bytes:
    picks = np.sort(_reference_picks(values[None, :], codec.STATS_BLOCK), axis=2)[0]
    return np.stack([steps[picks], values[picks], ts[picks]], axis=-1).tobytes()


def _values(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    v = rng.normal(size=n)
    if kind == "nan" and n:
        v[rng.integers(0, n, size=max(1, n // 7))] = np.nan
    if kind == "inf" and n:
        v[rng.integers(0, n, size=max(1, n // 9))] = np.inf
        v[rng.integers(0, n, size=max(1, n // 11))] = -np.inf
    if kind == "all nan":
        v[:] = np.nan
    if kind == "ties":
        v = np.round(v)
    return v


@pytest.mark.parametrize("n", [1, 2, 5, 255, 256, 257, 400, 512, 700])
@pytest.mark.parametrize("kind", ["plain", "nan", "inf", "all nan", "ties"])
def test_stats_and_extremes_match_the_padded_reference(n: int, kind: str) -> None:
    rng = np.random.default_rng(n * 31 + len(kind))
    rows = np.stack([_values(rng, n, kind) for _ in range(6)])
    for width in (1, 3, 50, codec.STATS_BLOCK, 10_000):
        assert np.array_equal(
            codec._bucket_picks_rows(rows, width), _reference_picks(rows, width)
        ), width
        assert np.array_equal(
            codec.extremes(rows[0], width), np.unique(_reference_picks(rows[:1], width).ravel())
        ), width
    steps = np.arange(n, dtype=np.float64) * 2 + 1
    ts = np.full(n, 1.7e9)
    shared = [ChunkWrite("i", f"s{k}", False, steps, rows[k], ts) for k in range(len(rows))]
    own = [ChunkWrite("i", f"o{k}", False, steps.copy(), rows[k], ts + k) for k in range(len(rows))]
    # A block's series share their columns (one packing), others are stacked: both paths.
    packed = codec.chunk_rows(shared) + codec.chunk_rows(own)
    for chunk, row in zip(shared + own, packed, strict=True):
        expected = _reference_stats(chunk.steps, np.asarray(chunk.values), chunk.timestamps)
        assert row == codec.chunk_columns(chunk), chunk.name
        assert row[6] == expected, chunk.name
        assert codec.unpack_floats(row[3], n).tobytes() == chunk.steps.tobytes()
        assert codec.unpack_floats(row[5], n).tobytes() == chunk.timestamps.tobytes()


def test_no_points_have_no_buckets() -> None:
    assert codec._bucket_picks_rows(np.empty((3, 0)), 256).shape == (3, 0, 5)
    assert len(codec.extremes(np.empty(0), 256)) == 0
