"""The embedded default store: SQLite in WAL mode, points stored column-wise in chunks.

A group commit writes one staged row per run part; a flusher rewrites staged rows as one chunk
row per series (packed steps, values and timestamps), and until then the memtable serves them
as virtual chunks (docs/staging.md). Chunk IDs are reserved in commit order, and a series'
steps grow with its chunk IDs (the ordering rule guarantees it), so a view is a list of
(incarnation, step cap, chunk cap) segments and reading is a range scan per segment.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import errors
from ..limits import SERIES_ID_CACHE
from ..model import (
    Incarnation,
    Origin,
    RunRecord,
    RunState,
    Segment,
    SeriesPoints,
)
from . import memtable, parts_rule, wal
from .base import Refused, RunCommit, StoreUnavailable
from .codec import (
    ACK_RETENTION,
    SummaryPiece,
    chunk_rows,
    floor_of,
    fold_visible,
    incarnation_from_row,
    own_generation,
    points_of,
    run_changes,
    sampled_points,
    summary_columns,
    summary_piece,
    view_segments,
)
from .lru import LruCache
from .memtable import Memtable, Piece, Staged
from .schema import SchemaTooNew
from .tokens import SQLITE_MIGRATION as TOKENS_MIGRATION

log = logging.getLogger(__name__)

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS runs (
    project TEXT NOT NULL,
    run_id TEXT NOT NULL,
    experiment TEXT NOT NULL,
    state INTEGER NOT NULL,
    tags TEXT NOT NULL,
    description TEXT NOT NULL,
    config TEXT NOT NULL,
    current_incarnation TEXT NOT NULL,
    failure_reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    vals TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (project, run_id)
);
CREATE INDEX IF NOT EXISTS runs_experiment ON runs (project, experiment);
CREATE TABLE IF NOT EXISTS incarnations (
    incarnation_id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    run_id TEXT NOT NULL,
    parent_incarnation TEXT REFERENCES incarnations (incarnation_id),
    fork_step REAL,
    snapshot_chunk INTEGER,
    origin INTEGER NOT NULL,
    created_at REAL NOT NULL,
    archived INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS incarnations_run ON incarnations (project, run_id);
CREATE TABLE IF NOT EXISTS series (
    series_id INTEGER PRIMARY KEY,
    incarnation_id TEXT NOT NULL REFERENCES incarnations (incarnation_id),
    name TEXT NOT NULL,
    is_string INTEGER NOT NULL,
    -- Bumped by every overwrite: a generation hides the older ones and everything inherited.
    generation INTEGER NOT NULL DEFAULT 0,
    -- The first chunk of the generation: a snapshot older than it still sees the one before.
    created_chunk INTEGER NOT NULL DEFAULT 0,
    UNIQUE (incarnation_id, is_string, name, generation)
);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL REFERENCES series (series_id),
    min_step REAL NOT NULL,
    max_step REAL NOT NULL,
    n INTEGER NOT NULL,
    steps BLOB NOT NULL,
    vals BLOB NOT NULL,
    ts BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_series ON chunks (series_id, chunk_id);
CREATE TABLE IF NOT EXISTS writers (
    project TEXT NOT NULL,
    run_id TEXT NOT NULL,
    writer_id TEXT NOT NULL,
    last_sequence INTEGER NOT NULL,
    PRIMARY KEY (project, run_id, writer_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS acks (
    project TEXT NOT NULL,
    run_id TEXT NOT NULL,
    writer_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (project, run_id, writer_id, sequence)
) WITHOUT ROWID;
"""

# Schema version N is reached by running MIGRATIONS[N - 1]; PRAGMA user_version records it.
# A file from before versioning (tables, user_version 0) is version 1.
MIGRATIONS = (
    SCHEMA_V1,
    "ALTER TABLE runs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;",
    # Per-block min, max, first, last and NaN points of float chunks (codec.chunk_stats); NULL
    # for chunks written before, which reads decode whole.
    "ALTER TABLE chunks ADD COLUMN stats BLOB;",
    # Access tokens, hashed (store/tokens.py).
    TOKENS_MIGRATION,
    # The staged log (docs/staging.md): a row per run part of a group commit, keyed by the
    # first chunk ID it reserved, and the last row a flush rewrote as chunks.
    """
    CREATE TABLE IF NOT EXISTS staged (
        first_chunk INTEGER PRIMARY KEY,
        pieces INTEGER NOT NULL,
        points INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS staging (flushed_through INTEGER NOT NULL);
    INSERT INTO staging (flushed_through) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM staging);
    """,
)


class SqliteStore:
    """`Store` on one SQLite file in WAL mode; each thread gets its own connection."""

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        self.path = path
        self._synchronous = synchronous
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        # (incarnation, is_string, name) -> series_id; only the committing thread writes it.
        # Recently written series' IDs; bounded (a wide run must not grow the service).
        self._series_ids: LruCache[tuple[str, bool, str], int] = LruCache(SERIES_ID_CACHE)
        self._checkpointer = wal.Checkpointer(path, synchronous)
        # Held across a commit, a fork or a flush (BEGIN .. COMMIT and the memtable after it),
        # always before SQLite's write lock (docs/staging.md, Commit).
        self._writing = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time
        self._memtable = Memtable()
        self._flusher = memtable.Flusher()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._owner_lock = _take_owner_lock(path)  # one serving store per file
        self._refused_flush = False  # logged once (docs/staging.md, One owner)
        try:
            self._migrate()
            self._next_chunk = self._open_staged()
        except BaseException:
            self._owner_lock.close()
            raise

    def _open_staged(self) -> int:
        """Replay the staged rows into the memtable; the first chunk ID free to reserve."""
        conn = self._conn()
        now = time.monotonic()
        for first_chunk, body in conn.execute(
            "SELECT first_chunk, body FROM staged ORDER BY first_chunk"
        ):
            self._memtable.add(first_chunk, bytes(body), now)
        if self._memtable.pieces:
            self._flusher.poke(self)
        top = conn.execute(
            "SELECT MAX(COALESCE((SELECT MAX(chunk_id) FROM chunks), 0),"
            " COALESCE((SELECT MAX(first_chunk + pieces - 1) FROM staged), 0),"
            " COALESCE((SELECT MAX(snapshot_chunk) FROM incarnations), 0),"
            " COALESCE((SELECT MAX(created_chunk) FROM series), 0))"
        ).fetchone()[0]
        return int(top) + 1

    def _migrate(self) -> None:
        with self._write() as conn:
            _run_migrations(conn, self.path)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
            wal.configure(conn)
            self._local.conn = conn
            with self._guard:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises
        (COMMIT itself included: a COMMIT that failed on a full disk leaves the transaction
        open, and every later BEGIN would fail). Transient failures leave as
        `StoreUnavailable`."""
        try:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    # Already rolled back by SQLite for some errors: harmless then.
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if _transient(exc):
                raise StoreUnavailable(exc) from exc
            raise

    def interrupt(self) -> None:
        with self._guard:
            for conn in self._connections:
                conn.interrupt()

    def close(self) -> None:
        self._flusher.stop()
        try:
            self.flush()  # the next open then has nothing to replay
        except (sqlite3.Error, StoreUnavailable) as exc:
            log.warning("flushing staged points at close failed (kept staged): %s", exc)
        self._checkpointer.stop()
        with self._guard:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
        self._owner_lock.close()  # releases the flock

    # -- runs -------------------------------------------------------------------------------

    def create_run(
        self,
        *,
        project: str,
        run_id: str,
        experiment: str,
        tags: Sequence[str],
        description: str,
        config: dict[str, Any],
        values: dict[str, Any],
        incarnation_id: str,
        parent: Incarnation | None,
        fork_step: float | None,
        now: float,
    ) -> RunRecord:
        try:
            with self._writing, self._write() as conn:
                conn.execute(
                    "INSERT INTO runs (project, run_id, experiment, state, tags, description, config,"
                    " current_incarnation, created_at, updated_at, vals) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        project,
                        run_id,
                        experiment,
                        int(RunState.RUNNING),
                        json.dumps(sorted(set(tags))),
                        description,
                        json.dumps(config),
                        incarnation_id,
                        now,
                        now,
                        json.dumps(values),
                    ),
                )
                self._insert_incarnation(
                    conn,
                    incarnation_id=incarnation_id,
                    project=project,
                    run_id=run_id,
                    parent=parent,
                    fork_step=fork_step,
                    origin=Origin.FORKED if parent else Origin.CREATED,
                    now=now,
                )
        except sqlite3.IntegrityError:
            raise errors.already_exists(
                "RUN_ALREADY_EXISTS",
                f"run {run_id!r} already exists in project {project!r}",
                project=project,
                run_id=run_id,
            ) from None
        record = self.get_run(project, run_id)
        assert record is not None
        return record

    def _insert_incarnation(
        self,
        conn: sqlite3.Connection,
        *,
        incarnation_id: str,
        project: str,
        run_id: str,
        parent: Incarnation | None,
        fork_step: float | None,
        origin: Origin,
        now: float,
    ) -> None:
        # Under the writer lock: no chunk ID can be reserved between this and the insert.
        snapshot = None if parent is None else self._next_chunk - 1
        conn.execute(
            "INSERT INTO incarnations (incarnation_id, project, run_id, parent_incarnation,"
            " fork_step, snapshot_chunk, origin, created_at) VALUES (?,?,?,?,?,?,?,?)",
            (
                incarnation_id,
                project,
                run_id,
                parent.incarnation_id if parent else None,
                fork_step,
                snapshot,
                int(origin),
                now,
            ),
        )

    def add_incarnation(
        self,
        *,
        project: str,
        run_id: str,
        incarnation_id: str,
        fork_step: float,
        origin: Origin,
        config: dict[str, Any],
        now: float,
    ) -> RunRecord:
        with self._writing, self._write() as conn:
            row = conn.execute(
                "SELECT current_incarnation, config FROM runs WHERE project = ? AND run_id = ?",
                (project, run_id),
            ).fetchone()
            if row is None:
                raise errors.run_not_found(project, run_id)
            parent = self.get_incarnation(row[0])
            assert parent is not None
            config = {**json.loads(row[1]), **config}
            self._insert_incarnation(
                conn,
                incarnation_id=incarnation_id,
                project=project,
                run_id=run_id,
                parent=parent,
                fork_step=fork_step,
                origin=origin,
                now=now,
            )
            conn.execute(
                "UPDATE incarnations SET archived = 1 WHERE incarnation_id = ?",
                (parent.incarnation_id,),
            )
            conn.execute(
                "UPDATE runs SET current_incarnation = ?, updated_at = ?, config = ?, state = ?,"
                " failure_reason = '', fence = fence + 1 WHERE project = ? AND run_id = ?",
                (incarnation_id, now, json.dumps(config), int(RunState.RUNNING), project, run_id),
            )
        record = self.get_run(project, run_id)
        assert record is not None
        return record

    def get_run(self, project: str, run_id: str) -> RunRecord | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE project = ? AND run_id = ?",
                (project, run_id),
            )
            .fetchone()
        )
        return None if row is None else self._run_from_row(row)

    def list_runs(self, project: str, experiment: str) -> list[RunRecord]:
        if experiment:
            rows = self._conn().execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE project = ? AND experiment = ? ORDER BY rowid",
                (project, experiment),
            )
        else:
            rows = self._conn().execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE project = ? ORDER BY rowid", (project,)
            )
        return [self._run_from_row(row) for row in rows.fetchall()]

    def list_projects(self) -> list[str]:
        rows = self._conn().execute("SELECT DISTINCT project FROM runs ORDER BY project")
        return [str(r[0]) for r in rows]

    def experiment_head(self, project: str, experiment: str) -> RunRecord | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE project = ? AND experiment = ?"
                " ORDER BY rowid DESC LIMIT 1",
                (project, experiment),
            )
            .fetchone()
        )
        return None if row is None else self._run_from_row(row)

    def update_run(
        self,
        project: str,
        run_id: str,
        *,
        now: float,
        state: RunState | None = None,
        tags: Sequence[str] | None = None,
        config: dict[str, Any] | None = None,
        description: str | None = None,
        failure_reason: str | None = None,
        values: dict[str, Any] | None = None,
    ) -> RunRecord:
        sets, args = run_changes(
            "?",
            now=now,
            state=None if state is None else int(state),
            tags=tags,
            config=config,
            description=description,
            failure_reason=failure_reason,
            values=values,
        )
        conn = self._conn()
        cur = conn.execute(
            f"UPDATE runs SET {sets} WHERE project = ? AND run_id = ?",
            (*args, project, run_id),
        )
        if cur.rowcount == 0:
            raise errors.run_not_found(project, run_id)
        record = self.get_run(project, run_id)
        assert record is not None
        return record

    def _run_from_row(self, row: tuple[Any, ...]) -> RunRecord:
        (
            project,
            run_id,
            experiment,
            state,
            tags,
            description,
            config,
            current,
            failure,
            created,
            updated,
            vals,
            head,
            fence,
        ) = row
        incarnations = tuple(
            incarnation_from_row(r)
            for r in self._conn().execute(
                f"SELECT {_INCARNATION_COLUMNS} FROM incarnations i"
                " WHERE i.project = ? AND i.run_id = ? ORDER BY i.rowid",
                (project, run_id),
            )
        )
        return RunRecord(
            project=project,
            run_id=run_id,
            experiment=experiment,
            state=RunState(state),
            tags=tuple(json.loads(tags)),
            description=description,
            config=json.loads(config),
            current_incarnation_id=current,
            created_at=created,
            updated_at=updated,
            failure_reason=failure,
            incarnations=incarnations,
            values=json.loads(vals),
            experiment_head=bool(head),
            fence=fence,
        )

    def get_incarnation(self, incarnation_id: str) -> Incarnation | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {_INCARNATION_COLUMNS} FROM incarnations i WHERE i.incarnation_id = ?",
                (incarnation_id,),
            )
            .fetchone()
        )
        return None if row is None else incarnation_from_row(row)

    # -- ingest -----------------------------------------------------------------------------

    def writer_sequence(self, project: str, run_id: str, writer_id: str) -> int:
        row = (
            self._conn()
            .execute(
                "SELECT last_sequence FROM writers WHERE project = ? AND run_id = ? AND writer_id = ?",
                (project, run_id, writer_id),
            )
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    def writer_outcome(
        self, project: str, run_id: str, writer_id: str, sequence: int
    ) -> str | None:
        return _outcome(self._conn(), project, run_id, writer_id, sequence)

    def commit(self, parts: Sequence[RunCommit]) -> Refused:
        # Series IDs cached by this transaction, with what they replaced: undone on failure.
        undo: dict[tuple[str, bool, str], int | None] = {}
        refused: Refused = {}
        staged: list[tuple[int, bytes]] = []
        if self._memtable.over_bound():
            # Flushes fail or fall behind: refuse (the worker retries with backoff) rather
            # than grow without limit (docs/staging.md, The hard bound).
            self._flusher.poke(self)
            raise StoreUnavailable(
                RuntimeError(
                    f"the staged points are over their bound ({self._memtable.points} points,"
                    f" {self._memtable.pieces} pieces) until a flush succeeds"
                )
            )
        if any(memtable.is_long(p.chunks) and self._staged_series(p) for p in parts):
            # Its series' staged pieces go first, so that it can go straight to chunk rows
            # (docs/staging.md, Long parts): a long part staged would keep them staged.
            self.flush()
        with self._writing:
            reserved = self._next_chunk
            try:
                with self._write() as conn:
                    acks = []
                    last: dict[tuple[str, str, str], int] = {}
                    for part in parts:
                        verdict = self._refusal(conn, part)
                        if verdict is not None:
                            refused[(part.project, part.run_id)] = verdict
                            continue
                        if part.chunks and (row := self._write_part(conn, part, undo)):
                            staged.append(row)
                        for w in part.writers:
                            key3 = (w.project, w.run_id, w.writer_id)
                            if parts_rule.advances(w):
                                last[key3] = max(last.get(key3, 0), w.sequence)
                            acks.append((*key3, w.sequence, w.outcome_json))
                    conn.executemany(
                        "INSERT INTO acks (project, run_id, writer_id, sequence, outcome)"
                        " VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET outcome = excluded.outcome",
                        acks,  # a part's progress
                    )
                    conn.executemany(
                        "INSERT INTO writers (project, run_id, writer_id, last_sequence)"
                        " VALUES (?,?,?,?)"
                        " ON CONFLICT DO UPDATE SET last_sequence = excluded.last_sequence",
                        [(*k, seq) for k, seq in last.items()],
                    )
                    conn.executemany(
                        "DELETE FROM acks WHERE project = ? AND run_id = ? AND writer_id = ?"
                        " AND sequence <= ?",
                        [
                            (*k, seq - ACK_RETENTION)
                            for k, seq in last.items()
                            if seq > ACK_RETENTION
                        ],
                    )
            except BaseException:
                self._next_chunk = reserved
                for key, previous in undo.items():
                    if previous is None:
                        self._series_ids.pop(key, None)
                    else:
                        self._series_ids[key] = previous
                raise
            now = time.monotonic()
            for first_chunk, body in staged:  # committed: now readable (docs/staging.md)
                self._memtable.add(first_chunk, body, now)
        if staged:
            self._flusher.poke(self)
        self._checkpointer.poke()  # the WAL is copied back off this thread (store/wal.py)
        return refused

    def _write_part(
        self,
        conn: sqlite3.Connection,
        part: RunCommit,
        undo: dict[tuple[str, bool, str], int | None],
    ) -> tuple[int, bytes] | None:
        """Write the part's points reserving a chunk ID per series: as one staged row ((its
        first chunk ID, its body) returned), or straight as chunk rows when its series are long
        and none has a staged piece (docs/staging.md, Long parts)."""
        # A series' chunk of its current generation comes before any new generation of it in
        # a part (verdict._apply), so these IDs hold for them.
        ids = iter(
            self._series_ids_for(
                conn,
                [
                    (c.incarnation_id, c.is_string, c.name)
                    for c in part.chunks
                    if not c.new_generation
                ],
                undo,
            )
        )
        first_chunk = self._next_chunk
        entries = []
        for i, chunk in enumerate(part.chunks):
            if chunk.new_generation:
                # Its first piece's ID decides which snapshots see it.
                key = (chunk.incarnation_id, chunk.is_string, chunk.name)
                series_id = self._new_generation(conn, key, undo)
                conn.execute(
                    "UPDATE series SET created_chunk = ? WHERE series_id = ?",
                    (first_chunk + i, series_id),
                )
            else:
                series_id = next(ids)
            entries.append((series_id, chunk))
        self._next_chunk += len(entries)
        points = sum(len(c.steps) for c in part.chunks)
        if memtable.is_long(part.chunks) and not any(
            self._memtable.holds(sid) for sid, _ in entries
        ):
            packed = chunk_rows(part.chunks)
            conn.executemany(
                _INSERT_CHUNK,
                [
                    (first_chunk + i, sid, *cols)
                    for i, ((sid, _), cols) in enumerate(zip(entries, packed, strict=True))
                ],
            )
            return None
        body = memtable.encode_row(entries)
        conn.execute(
            "INSERT INTO staged (first_chunk, pieces, points, body) VALUES (?,?,?,?)",
            (first_chunk, len(entries), points, body),
        )
        return first_chunk, body

    def _staged_series(self, part: RunCommit) -> bool:
        """Whether a series of the part whose ID is cached has a staged piece."""
        for c in part.chunks:
            sid = self._series_ids.get((c.incarnation_id, c.is_string, c.name))
            if sid is not None and self._memtable.holds(sid):
                return True
        return False

    def flush_due(self) -> bool:
        return self._memtable.due(time.monotonic())

    def flush(self) -> None:
        """Rewrite every row staged now as one chunk per series (docs/staging.md, The flush)."""
        with self._flushing:
            staged = self._memtable.take()
            if not staged:
                return
            low, through = staged[0][0], staged[-1][0]
            cuts = self._snapshots_from(self._conn(), low)
            rows = memtable.merged_chunks(staged, cuts)
            with self._writing, self._write() as conn:
                self._check_unflushed(conn, [row for row, _ in staged])
                now_cuts = self._snapshots_from(conn, low)
                if now_cuts != cuts:  # a fork landed meanwhile: cut at its snapshot too
                    rows = memtable.merged_chunks(staged, now_cuts)
                conn.executemany(_INSERT_CHUNK, rows)
                conn.execute("DELETE FROM staged WHERE first_chunk <= ?", (through,))
                conn.execute("UPDATE staging SET flushed_through = ?", (through,))
            self._memtable.drop(through)
        self._checkpointer.poke()

    def _check_unflushed(self, conn: sqlite3.Connection, rows: list[int]) -> None:
        """Refuse to flush unless the file still holds exactly these rows staged and no flush
        passed them: another process must never have its flush repeated here (docs/staging.md,
        One owner)."""
        through = int(conn.execute("SELECT flushed_through FROM staging").fetchone()[0])
        present = [
            int(r[0])
            for r in conn.execute(
                "SELECT first_chunk FROM staged WHERE first_chunk BETWEEN ? AND ?"
                " ORDER BY first_chunk",
                (rows[0], rows[-1]),
            )
        ]
        if through < rows[0] and present == rows:
            return
        detail = (
            f"staged rows {rows[0]}..{rows[-1]} were flushed by another process"
            f" (flushed_through {through}, {len(present)} of {len(rows)} rows still staged);"
            " not flushing them again"
        )
        if not self._refused_flush:
            self._refused_flush = True
            log.error("%s: %s", self.path, detail)
        raise StoreUnavailable(RuntimeError(detail))

    @staticmethod
    def _snapshots_from(conn: sqlite3.Connection, low: int) -> list[int]:
        """Every fork's snapshot at or above chunk ID `low`: where a merged chunk is cut."""
        rows = conn.execute(
            "SELECT DISTINCT snapshot_chunk FROM incarnations WHERE snapshot_chunk >= ?"
            " ORDER BY snapshot_chunk",
            (low,),
        )
        return [int(r[0]) for r in rows]

    @staticmethod
    def _refusal(conn: sqlite3.Connection, part: RunCommit) -> int | None:
        """The run's fence when the part must be refused (docs/replicas.md), else None."""
        row = conn.execute(
            "SELECT fence FROM runs WHERE project = ? AND run_id = ?", (part.project, part.run_id)
        ).fetchone()
        fence = -1 if row is None else int(row[0])
        if fence > part.epoch or row is None:
            return fence
        first: dict[str, int] = {}
        for w in part.writers:
            first[w.writer_id] = min(first.get(w.writer_id, w.sequence), w.sequence)
        for writer_id, sequence in first.items():
            stored = conn.execute(
                "SELECT last_sequence FROM writers WHERE project = ? AND run_id = ? AND writer_id = ?",
                (part.project, part.run_id, writer_id),
            ).fetchone()
            if stored is not None and int(stored[0]) >= sequence:
                return fence
        for w in part.writers:  # a part of a batch lands only right after the one before it
            if isinstance(w, parts_rule.PartCommit) and parts_rule.refuses(
                w, _outcome(conn, w.project, w.run_id, w.writer_id, w.sequence)
            ):
                return fence
        return None

    def raise_fence(self, project: str, run_id: str, at_least: int) -> int:
        return self._set_fence(project, run_id, "MAX(fence, ?)", at_least)

    def advance_fence(self, project: str, run_id: str) -> int:
        return self._set_fence(project, run_id, "fence + ?", 1)

    def _set_fence(self, project: str, run_id: str, expression: str, arg: int) -> int:
        with self._write() as conn:
            row = conn.execute(
                f"UPDATE runs SET fence = {expression} WHERE project = ? AND run_id = ?"
                " RETURNING fence",
                (arg, project, run_id),
            ).fetchone()
        if row is None:
            raise errors.run_not_found(project, run_id)
        return int(row[0])

    def _series_ids_for(
        self,
        conn: sqlite3.Connection,
        keys: Sequence[tuple[str, bool, str]],
        undo: dict[tuple[str, bool, str], int | None],
    ) -> list[int]:
        """The current generation's series row of each key, created (generation 0) when
        missing: the ones not cached are looked up and created a few hundred names per
        statement (a wide run's first group has a thousand new series)."""
        ids: dict[tuple[str, bool, str], int] = {}
        missing: dict[tuple[str, bool], dict[str, None]] = {}
        for key in keys:
            found = self._series_ids.get(key)
            if found is None:
                missing.setdefault((key[0], key[1]), {})[key[2]] = None
            else:
                ids[key] = found
        for (incarnation_id, is_string), wanted in missing.items():
            names = list(wanted)
            known = _series_rows(conn, incarnation_id, is_string, names)
            new = [name for name in names if name not in known]
            if new:
                conn.executemany(
                    "INSERT INTO series (incarnation_id, name, is_string) VALUES (?,?,?)",
                    [(incarnation_id, name, int(is_string)) for name in new],
                )
                known.update(_series_rows(conn, incarnation_id, is_string, new))
            for name in names:
                key = (incarnation_id, is_string, name)
                undo.setdefault(key, self._series_ids.get(key))
                self._series_ids[key] = ids[key] = known[name]
        return [ids[key] for key in keys]

    def _new_generation(
        self,
        conn: sqlite3.Connection,
        key: tuple[str, bool, str],
        undo: dict[tuple[str, bool, str], int | None],
    ) -> int:
        incarnation_id, is_string, name = key
        cur = conn.execute(
            "INSERT INTO series (incarnation_id, name, is_string, generation) VALUES (?,?,?,"
            " (SELECT COALESCE(MAX(generation) + 1, 1) FROM series WHERE incarnation_id = ?"
            " AND is_string = ? AND name = ?))",
            (incarnation_id, name, int(is_string), incarnation_id, int(is_string), name),
        )
        series_id = int(cur.lastrowid or 0)
        undo.setdefault(key, self._series_ids.get(key))
        self._series_ids[key] = series_id
        return series_id

    # -- views ------------------------------------------------------------------------------

    def segments(self, incarnation_id: str, *, own_only: bool = False) -> list[Segment]:
        """The view of an incarnation, oldest ancestor first, each hop cut at its fork step and
        at the chunk snapshot taken when the child was created."""
        if own_only:
            return [Segment(incarnation_id)]
        return view_segments(incarnation_id, self.get_incarnation)

    def _visible(
        self, segments: Sequence[Segment], keys: Sequence[tuple[str, bool]] | None = None
    ) -> dict[tuple[str, bool], list[tuple[Segment, int, int]]]:
        """Per series of the view (every one, or those of `keys`): (segment, series_id,
        generation), oldest first. Walking from the viewed incarnation up, each hop shows the
        newest generation its snapshot can see; a generation above 0 was an overwrite and hides
        everything older."""
        conn = self._conn()

        def rows(seg: Segment) -> Iterator[Any]:
            args = (seg.incarnation_id, seg.chunk_cap, seg.chunk_cap)
            if keys is None:
                yield from conn.execute(_VISIBLE, args)
                return
            for is_string in (False, True):
                names = sorted({n for n, k in keys if k == is_string})
                for i in range(0, len(names), _IN_BATCH):
                    part = names[i : i + _IN_BATCH]
                    yield from conn.execute(
                        _VISIBLE + f" AND is_string = ? AND name IN ({','.join('?' * len(part))})",
                        (*args, int(is_string), *part),
                    )

        return fold_visible((seg, rows(seg)) for seg in reversed(segments))

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[tuple[sqlite3.Connection, Staged]]:
        """One read transaction (one SQLite snapshot for every statement of a read) and the
        staged pieces it must add to the chunk rows: the memtable is copied before the
        snapshot begins, and pieces of rows the snapshot saw flushed are left out
        (docs/staging.md, Reads)."""
        pieces = self._memtable.view()
        conn = self._conn()
        if conn.in_transaction:  # already inside one (a write's own reads): its snapshot
            yield conn, Staged(pieces, _flushed_through(conn))
            return
        conn.execute("BEGIN")
        try:
            yield conn, Staged(pieces, _flushed_through(conn))
        finally:
            if conn.in_transaction:  # an interrupted statement may have ended it already
                conn.execute("COMMIT")

    def floors(
        self, segments: Sequence[Segment], keys: Sequence[tuple[str, bool]] | None = None
    ) -> dict[str, tuple[float, str]]:
        """For every series visible in the view (or those of `keys`): its largest step and that
        point's value token. The newest segment with a visible point wins: a descendant's own
        points always lie above what it inherits."""
        result: dict[str, tuple[float, str]] = {}
        with self._snapshot() as (conn, staged):
            for (name, is_string), parts in self._visible(segments, keys).items():
                for seg, series_id, _ in reversed(parts):
                    pieces = staged.of(series_id, seg.chunk_cap, hi=seg.step_cap)
                    if pieces:  # above every chunk row of the series
                        p = pieces[-1]
                        row = (p.n, p.steps, p.vals)
                    else:
                        row = conn.execute(
                            "SELECT n, steps, vals FROM chunks WHERE series_id = ?"
                            " AND chunk_id <= ? AND min_step <= ? ORDER BY chunk_id DESC LIMIT 1",
                            (series_id, seg.chunk_cap, _sql_real(seg.step_cap)),
                        ).fetchone()
                    if row is None:
                        continue
                    n, steps_blob, vals_blob = row
                    key, floor = floor_of(name, is_string, n, steps_blob, vals_blob, seg.step_cap)
                    result[key] = floor
                    break
        return result

    def series_names(
        self, segments: Sequence[Segment], after: tuple[str, bool] | None, limit: int
    ) -> list[tuple[str, bool]]:
        """The first `limit` (name, is_string) of series rows in the view's incarnations, in
        order, after `after`: candidates for a page (series_keys says which are visible)."""
        conn = self._conn()
        found: set[tuple[str, bool]] = set()
        for seg in segments:
            for is_string in (False, True):
                # (name, is_string) > after: a float series needs a greater name; a string
                # series may share the name of a float `after`.
                op = ">" if after is None or not is_string or after[1] else ">="
                rows = conn.execute(
                    "SELECT DISTINCT name FROM series WHERE incarnation_id = ? AND is_string = ?"
                    f" AND name {op} ? ORDER BY name LIMIT ?",
                    (seg.incarnation_id, int(is_string), "" if after is None else after[0], limit),
                )
                found.update((str(name), is_string) for (name,) in rows)
        return sorted(found)[:limit]

    def series_keys(
        self, segments: Sequence[Segment], keys: Sequence[tuple[str, bool]] | None = None
    ) -> list[tuple[str, bool, int]]:
        """(name, is_string, generation of the viewed incarnation) of every series (or those of
        `keys`) with a visible point: which parts have one, a few hundred per query."""
        with self._snapshot() as (conn, staged):
            visible = self._visible(segments, keys)
            shown: set[tuple[int, int]] = set()
            for hop, (seg, ids) in enumerate(_ids_by_hop(segments, visible)):
                shown.update(
                    (hop, sid) for sid in ids if staged.of(sid, seg.chunk_cap, hi=seg.step_cap)
                )
                for i in range(0, len(ids), _IN_BATCH):
                    part = ids[i : i + _IN_BATCH]
                    rows = conn.execute(
                        f"SELECT DISTINCT series_id FROM chunks WHERE series_id IN"
                        f" ({','.join('?' * len(part))}) AND chunk_id <= ? AND min_step <= ?",
                        (*part, seg.chunk_cap, _sql_real(seg.step_cap)),
                    )
                    shown.update((hop, int(series_id)) for (series_id,) in rows)
        hops = {id(seg): hop for hop, seg in enumerate(segments)}
        return sorted(
            (name, is_string, own_generation(parts, segments))
            for (name, is_string), parts in visible.items()
            if any((hops[id(seg)], sid) in shown for seg, sid, _ in parts)
        )

    def read(
        self,
        segments: Sequence[Segment],
        name: str,
        is_string: bool,
        step_min: float,
        step_max: float,
        generation: int | None = None,
    ) -> Iterator[SeriesPoints]:
        found: list[tuple[float, Any]] = []  # (step cap, chunk row), in view order
        with self._snapshot() as (conn, staged):
            if generation is not None:
                row = conn.execute(
                    "SELECT series_id FROM series WHERE incarnation_id = ? AND is_string = ?"
                    " AND name = ? AND generation = ?",
                    (segments[-1].incarnation_id, int(is_string), name, generation),
                ).fetchone()
                parts = [] if row is None else [(segments[-1], int(row[0]), generation)]
            else:
                parts = self._parts(segments, name, is_string)
            for seg, series_id, _ in parts:
                hi = min(step_max, seg.step_cap)
                rows = conn.execute(
                    "SELECT n, steps, vals, ts FROM chunks WHERE series_id = ? AND chunk_id <= ?"
                    " AND min_step <= ? AND max_step >= ? ORDER BY chunk_id",
                    (series_id, seg.chunk_cap, _sql_real(hi), _sql_real(step_min)),
                )
                found.extend((hi, row) for row in rows)
                found.extend(
                    (hi, p.points) for p in staged.of(series_id, seg.chunk_cap, step_min, hi)
                )
        for hi, row in found:
            points = points_of(name, is_string, row, step_min, hi)
            if points is not None:
                yield points

    def read_summary_pieces(
        self, segments: Sequence[Segment], keys: Sequence[tuple[str, bool]]
    ) -> dict[tuple[str, bool], tuple[int, list[SummaryPiece]]]:
        """The visible parts of every key, then their chunks a few hundred series per query
        and segment (a query per series made ListSeries pages slow), then their staged
        pieces (read from their points: they have no stats)."""
        chunks: dict[tuple[int, int], list[Any]] = {}
        with self._snapshot() as (conn, staged):
            visible = self._visible(segments, keys)
            for hop, (seg, ids) in enumerate(_ids_by_hop(segments, visible)):
                cap = _sql_real(seg.step_cap)
                for i in range(0, len(ids), _IN_BATCH):
                    part = ids[i : i + _IN_BATCH]
                    rows = conn.execute(
                        f"SELECT series_id, {summary_columns('', '?')} FROM chunks WHERE series_id"
                        f" IN ({','.join('?' * len(part))}) AND chunk_id <= ? AND min_step <= ?"
                        " ORDER BY series_id, chunk_id",
                        (cap, cap, *part, seg.chunk_cap, cap),
                    )
                    for series_id, *row in rows:
                        chunks.setdefault((hop, series_id), []).append(row)
                for sid in ids:
                    for p in staged.of(sid, seg.chunk_cap, hi=seg.step_cap):
                        chunks.setdefault((hop, sid), []).append([p.n, None, p.steps, p.vals])
        out: dict[tuple[str, bool], tuple[int, list[SummaryPiece]]] = {}
        hops = {id(seg): hop for hop, seg in enumerate(segments)}
        for (name, is_string), parts in visible.items():
            pieces = [
                piece
                for seg, series_id, _ in parts
                for row in chunks.get((hops[id(seg)], series_id), [])
                if (piece := summary_piece(is_string, seg.step_cap, row)) is not None
            ]
            if pieces:
                out[(name, is_string)] = (own_generation(parts, segments), pieces)
        return out

    def _parts(
        self, segments: Sequence[Segment], name: str, is_string: bool
    ) -> list[tuple[Segment, int, int]]:
        return self._visible(segments, [(name, is_string)]).get((name, is_string), [])

    def count(
        self,
        segments: Sequence[Segment],
        name: str,
        is_string: bool,
        step_min: float,
        step_max: float,
    ) -> int:
        total = 0
        with self._snapshot() as (conn, staged):
            for seg, series_id, _ in self._parts(segments, name, is_string):
                hi = min(step_max, seg.step_cap)
                total += conn.execute(
                    "SELECT COALESCE(SUM(n), 0) FROM chunks WHERE series_id = ? AND chunk_id <= ?"
                    " AND min_step <= ? AND max_step >= ?",
                    (series_id, seg.chunk_cap, _sql_real(hi), _sql_real(step_min)),
                ).fetchone()[0]
                total += sum(p.n for p in staged.of(series_id, seg.chunk_cap, step_min, hi))
        return int(total)

    def read_sampled(
        self, segments: Sequence[Segment], name: str, step_min: float, step_max: float
    ) -> Iterator[SeriesPoints]:
        def fetch(key: int | Piece) -> tuple[int, bytes, bytes, bytes]:
            if isinstance(key, Piece):
                return key.points
            row = (
                self._conn()
                .execute("SELECT n, steps, vals, ts FROM chunks WHERE chunk_id = ?", (key,))
                .fetchone()
            )  # a chunk row never changes: read outside the snapshot is the same
            return (row[0], row[1], row[2], row[3])

        found: list[tuple[float, list[Any]]] = []  # (step cap, its rows), in view order
        with self._snapshot() as (conn, staged):
            for seg, series_id, _ in self._parts(segments, name, False):
                hi = min(step_max, seg.step_cap)
                rows: list[Any] = conn.execute(
                    "SELECT chunk_id, n, min_step, max_step, stats FROM chunks WHERE series_id = ?"
                    " AND chunk_id <= ? AND min_step <= ? AND max_step >= ? ORDER BY chunk_id",
                    (series_id, seg.chunk_cap, _sql_real(hi), _sql_real(step_min)),
                ).fetchall()
                rows.extend(
                    (p, p.n, p.min_step, p.max_step, None)
                    for p in staged.of(series_id, seg.chunk_cap, step_min, hi)
                )
                found.append((hi, rows))
        for hi, rows in found:
            yield from sampled_points(name, rows, step_min, hi, fetch)


# The newest generation of each series of one incarnation that a snapshot (chunk cap) sees.
_VISIBLE = (
    "SELECT name, is_string, series_id, generation FROM series s WHERE"
    " incarnation_id = ? AND created_chunk <= ? AND generation = (SELECT"
    " MAX(g.generation) FROM series g WHERE g.incarnation_id = s.incarnation_id"
    " AND g.is_string = s.is_string AND g.name = s.name AND g.created_chunk <= ?)"
)
# Names per `IN (...)` list: far below SQLite's limit on bound parameters.
_IN_BATCH = 500

_INSERT_CHUNK = (
    "INSERT INTO chunks (chunk_id, series_id, min_step, max_step, n, steps, vals, ts, stats)"
    " VALUES (?,?,?,?,?,?,?,?,?)"
)


_RUN_COLUMNS = (
    "project, run_id, experiment, state, tags, description, config, current_incarnation,"
    " failure_reason, created_at, updated_at, vals, experiment != '' AND run_id = (SELECT"
    " h.run_id FROM runs h WHERE h.project = runs.project AND h.experiment = runs.experiment"
    " ORDER BY h.rowid DESC LIMIT 1), fence"
)
_INCARNATION_COLUMNS = (
    "i.incarnation_id, i.project, i.run_id, i.parent_incarnation,"
    " (SELECT p.run_id FROM incarnations p WHERE p.incarnation_id = i.parent_incarnation),"
    " i.fork_step, i.snapshot_chunk, i.origin, i.created_at, i.archived"
)


# Errors after which the same transaction may succeed later: the disk filled up (or came back),
# an I/O error, a lock held past busy_timeout, the file not openable right now. Constraint
# violations, misuse and corruption are not among them.
_TRANSIENT = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOMEM,
    }
)


def _ids_by_hop(
    segments: Sequence[Segment], visible: dict[tuple[str, bool], list[tuple[Segment, int, int]]]
) -> list[tuple[Segment, list[int]]]:
    """Each segment of the view with the series ids of its visible parts, sorted."""
    ids: dict[int, set[int]] = {id(seg): set() for seg in segments}
    for parts in visible.values():
        for seg, series_id, _ in parts:
            ids[id(seg)].add(series_id)
    return [(seg, sorted(ids[id(seg)])) for seg in segments]


def _transient(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # raised by the module itself (e.g. "cannot start a transaction")
        return False
    return (code & 0xFF) in _TRANSIENT  # extended codes (SQLITE_IOERR_WRITE, ...) too


def _sql_real(x: float) -> float:
    # SQLite stores inf fine, but keep caps finite-safe for comparisons with REAL columns.
    return (
        1.7976931348623157e308
        if x == math.inf
        else (-1.7976931348623157e308 if x == -math.inf else x)
    )


class StoreLocked(RuntimeError):
    """Another process serves this SQLite file (it holds the owner lock)."""


def owner_lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _take_owner_lock(path: Path) -> Any:
    """An exclusive, non-blocking flock on the sidecar `<file>.lock`, held until close: a
    second serving store of the same file (another `serve`, whatever its --data-dir) fails."""
    lock_path = owner_lock_path(path)
    handle = open(lock_path, "a+b")  # noqa: SIM115 (held for the store's lifetime)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StoreLocked(
            f"the SQLite store {path} is already open in another process"
            f" (it holds {lock_path}); one service owns a SQLite file"
        ) from None
    return handle


def _run_migrations(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to the newest version, in the caller's write transaction."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version == 0 and conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
        version = 1
    if version > len(MIGRATIONS):
        raise SchemaTooNew(str(path), version, len(MIGRATIONS))
    for script in MIGRATIONS[version:]:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")


def migrate(path: Path) -> None:
    """Only the schema migrations, for a tool beside a live service (`stepstream tokens`):
    no owner lock, no staged-row replay, no flush (docs/staging.md, One owner)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("BEGIN IMMEDIATE")
        try:
            _run_migrations(conn, path)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


def _flushed_through(conn: sqlite3.Connection) -> int:
    """The last staged row a flush rewrote as chunks, as this connection's snapshot sees it."""
    return int(conn.execute("SELECT flushed_through FROM staging").fetchone()[0])


def _outcome(
    conn: sqlite3.Connection, project: str, run_id: str, writer_id: str, sequence: int
) -> str | None:
    row = conn.execute(
        "SELECT outcome FROM acks WHERE project = ? AND run_id = ? AND writer_id = ?"
        " AND sequence = ?",
        (project, run_id, writer_id, sequence),
    ).fetchone()
    return None if row is None else str(row[0])


def _series_rows(
    conn: sqlite3.Connection, incarnation_id: str, is_string: bool, names: Sequence[str]
) -> dict[str, int]:
    """The newest generation's series_id of each of these names that has a series row."""
    newest: dict[str, tuple[int, int]] = {}
    for i in range(0, len(names), _IN_BATCH):
        part = names[i : i + _IN_BATCH]
        rows = conn.execute(
            "SELECT name, generation, series_id FROM series WHERE incarnation_id = ?"
            f" AND is_string = ? AND name IN ({','.join('?' * len(part))})",
            (incarnation_id, int(is_string), *part),
        )
        for name, generation, series_id in rows:
            if name not in newest or generation > newest[name][0]:
                newest[name] = (int(generation), int(series_id))
    return {name: series_id for name, (_, series_id) in newest.items()}
