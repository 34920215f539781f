"""Fast downsampled reads (issue 13): per-block stats of float chunks in both stores (schema
migration 3), read in place of the points when the buckets are wider than a block; chunks from
before version 3 (no stats) still read correctly."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stepstream_server.model import ChunkWrite
from stepstream_server.reading import _read_all, downsample, merge
from stepstream_server.store.base import RunCommit, Store
from stepstream_server.store.codec import STATS_BLOCK, chunk_stats, stats_points
from stepstream_server.store.postgres import PostgresStore
from stepstream_server.store.sqlite import MIGRATIONS, SqliteStore
from store_runs import create_plain_run

N = 200_000
CHUNK = 50_000
SPIKES = {1234: math.inf, 50_001: -math.inf, 77_777: math.nan, 150_000: 1e6, 199_998: -1e6}


def values() -> np.ndarray:
    x = np.sin(np.arange(N) / 5000.0)
    for i, v in SPIKES.items():
        x[i] = v
    return x


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "store.sqlite")
    else:
        s = PostgresStore(request.getfixturevalue("fresh_pg_url"))
    try:
        yield s
    finally:
        s.close()


def fill(store: Store) -> str:
    record = create_plain_run(store, incarnation_id="inc-r")
    steps = np.arange(N, dtype=np.float64)
    vals = values()
    chunks = [
        ChunkWrite(
            "inc-r",
            "loss",
            False,
            steps[i : i + CHUNK],
            vals[i : i + CHUNK],
            steps[i : i + CHUNK] + 1e9,
        )
        for i in range(0, N, CHUNK)
    ]
    assert store.commit([RunCommit("p", "r", 0, chunks, [])]) == {}
    return record.current_incarnation_id


def sampled(
    store: Store, inc: str, max_points: int = 2000, lo: float = -math.inf, hi: float = math.inf
) -> Any:
    (points,) = _read_all(store, store.segments(inc), ["loss"], lo, hi, max_points, None)
    return points


def whole(store: Store, inc: str, lo: float = -math.inf, hi: float = math.inf) -> Any:
    return merge(list(store.read(store.segments(inc), "loss", False, lo, hi)), "loss", False)


def assert_keeps_extremes(points: Any, max_points: int, spikes: dict[int, float]) -> None:
    assert 0 < len(points.steps) <= max_points
    assert np.all(np.diff(points.steps) > 0)
    got = dict(zip(points.steps.tolist(), points.values.tolist(), strict=True))
    for step, v in spikes.items():
        assert step in got, step
        assert (math.isnan(got[step]) and math.isnan(v)) or got[step] == v
    assert points.timestamps[0] == points.steps[0] + 1e9


def test_stats_of_a_chunk_keep_first_last_min_max_and_nan():
    steps = np.arange(600, dtype=np.float64)
    vals = np.zeros(600)
    vals[3], vals[300], vals[301], vals[599] = 9.0, -9.0, math.nan, 5.0
    kept = stats_points("x", chunk_stats(steps, vals, steps + 1))
    # Three blocks of 256: each its first, min, max, first NaN and last point, in step order.
    assert kept.steps.tolist() == [0, 3, 255, 256, 300, 301, 511, 512, 599]
    assert kept.values[1] == 9.0 and kept.values[4] == -9.0 and math.isnan(kept.values[5])
    assert kept.timestamps.tolist() == (kept.steps + 1).tolist()


def test_downsampled_read_from_stats_keeps_spikes_nan_and_infinities(store: Store):
    inc = fill(store)
    points = sampled(store, inc)
    assert_keeps_extremes(points, 2000, SPIKES)
    # The same extremes as downsampling every point.
    full = downsample(whole(store, inc), 2000)
    assert np.nanmax(points.values[np.isfinite(points.values)]) == np.nanmax(
        full.values[np.isfinite(full.values)]
    )
    # A zoomed range narrow enough is read point by point, whole.
    zoom = sampled(store, inc, 2000, 77_000, 78_000)
    assert zoom.steps.tolist() == list(range(77_000, 78_001))
    # A range cutting chunks: edges read from points, the rest from stats.
    part = sampled(store, inc, 500, 40_000, 160_000)
    inside = {k: v for k, v in SPIKES.items() if 40_000 <= k <= 160_000}
    assert_keeps_extremes(part, 500, inside)
    assert part.steps[0] == 40_000 and part.steps[-1] == 160_000
    assert store.count(store.segments(inc), "loss", False, 60_000, 60_001) == CHUNK


def test_chunks_from_before_migration_3_read_without_stats(tmp_path: Path):
    path = tmp_path / "old.sqlite"
    store = SqliteStore(path)
    inc = fill(store)
    store.close()
    # Back to version 2: the chunks lose their stats column, as if written before it.
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE chunks DROP COLUMN stats")
        conn.execute("PRAGMA user_version = 2")
    store = SqliteStore(path)
    try:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 5
            assert conn.execute("SELECT COUNT(*) FROM chunks WHERE stats IS NULL").fetchone() == (
                4,
            )
        assert_keeps_extremes(sampled(store, inc), 2000, SPIKES)
        assert sampled(store, inc, 2000, 10, 20).steps.tolist() == list(range(10, 21))
    finally:
        store.close()
    assert STATS_BLOCK * 400 <= N  # the buckets of max_points=2000 are wider than a block
