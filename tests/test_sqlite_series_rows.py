"""The SQLite store finds or creates the series rows of a commit a few hundred names per
statement: every chunk lands on its series' newest generation, new series get generation 0,
and a cold cache (a restarted service) finds the rows an earlier commit made."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from stepstream_server.model import ChunkWrite, WriterCommit
from stepstream_server.store.base import RunCommit
from stepstream_server.store.sqlite import SqliteStore
from store_runs import create_plain_run

INF = math.inf


def _open(path: Path) -> SqliteStore:
    return SqliteStore(path)


def _create(store: SqliteStore) -> str:
    record = create_plain_run(store)
    return record.current_incarnation_id


def _commit(store: SqliteStore, sequence: int, chunks: list[ChunkWrite]) -> None:
    commit = RunCommit("p", "r", 0, chunks, [WriterCommit("p", "r", "w", sequence, "{}")])
    assert store.commit([commit]) == {}


def _chunk(inc: str, name: str, steps: list[float], value: float, **kw: bool) -> ChunkWrite:
    n = len(steps)
    return ChunkWrite(inc, name, False, np.array(steps), np.full(n, value), np.zeros(n), **kw)


def _values(store: SqliteStore, inc: str, name: str) -> list[float]:
    points = store.read(store.segments(inc), name, False, -INF, INF)
    return [float(v) for p in points for v in p.values]


def test_a_thousand_new_series_get_one_row_each(tmp_path: Path) -> None:
    store = _open(tmp_path / "s.sqlite3")
    try:
        inc = _create(store)
        names = [f"layer{k:04d}/grad" for k in range(1_200)]  # more than one IN list
        _commit(store, 1, [_chunk(inc, n, [1.0, 2.0], float(k)) for k, n in enumerate(names)])
        _commit(store, 2, [_chunk(inc, n, [3.0], float(k)) for k, n in enumerate(names)])
        conn = store._conn()
        assert conn.execute("SELECT COUNT(*), MAX(generation) FROM series").fetchone() == (1_200, 0)
        for k in (0, 499, 500, 1_199):
            assert _values(store, inc, names[k]) == [float(k)] * 3
    finally:
        store.close()


def test_a_cold_cache_finds_the_newest_generation(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = _open(path)
    try:
        inc = _create(store)
        _commit(store, 1, [_chunk(inc, "loss", [1.0, 2.0], 1.0), _chunk(inc, "lr", [1.0], 5.0)])
        # An overwrite: generation 1 of "loss" hides what came before it.
        _commit(store, 2, [_chunk(inc, "loss", [0.0], 2.0, new_generation=True)])
    finally:
        store.close()
    store = _open(path)  # nothing cached
    try:
        _commit(
            store,
            3,
            [
                _chunk(inc, "loss", [1.0], 3.0),  # joins generation 1
                _chunk(inc, "lr", [2.0], 6.0),
                _chunk(inc, "new", [0.0], 7.0),
            ],
        )
        assert _values(store, inc, "loss") == [2.0, 3.0]
        assert _values(store, inc, "lr") == [5.0, 6.0]
        assert _values(store, inc, "new") == [7.0]
        rows = store._conn().execute(
            "SELECT name, generation, COUNT(*) FROM series GROUP BY name, generation ORDER BY 1, 2"
        )
        assert rows.fetchall() == [("loss", 0, 1), ("loss", 1, 1), ("lr", 0, 1), ("new", 0, 1)]
    finally:
        store.close()
