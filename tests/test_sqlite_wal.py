"""The SQLite store's WAL checkpoints run on their own thread (store/wal.py): commits keep only
a high backstop, the checkpointer copies what they wrote into the database file, and closing
the store ends it."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
from stepstream_server.model import ChunkWrite, WriterCommit
from stepstream_server.store import wal
from stepstream_server.store.base import RunCommit
from stepstream_server.store.sqlite import SqliteStore
from store_runs import create_plain_run


def _store_with_run(path: Path) -> tuple[SqliteStore, str]:
    store = SqliteStore(path)
    record = create_plain_run(store)
    return store, record.current_incarnation_id


def _commit(store: SqliteStore, inc: str, sequence: int, series: int = 50) -> None:
    steps = np.arange(sequence * 10.0, sequence * 10.0 + 10)
    chunks = [
        ChunkWrite(inc, f"m{k}", False, steps, np.full(10, float(k)), np.zeros(10))
        for k in range(series)
    ]
    commit = RunCommit("p", "r", 0, chunks, [WriterCommit("p", "r", "w", sequence, "{}")])
    assert store.commit([commit]) == {}


def _wait_covered(store: SqliteStore) -> None:
    """Until a checkpoint covered every commit so far (a wait for an event, not a timing)."""
    checkpointer = store._checkpointer
    while checkpointer.covered < checkpointer.poked:
        time.sleep(0.01)


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqlite-checkpoint"]


def test_commits_leave_checkpoints_to_the_checkpointer(tmp_path: Path) -> None:
    store, _ = _store_with_run(tmp_path / "s.sqlite3")
    try:
        conn = store._conn()
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == wal.BACKSTOP_PAGES
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == wal.JOURNAL_SIZE_LIMIT
    finally:
        store.close()


def test_what_was_committed_reaches_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store, inc = _store_with_run(path)
    store._checkpointer.pages = 1  # copy after every commit
    try:
        for sequence in range(1, 6):
            _commit(store, inc, sequence)
        store.flush()  # the staged rows become one chunk per series (docs/staging.md)
        _wait_covered(store)
        # The database file alone, without its WAL, holds every committed point.
        alone = tmp_path / "alone.sqlite3"
        shutil.copyfile(path, alone)
        with sqlite3.connect(alone) as copy:
            assert copy.execute("SELECT COUNT(*), SUM(n) FROM chunks").fetchone() == (
                50,
                5 * 50 * 10,
            )
            assert copy.execute("SELECT COUNT(*) FROM staged").fetchone()[0] == 0
            assert copy.execute("SELECT MAX(last_sequence) FROM writers").fetchone()[0] == 5
    finally:
        store.close()


def test_uncopied_frames_are_read_from_the_wal_index(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    shm = path.with_name(path.name + "-shm")
    assert wal.uncopied_frames(shm) is None  # no database yet
    store, inc = _store_with_run(path)
    try:
        _commit(store, inc, 1)
        conn = sqlite3.connect(path)
        try:
            frames = wal.uncopied_frames(shm)
            busy, in_log, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            assert busy == 0 and in_log == copied and frames == in_log > 0
            assert wal.uncopied_frames(shm) == 0
        finally:
            conn.close()
    finally:
        store.close()


def test_a_small_commit_is_not_checkpointed_under_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store, inc = _store_with_run(path)
    try:
        _commit(store, inc, 1)  # far below CHECKPOINT_PAGES
        assert not store._checkpointer.due()
        store._checkpointer.pages = 1
        assert store._checkpointer.due()
    finally:
        store.close()


def test_close_ends_the_checkpointer_and_the_store_reads_on(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    before = set(_checkpoint_threads())
    store, inc = _store_with_run(path)
    _commit(store, inc, 1)
    started = set(_checkpoint_threads()) - before
    assert len(started) == 1
    store.close()
    assert not any(t.is_alive() for t in started)
    reopened = SqliteStore(path)
    try:
        assert reopened.writer_sequence("p", "r", "w") == 1
        points = list(reopened.read(reopened.segments(inc), "m3", False, 0.0, 100.0))
        assert [float(v) for p in points for v in p.values] == [3.0] * 10
    finally:
        reopened.close()
