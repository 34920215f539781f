"""The shared store for any number of replicas: PostgreSQL, points stored column-wise in chunks.

The layout and every semantic are those of the SQLite store (sqlite.py): one chunk row per
series per group commit, a view as (incarnation, step cap, chunk cap) segments. Every table of
a run carries the run key (project, run_id), the natural distribution column of a sharded
PostgreSQL, and every statement on run data names it. `commit` follows docs/replicas.md: run
rows locked shared in key order and their fences checked, writer rows locked, then chunks (IDs
from one sequence, taken after the run locks), acknowledgements and writer sequences.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from .. import errors
from ..model import ChunkWrite, Incarnation, Origin, RunRecord, RunState, Segment, SeriesPoints
from . import parts_rule
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
from .pg_analyze import Analyzer
from .schema import SchemaTooNew
from .tokens import POSTGRES_MIGRATION as TOKENS_MIGRATION

Cursor = psycopg.Cursor[TupleRow]
RunKey = tuple[str, str]
SeriesRef = tuple[str, str, int]  # project, run_id, series_id
SeriesKey = tuple[str, str, str, bool, str]  # project, run_id, incarnation_id, is_string, name

# Text columns hold no NUL in PostgreSQL: description and failure reason are stored as JSON
# strings, config, values and tags as JSON text (NaN is valid for Python's json, not for JSONB).
SCHEMA_V1 = """
CREATE TABLE runs (
    project TEXT NOT NULL, run_id TEXT NOT NULL,
    created_seq BIGSERIAL NOT NULL,  -- creation order (SQLite's rowid)
    experiment TEXT NOT NULL, state SMALLINT NOT NULL, tags TEXT NOT NULL,
    description TEXT NOT NULL, config TEXT NOT NULL, current_incarnation TEXT NOT NULL,
    failure_reason TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL, vals TEXT NOT NULL, fence BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (project, run_id)
);
CREATE INDEX runs_created ON runs (project, created_seq);
CREATE INDEX runs_experiment ON runs (project, experiment, created_seq);
CREATE TABLE incarnations (
    project TEXT NOT NULL, run_id TEXT NOT NULL, incarnation_id TEXT NOT NULL,
    created_seq BIGSERIAL NOT NULL,
    parent_incarnation TEXT, parent_run_id TEXT, fork_step DOUBLE PRECISION,
    snapshot_chunk BIGINT, origin SMALLINT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    archived BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (project, run_id, incarnation_id),
    FOREIGN KEY (project, run_id) REFERENCES runs
);
CREATE INDEX incarnations_id ON incarnations (incarnation_id);
CREATE TABLE series (
    project TEXT NOT NULL, run_id TEXT NOT NULL, series_id BIGSERIAL NOT NULL,
    incarnation_id TEXT NOT NULL, is_string BOOLEAN NOT NULL, name TEXT NOT NULL,
    -- Bumped by every overwrite: a generation hides the older ones and everything inherited.
    generation INTEGER NOT NULL DEFAULT 0,
    -- The first chunk of the generation: a snapshot older than it still sees the one before.
    created_chunk BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (project, run_id, series_id),
    UNIQUE (project, run_id, incarnation_id, is_string, name, generation),
    FOREIGN KEY (project, run_id, incarnation_id) REFERENCES incarnations
);
CREATE TABLE chunks (
    project TEXT NOT NULL, run_id TEXT NOT NULL, chunk_id BIGSERIAL NOT NULL,
    series_id BIGINT NOT NULL, min_step DOUBLE PRECISION NOT NULL,
    max_step DOUBLE PRECISION NOT NULL, n INTEGER NOT NULL,
    steps BYTEA NOT NULL, vals BYTEA NOT NULL, ts BYTEA NOT NULL,
    PRIMARY KEY (project, run_id, chunk_id),
    FOREIGN KEY (project, run_id, series_id) REFERENCES series
);
CREATE INDEX chunks_series ON chunks (project, run_id, series_id, chunk_id);
-- Packed float64 columns hardly compress: pglz only costs time (3x a commit), so store them as is.
ALTER TABLE chunks ALTER COLUMN steps SET STORAGE EXTERNAL, ALTER COLUMN vals SET STORAGE EXTERNAL,
    ALTER COLUMN ts SET STORAGE EXTERNAL;
CREATE TABLE writers (
    project TEXT NOT NULL, run_id TEXT NOT NULL, writer_id TEXT NOT NULL,
    last_sequence BIGINT NOT NULL,
    PRIMARY KEY (project, run_id, writer_id)
);
CREATE TABLE acks (
    project TEXT NOT NULL, run_id TEXT NOT NULL, writer_id TEXT NOT NULL,
    sequence BIGINT NOT NULL, outcome TEXT NOT NULL,
    PRIMARY KEY (project, run_id, writer_id, sequence)
);
"""

# Seconds a call waits for a pooled connection (PostgreSQL down: fail, the caller retries).
POOL_TIMEOUT = 10.0


@contextlib.contextmanager
def _classified() -> Iterator[None]:
    """Transient failures leave as `StoreUnavailable`: a lost or killed connection, the server
    shutting down or not accepting connections yet, a full disk, a serialization failure or
    deadlock, no pooled connection in time (all OperationalError), and a standby that took the
    address after a failover (read-only). Errors in what was asked (constraints, syntax) stay."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as exc:
        raise StoreUnavailable(exc) from exc


# Schema version N is reached by running MIGRATIONS[N - 1]; table schema_version records each.
MIGRATIONS = (
    SCHEMA_V1,
    # Version 2 is SQLite's fence column, which SCHEMA_V1 here always had: kept so that both
    # engines number their migrations alike.
    "SELECT 1",
    # Per-block min, max, first, last and NaN points of float chunks (codec.chunk_stats); NULL
    # for chunks written before, which reads decode whole.
    "ALTER TABLE chunks ADD COLUMN IF NOT EXISTS stats BYTEA",
    # Access tokens, hashed (store/tokens.py).
    TOKENS_MIGRATION,
)
_MIGRATION_LOCK = 0x5354_4550_5354_524D  # "STEPSTRM": one advisory lock for every replica

_NO_REASON = json.dumps("")
_CHUNK_COLUMNS = (
    "project, run_id, chunk_id, series_id, min_step, max_step, n, steps, vals, ts, stats"
)
_CHUNK_TYPES = [
    "text",
    "text",
    "int8",
    "int8",
    "float8",
    "float8",
    "int4",
    "bytea",
    "bytea",
    "bytea",
    "bytea",
]
# Named as RunRecord's fields; _DECODE turns the stored form into the field's.
_RUN_COLUMNS = (
    "project, run_id, experiment, state, tags, description, config, current_incarnation AS"
    " current_incarnation_id, failure_reason, created_at, updated_at, vals AS values,"
    " experiment <> '' AND run_id = (SELECT h.run_id FROM runs h WHERE h.project = runs.project"
    " AND h.experiment = runs.experiment ORDER BY h.created_seq DESC LIMIT 1)"
    " AS experiment_head, fence"
)
_DECODE: dict[str, Any] = {
    "state": RunState,
    "tags": lambda text: tuple(json.loads(text)),
    "description": json.loads,
    "config": json.loads,
    "failure_reason": json.loads,
    "values": json.loads,
}
_INCARNATION_COLUMNS = (
    "i.incarnation_id, i.project, i.run_id, i.parent_incarnation, i.parent_run_id,"
    " i.fork_step, i.snapshot_chunk, i.origin, i.created_at, i.archived"
)
_SERIES_KEY = (
    "unnest(%s::text[], %s::text[], %s::text[], %s::bool[], %s::text[]) WITH ORDINALITY"
    " AS k(project, run_id, incarnation_id, is_string, name, i)"
)
_SAME_SERIES = (
    "s.project = k.project AND s.run_id = k.run_id AND s.incarnation_id = k.incarnation_id"
    " AND s.is_string = k.is_string AND s.name = k.name"
)
# One row per (series, segment) pair of a view: which chunks of it the segment shows.
_PAIRS = (
    "unnest(%s::text[], %s::text[], %s::int8[], %s::int8[], %s::float8[]) WITH ORDINALITY"
    " AS k(project, run_id, series_id, cap, step_cap, i)"
)
_PAIR_CHUNKS = (
    "c.project = k.project AND c.run_id = k.run_id AND c.series_id = k.series_id"
    " AND c.chunk_id <= k.cap AND c.min_step <= k.step_cap"
)


class PostgresStore:
    """`Store` on PostgreSQL through a small connection pool, safe for any number of threads
    and replicas."""

    def __init__(self, url: str, *, max_connections: int = 8) -> None:
        self._pool: ConnectionPool[psycopg.Connection[TupleRow]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True, "application_name": "stepstream"},
            open=False,
            name="stepstream-store",
            # A connection the server ended while it idled in the pool (a restart, a failover,
            # pg_terminate_backend) is replaced before use instead of failing a call.
            check=ConnectionPool.check_connection,
            # While PostgreSQL is down a call fails after this instead of queueing for 30 s.
            timeout=POOL_TIMEOUT,
        )
        self._active: set[psycopg.Connection[TupleRow]] = set()  # for interrupt()
        self.analyzer = Analyzer(self._read)  # fresh statistics after bulk loads
        try:
            self._pool.open(wait=True, timeout=30.0)
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    def _migrate(self) -> None:
        with self._write() as cur:
            # Replicas starting at once migrate one after the other.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            version = _one(cur, "SELECT COALESCE(MAX(version), 0) FROM schema_version")
            if version > len(MIGRATIONS):
                info = cur.connection.info
                where = f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
                raise SchemaTooNew(where, version, len(MIGRATIONS))
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                cur.execute(script)
                cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))

    @contextlib.contextmanager
    def _read(self, *, binary: bool = False) -> Iterator[Cursor]:
        """A cursor on an autocommit connection: every statement sees what is committed."""
        with (
            _classified(),
            self._pool.connection() as conn,
            self._tracked(conn),
            conn.cursor(binary=binary) as cur,
        ):
            yield cur

    @contextlib.contextmanager
    def _write(self) -> Iterator[Cursor]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with (
            _classified(),
            self._pool.connection() as conn,
            self._tracked(conn),
            conn.transaction(),
            conn.cursor() as cur,
        ):
            yield cur

    @contextlib.contextmanager
    def _tracked(self, conn: psycopg.Connection[TupleRow]) -> Iterator[None]:
        self._active.add(conn)
        try:
            yield
        finally:
            self._active.discard(conn)

    def interrupt(self) -> None:
        for conn in list(self._active):
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=2.0)

    def close(self) -> None:
        self._pool.close()

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
        with self._write() as cur:
            snapshot = None if parent is None else _snapshot(cur, parent)
            cur.execute(
                "INSERT INTO runs (project, run_id, experiment, state, tags, description, config,"
                " current_incarnation, failure_reason, created_at, updated_at, vals)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (project, run_id) DO NOTHING RETURNING fence",
                (
                    project,
                    run_id,
                    experiment,
                    int(RunState.RUNNING),
                    json.dumps(sorted(set(tags))),
                    json.dumps(description),
                    json.dumps(config),
                    incarnation_id,
                    _NO_REASON,
                    now,
                    now,
                    json.dumps(values),
                ),
            )
            if cur.fetchone() is None:
                raise errors.already_exists(
                    "RUN_ALREADY_EXISTS",
                    f"run {run_id!r} already exists in project {project!r}",
                    project=project,
                    run_id=run_id,
                )
            origin = Origin.FORKED if parent else Origin.CREATED
            _insert_incarnation(
                cur, (project, run_id, incarnation_id), parent, fork_step, snapshot, origin, now
            )
            return _record(cur, project, run_id)

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
        """A rewind: the parent is the run's current incarnation, read under the run's row
        lock, so concurrent rewinds chain."""
        with self._write() as cur:
            cur.execute(
                f"SELECT r.config, {_INCARNATION_COLUMNS} FROM runs r JOIN incarnations i"
                " ON i.project = r.project AND i.run_id = r.run_id"
                " AND i.incarnation_id = r.current_incarnation"
                " WHERE r.project = %s AND r.run_id = %s FOR UPDATE OF r",
                (project, run_id),
            )
            row = cur.fetchone()
            if row is None:
                raise errors.run_not_found(project, run_id)
            stored_config, parent = json.loads(row[0]), incarnation_from_row(row[1:])
            snapshot = _snapshot(cur, parent)
            _insert_incarnation(
                cur, (project, run_id, incarnation_id), parent, fork_step, snapshot, origin, now
            )
            cur.execute(
                "UPDATE incarnations SET archived = TRUE"
                " WHERE project = %s AND run_id = %s AND incarnation_id = %s",
                (project, run_id, parent.incarnation_id),
            )
            cur.execute(
                "UPDATE runs SET current_incarnation = %s, updated_at = %s, config = %s,"
                " state = %s, failure_reason = %s, fence = fence + 1"
                " WHERE project = %s AND run_id = %s",
                (
                    incarnation_id,
                    now,
                    json.dumps({**stored_config, **config}),
                    int(RunState.RUNNING),
                    _NO_REASON,
                    project,
                    run_id,
                ),
            )
            return _record(cur, project, run_id)

    def get_run(self, project: str, run_id: str) -> RunRecord | None:
        with self._read() as cur:
            records = _runs(cur, "project = %s AND run_id = %s", (project, run_id))
        return records[0] if records else None

    def list_runs(self, project: str, experiment: str) -> list[RunRecord]:
        with self._read() as cur:
            if experiment:
                where = "project = %s AND experiment = %s ORDER BY created_seq"
                return _runs(cur, where, (project, experiment))
            return _runs(cur, "project = %s ORDER BY created_seq", (project,))

    def list_projects(self) -> list[str]:
        with self._read() as cur:
            cur.execute("SELECT DISTINCT project FROM runs ORDER BY project")
            return [str(r[0]) for r in cur.fetchall()]

    def experiment_head(self, project: str, experiment: str) -> RunRecord | None:
        with self._read() as cur:
            records = _runs(
                cur,
                "project = %s AND experiment = %s ORDER BY created_seq DESC LIMIT 1",
                (project, experiment),
            )
        return records[0] if records else None

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
        # Free text as JSON: PostgreSQL text cannot hold NUL.
        sets, args = run_changes(
            "%s",
            now=now,
            state=None if state is None else int(state),
            tags=tags,
            config=config,
            description=description,
            failure_reason=failure_reason,
            values=values,
            encode_text=json.dumps,
        )
        with self._write() as cur:
            cur.execute(
                f"UPDATE runs SET {sets} WHERE project = %s AND run_id = %s",
                (*args, project, run_id),
            )
            if cur.rowcount == 0:
                raise errors.run_not_found(project, run_id)
            return _record(cur, project, run_id)

    def get_incarnation(self, incarnation_id: str) -> Incarnation | None:
        with self._read() as cur:
            cur.execute(
                f"SELECT {_INCARNATION_COLUMNS} FROM incarnations i WHERE i.incarnation_id = %s",
                (incarnation_id,),
            )
            row = cur.fetchone()
        return None if row is None else incarnation_from_row(row)

    # -- ingest -----------------------------------------------------------------------------

    def writer_sequence(self, project: str, run_id: str, writer_id: str) -> int:
        with self._read() as cur:
            cur.execute(
                "SELECT last_sequence FROM writers WHERE project = %s AND run_id = %s"
                " AND writer_id = %s",
                (project, run_id, writer_id),
            )
            row = cur.fetchone()
        return 0 if row is None else int(row[0])

    def writer_outcome(
        self, project: str, run_id: str, writer_id: str, sequence: int
    ) -> str | None:
        with self._read() as cur:
            cur.execute(
                "SELECT outcome FROM acks WHERE project = %s AND run_id = %s AND writer_id = %s"
                " AND sequence = %s",
                (project, run_id, writer_id, sequence),
            )
            row = cur.fetchone()
        return None if row is None else str(row[0])

    def commit(self, parts: Sequence[RunCommit]) -> Refused:
        refused: Refused = {}
        if not parts:
            return refused
        with self._write() as cur:
            fences = _lock_runs(cur, [(p.project, p.run_id) for p in parts], "SHARE")
            fenced = []
            for part in parts:
                fence = fences.get((part.project, part.run_id), -1)
                if fence < 0 or fence > part.epoch:
                    refused[(part.project, part.run_id)] = fence
                else:
                    fenced.append(part)
            stored = _lock_writers(cur, fenced)
            accepted = []
            for part in fenced:
                first: dict[str, int] = {}
                for w in part.writers:
                    first[w.writer_id] = min(first.get(w.writer_id, w.sequence), w.sequence)
                if any(
                    stored[(part.project, part.run_id, w)] >= s for w, s in first.items()
                ) or _part_refused(cur, part):
                    refused[(part.project, part.run_id)] = fences[(part.project, part.run_id)]
                else:
                    accepted.append(part)
            _insert_chunks(cur, [(p.project, p.run_id, c) for p in accepted for c in p.chunks])
            _record_writers(cur, accepted)
        self.analyzer.after_commit()
        return refused

    def raise_fence(self, project: str, run_id: str, at_least: int) -> int:
        return self._set_fence(project, run_id, "GREATEST(fence, %s)", at_least)

    def advance_fence(self, project: str, run_id: str) -> int:
        return self._set_fence(project, run_id, "fence + %s", 1)

    def _set_fence(self, project: str, run_id: str, expression: str, arg: int) -> int:
        with self._write() as cur:
            cur.execute(
                f"UPDATE runs SET fence = {expression} WHERE project = %s AND run_id = %s"
                " RETURNING fence",
                (arg, project, run_id),
            )
            row = cur.fetchone()
        if row is None:
            raise errors.run_not_found(project, run_id)
        return int(row[0])

    # -- views ------------------------------------------------------------------------------

    def segments(self, incarnation_id: str, *, own_only: bool = False) -> list[Segment]:
        if own_only:
            return [Segment(incarnation_id)]
        with self._read() as cur:
            cur.execute(
                f"WITH RECURSIVE chain AS (SELECT {_INCARNATION_COLUMNS} FROM incarnations i"
                " WHERE i.incarnation_id = %s UNION ALL"
                f" SELECT {_INCARNATION_COLUMNS} FROM incarnations i"
                " JOIN chain c ON i.incarnation_id = c.parent_incarnation) SELECT * FROM chain",
                (incarnation_id,),
            )
            chain = {inc.incarnation_id: inc for inc in map(incarnation_from_row, cur)}
        return view_segments(incarnation_id, chain.get)

    @staticmethod
    def _visible(
        cur: Cursor, segments: Sequence[Segment], keys: Sequence[tuple[str, bool]] | None = None
    ) -> dict[tuple[str, bool], list[tuple[Segment, SeriesRef, int]]]:
        """Per series of the view (or those of `keys`): (segment, series, generation), oldest
        first; each segment shows the newest generation its snapshot can see."""
        cur.execute(
            "SELECT DISTINCT ON (k.i, s.is_string, s.name) k.i, s.name, s.is_string, s.project,"
            " s.run_id, s.series_id, s.generation"
            " FROM unnest(%s::text[], %s::int8[]) WITH ORDINALITY AS k(incarnation_id, cap, i)"
            " JOIN incarnations inc ON inc.incarnation_id = k.incarnation_id"
            " JOIN series s ON s.project = inc.project AND s.run_id = inc.run_id"
            " AND s.incarnation_id = inc.incarnation_id AND s.created_chunk <= k.cap"
            + _keys_filter(keys)
            + " ORDER BY k.i, s.is_string, s.name, s.generation DESC",
            (
                [seg.incarnation_id for seg in segments],
                [seg.chunk_cap for seg in segments],
                *_keys_args(keys),
            ),
        )
        by_hop: list[list[tuple[str, bool, SeriesRef, int]]] = [[] for _ in segments]
        for i, name, is_string, project, run_id, series_id, generation in cur.fetchall():
            by_hop[i - 1].append((name, is_string, (project, run_id, series_id), generation))
        return fold_visible(zip(reversed(segments), reversed(by_hop), strict=True))

    def floors(
        self, segments: Sequence[Segment], keys: Sequence[tuple[str, bool]] | None = None
    ) -> dict[str, tuple[float, str]]:
        """For every series visible in the view: its largest step and that point's value token.
        The newest segment with a visible point wins: a descendant's own points always lie
        above what it inherits. One query per round; a series whose newest segment has no
        point tries the next older one in the next round."""
        result: dict[str, tuple[float, str]] = {}
        with self._read(binary=True) as cur:
            pending = [(key, parts) for key, parts in self._visible(cur, segments, keys).items()]
            while pending:
                heads = [(seg, ref) for _, parts in pending for seg, ref, _ in parts[-1:]]
                cur.execute(
                    f"SELECT k.i, c.n, c.steps, c.vals FROM {_PAIRS} CROSS JOIN LATERAL (SELECT"
                    f" n, steps, vals FROM chunks c WHERE {_PAIR_CHUNKS}"
                    " ORDER BY c.chunk_id DESC LIMIT 1) c",
                    _pair_arrays(heads),
                )
                found = {int(i): (n, steps, vals) for i, n, steps, vals in cur.fetchall()}
                retry = []
                for i, ((name, is_string), parts) in enumerate(pending, start=1):
                    if i in found:
                        key, floor = floor_of(name, is_string, *found[i], parts[-1][0].step_cap)
                        result[key] = floor
                    elif len(parts) > 1:
                        retry.append(((name, is_string), parts[:-1]))
                pending = retry
        return result

    def series_names(
        self, segments: Sequence[Segment], after: tuple[str, bool] | None, limit: int
    ) -> list[tuple[str, bool]]:
        """The first `limit` (name, is_string) of series rows in the view's incarnations, in
        order, after `after`: candidates for a page (series_keys says which are visible)."""
        found: set[tuple[str, bool]] = set()
        with self._read() as cur:
            for seg in segments:
                for is_string in (False, True):
                    # (name, is_string) > after: see the SQLite store.
                    op = ">" if after is None or not is_string or after[1] else ">="
                    cur.execute(
                        "SELECT DISTINCT s.name FROM incarnations inc JOIN series s"
                        " ON s.project = inc.project AND s.run_id = inc.run_id"
                        " AND s.incarnation_id = inc.incarnation_id"
                        f" WHERE inc.incarnation_id = %s AND s.is_string = %s AND s.name {op} %s"
                        " ORDER BY s.name LIMIT %s",
                        (seg.incarnation_id, is_string, "" if after is None else after[0], limit),
                    )
                    found.update((str(name), is_string) for (name,) in cur.fetchall())
        return sorted(found)[:limit]

    def series_keys(
        self, segments: Sequence[Segment], keys: Sequence[tuple[str, bool]] | None = None
    ) -> list[tuple[str, bool, int]]:
        """(name, is_string, generation of the viewed incarnation) of every series (or those of
        `keys`) with a visible point."""
        with self._read() as cur:
            visible = self._visible(cur, segments, keys)
            pairs = [(key, seg, ref) for key, parts in visible.items() for seg, ref, _ in parts]
            cur.execute(
                f"SELECT k.i FROM {_PAIRS} WHERE EXISTS"
                f" (SELECT 1 FROM chunks c WHERE {_PAIR_CHUNKS})",
                _pair_arrays([(seg, ref) for _, seg, ref in pairs]),
            )
            shown = {pairs[int(i) - 1][0] for (i,) in cur.fetchall()}
        return sorted(
            (name, is_string, own_generation(visible[(name, is_string)], segments))
            for name, is_string in shown
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
        fetched: list[tuple[float, list[TupleRow]]] = []
        with self._read(binary=True) as cur:
            if generation is not None:
                cur.execute(
                    "SELECT s.project, s.run_id, s.series_id FROM incarnations inc JOIN series s"
                    " ON s.project = inc.project AND s.run_id = inc.run_id AND s.incarnation_id"
                    " = inc.incarnation_id WHERE inc.incarnation_id = %s AND s.is_string = %s"
                    " AND s.name = %s AND s.generation = %s",
                    (segments[-1].incarnation_id, is_string, name, generation),
                )
                row = cur.fetchone()
                parts = [] if row is None else [(segments[-1], (row[0], row[1], row[2]), 0)]
            else:
                parts = self._parts(cur, segments, name, is_string)
            for seg, (project, run_id, series_id), _ in parts:
                hi = min(step_max, seg.step_cap)
                cur.execute(
                    "SELECT n, steps, vals, ts FROM chunks WHERE project = %s AND run_id = %s"
                    " AND series_id = %s AND chunk_id <= %s AND min_step <= %s"
                    " AND max_step >= %s ORDER BY chunk_id",
                    (project, run_id, series_id, seg.chunk_cap, hi, step_min),
                )
                fetched.append((hi, cur.fetchall()))
        return _points(name, is_string, step_min, fetched)

    def read_summary_pieces(
        self, segments: Sequence[Segment], keys: Sequence[tuple[str, bool]]
    ) -> dict[tuple[str, bool], tuple[int, list[SummaryPiece]]]:
        """In two queries whatever the number of series: their visible parts, then the chunk
        rows of every part, points only where the stats do not suffice."""
        found: dict[tuple[str, bool], list[SummaryPiece]] = {}
        if not keys:
            return {}
        with self._read(binary=True) as cur:
            visible = self._visible(cur, segments, keys)
            pairs = [(key, seg, ref) for key, parts in visible.items() for seg, ref, _ in parts]
            if not pairs:
                return {}
            cur.execute(
                f"SELECT k.i, {summary_columns('c.', 'k.step_cap')} FROM {_PAIRS} JOIN chunks c"
                f" ON {_PAIR_CHUNKS} ORDER BY k.i, c.chunk_id",
                _pair_arrays([(seg, ref) for _, seg, ref in pairs]),
            )
            for i, *row in cur.fetchall():
                (name, is_string), seg, _ = pairs[int(i) - 1]
                piece = summary_piece(is_string, seg.step_cap, row)
                if piece is not None:
                    found.setdefault((name, is_string), []).append(piece)
        return {key: (own_generation(visible[key], segments), p) for key, p in found.items()}

    def _parts(
        self, cur: Cursor, segments: Sequence[Segment], name: str, is_string: bool
    ) -> list[tuple[Segment, SeriesRef, int]]:
        return self._visible(cur, segments, [(name, is_string)]).get((name, is_string), [])

    def count(
        self,
        segments: Sequence[Segment],
        name: str,
        is_string: bool,
        step_min: float,
        step_max: float,
    ) -> int:
        total = 0
        with self._read() as cur:
            for seg, (project, run_id, series_id), _ in self._parts(cur, segments, name, is_string):
                total += _one(
                    cur,
                    "SELECT COALESCE(SUM(n), 0) FROM chunks WHERE project = %s AND run_id = %s"
                    " AND series_id = %s AND chunk_id <= %s AND min_step <= %s AND max_step >= %s",
                    (
                        project,
                        run_id,
                        series_id,
                        seg.chunk_cap,
                        min(step_max, seg.step_cap),
                        step_min,
                    ),
                )
        return int(total)

    def read_sampled(
        self, segments: Sequence[Segment], name: str, step_min: float, step_max: float
    ) -> Iterator[SeriesPoints]:
        out: list[SeriesPoints] = []
        with self._read(binary=True) as cur:

            def fetch(key: tuple[str, str, int]) -> tuple[int, bytes, bytes, bytes]:
                cur.execute(
                    "SELECT n, steps, vals, ts FROM chunks WHERE project = %s AND run_id = %s"
                    " AND chunk_id = %s",
                    key,
                )
                row = cur.fetchone()
                assert row is not None
                return (row[0], row[1], row[2], row[3])

            for seg, (project, run_id, series_id), _ in self._parts(cur, segments, name, False):
                hi = min(step_max, seg.step_cap)
                cur.execute(
                    "SELECT chunk_id, n, min_step, max_step, stats FROM chunks WHERE project = %s"
                    " AND run_id = %s AND series_id = %s AND chunk_id <= %s AND min_step <= %s"
                    " AND max_step >= %s ORDER BY chunk_id",
                    (project, run_id, series_id, seg.chunk_cap, hi, step_min),
                )
                rows = [((project, run_id, r[0]), r[1], r[2], r[3], r[4]) for r in cur.fetchall()]
                out.extend(sampled_points(name, rows, step_min, hi, fetch))
        return iter(out)


def _keys_filter(keys: Sequence[tuple[str, bool]] | None) -> str:
    """Restricts _visible to some series: equality for one (an index lookup), a join with the
    unnested list for many."""
    if keys is None:
        return ""
    if len(keys) == 1:
        return " AND s.name = %s AND s.is_string = %s"
    return (
        " AND EXISTS (SELECT 1 FROM unnest(%s::text[], %s::bool[]) AS w(name, is_string)"
        " WHERE w.name = s.name AND w.is_string = s.is_string)"
    )


def _keys_args(keys: Sequence[tuple[str, bool]] | None) -> tuple[Any, ...]:
    if keys is None:
        return ()
    if len(keys) == 1:
        return keys[0]
    return ([n for n, _ in keys], [k for _, k in keys])


def _points(
    name: str, is_string: bool, step_min: float, fetched: list[tuple[float, list[TupleRow]]]
) -> Iterator[SeriesPoints]:
    for hi, rows in fetched:
        for row in rows:
            points = points_of(name, is_string, (row[0], row[1], row[2], row[3]), step_min, hi)
            if points is not None:
                yield points


def _runs(cur: Cursor, where: str, args: Sequence[Any]) -> list[RunRecord]:
    """Run records (of one project) with their incarnations, in two queries."""
    cur.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE {where}", args)
    rows = cur.fetchall()
    if not rows:
        return []
    names = [column.name for column in cur.description or ()]
    cur.execute(
        f"SELECT {_INCARNATION_COLUMNS} FROM incarnations i WHERE i.project = %s"
        " AND i.run_id = ANY(%s) ORDER BY i.created_seq",
        (rows[0][0], [row[1] for row in rows]),
    )
    incarnations: dict[str, list[Incarnation]] = {}
    for inc_row in cur.fetchall():
        incarnations.setdefault(inc_row[2], []).append(incarnation_from_row(inc_row))
    records = []
    for row in rows:
        fields = {
            name: _DECODE.get(name, _same)(value) for name, value in zip(names, row, strict=True)
        }
        fields["incarnations"] = tuple(incarnations.get(fields["run_id"], ()))
        records.append(RunRecord(**fields))
    return records


def _same(value: Any) -> Any:
    return value


def _record(cur: Cursor, project: str, run_id: str) -> RunRecord:
    records = _runs(cur, "project = %s AND run_id = %s", (project, run_id))
    if not records:
        raise errors.run_not_found(project, run_id)
    return records[0]


def _snapshot(cur: Cursor, parent: Incarnation) -> int:
    """A child's snapshot of `parent`, read holding the parent's run row exclusively: every
    chunk of that run committed so far is at or below it, every later one above (chunk IDs come
    from one sequence and commits take them under the run row). Never below the parent's own
    snapshot, so the child sees the further ancestors exactly as the parent does."""
    _lock_runs(cur, [(parent.project, parent.run_id)], "UPDATE")
    top = _one(
        cur,
        "SELECT COALESCE(MAX(chunk_id), 0) FROM chunks WHERE project = %s AND run_id = %s",
        (parent.project, parent.run_id),
    )
    return max(top, parent.snapshot_chunk or 0)


def _one(cur: Cursor, query: str, args: Sequence[Any] = ()) -> int:
    cur.execute(query, args)
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as column arrays, for unnest()."""
    return [[row[j] for row in rows] for j in range(width)]


def _pair_arrays(pairs: Sequence[tuple[Segment, SeriesRef]]) -> list[list[Any]]:
    return [
        [ref[0] for _, ref in pairs],
        [ref[1] for _, ref in pairs],
        [ref[2] for _, ref in pairs],
        [seg.chunk_cap for seg, _ in pairs],
        [seg.step_cap for seg, _ in pairs],
    ]


def _lock_runs(cur: Cursor, keys: Iterable[RunKey], mode: str) -> dict[RunKey, int]:
    """Lock run rows FOR `mode` in key order (no two lockers deadlock); their fences."""
    cur.execute(
        "SELECT r.project, r.run_id, r.fence FROM runs r JOIN unnest(%s::text[], %s::text[])"
        " AS k(project, run_id) ON r.project = k.project AND r.run_id = k.run_id"
        f" ORDER BY r.project, r.run_id FOR {mode} OF r",
        _columns(sorted(set(keys)), 2),
    )
    return {(project, run_id): int(fence) for project, run_id, fence in cur.fetchall()}


def _lock_writers(cur: Cursor, parts: Sequence[RunCommit]) -> dict[tuple[str, str, str], int]:
    """Create the parts' missing writer rows, lock them all in key order: last sequences."""
    keys = sorted({(p.project, p.run_id, w.writer_id) for p in parts for w in p.writers})
    if not keys:
        return {}
    unnest = "unnest(%s::text[], %s::text[], %s::text[]) AS k(project, run_id, writer_id)"
    cur.execute(
        "INSERT INTO writers (project, run_id, writer_id, last_sequence)"
        f" SELECT project, run_id, writer_id, 0 FROM {unnest} ON CONFLICT DO NOTHING",
        _columns(keys, 3),
    )
    cur.execute(
        f"SELECT w.project, w.run_id, w.writer_id, w.last_sequence FROM writers w JOIN {unnest}"
        " ON w.project = k.project AND w.run_id = k.run_id AND w.writer_id = k.writer_id"
        " ORDER BY w.project, w.run_id, w.writer_id FOR UPDATE OF w",
        _columns(keys, 3),
    )
    return {(p, r, w): int(seq) for p, r, w, seq in cur.fetchall()}


def _insert_chunks(cur: Cursor, chunks: Sequence[tuple[str, str, ChunkWrite]]) -> None:
    """Insert chunks (run rows already locked) with IDs in list order. A regular chunk goes
    to its series' newest generation (created as generation 0 when missing), or to the one an
    earlier chunk of this commit created; an overwrite's first chunk creates a generation."""
    if not chunks:
        return
    cur.execute("SELECT nextval('chunks_chunk_id_seq') FROM generate_series(1, %s)", (len(chunks),))
    ids = sorted(int(r[0]) for r in cur.fetchall())
    keys: list[SeriesKey] = [(p, r, c.incarnation_id, c.is_string, c.name) for p, r, c in chunks]
    overwritten: set[SeriesKey] = set()
    needed: set[SeriesKey] = set()
    for key, (_, _, chunk) in zip(keys, chunks, strict=True):
        if chunk.new_generation:
            overwritten.add(key)
        elif key not in overwritten:
            needed.add(key)
    series = _series_ids(cur, sorted(needed))
    rows = []
    columns = chunk_rows([c for _, _, c in chunks])
    for chunk_id, key, (_, _, chunk), packed in zip(ids, keys, chunks, columns, strict=True):
        if chunk.new_generation:
            # Its first chunk decides which snapshots see the generation.
            series[key] = _one(
                cur,
                "INSERT INTO series (project, run_id, incarnation_id, is_string, name,"
                " generation, created_chunk) SELECT %s, %s, %s, %s, %s,"
                " COALESCE(MAX(generation) + 1, 1), %s FROM series WHERE project = %s"
                " AND run_id = %s AND incarnation_id = %s AND is_string = %s AND name = %s"
                " RETURNING series_id",
                (*key, chunk_id, *key),
            )
        rows.append((key[0], key[1], chunk_id, series[key], *packed))
    with cur.copy(f"COPY chunks ({_CHUNK_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_CHUNK_TYPES)
        for row in rows:
            copy.write_row(row)


def _series_ids(cur: Cursor, keys: Sequence[SeriesKey]) -> dict[SeriesKey, int]:
    """The newest generation's series ID of each key (sorted), creating generation 0 rows for
    keys without any. Read from the table every time: another replica's overwrite may have
    added a generation since."""
    found = _newest_series(cur, keys)
    missing = [key for key in keys if key not in found]
    if missing:
        cur.execute(
            "INSERT INTO series (project, run_id, incarnation_id, is_string, name)"
            " SELECT k.project, k.run_id, k.incarnation_id, k.is_string, k.name"
            f" FROM {_SERIES_KEY} ORDER BY k.i ON CONFLICT DO NOTHING",
            _columns(missing, 5),
        )
        found.update(_newest_series(cur, missing))
    assert len(found) == len(keys)
    return found


def _newest_series(cur: Cursor, keys: Sequence[SeriesKey]) -> dict[SeriesKey, int]:
    if not keys:
        return {}
    cur.execute(
        f"SELECT k.i, (SELECT s.series_id FROM series s WHERE {_SAME_SERIES}"
        f" ORDER BY s.generation DESC LIMIT 1) FROM {_SERIES_KEY}",
        _columns(keys, 5),
    )
    return {keys[i - 1]: int(sid) for i, sid in cur.fetchall() if sid is not None}


def _record_writers(cur: Cursor, parts: Sequence[RunCommit]) -> None:
    acks = [
        (p.project, p.run_id, w.writer_id, w.sequence, w.outcome_json)
        for p in parts
        for w in p.writers
    ]
    if not acks:
        return
    last: dict[tuple[str, str, str], int] = {}
    for p in parts:
        for w in p.writers:
            if parts_rule.advances(w):
                key = (p.project, p.run_id, w.writer_id)
                last[key] = max(last.get(key, 0), w.sequence)
    unnest = "unnest(%s::text[], %s::text[], %s::text[], %s::int8[]) AS k(project, run_id, writer_id, seq)"
    same = "w.project = k.project AND w.run_id = k.run_id AND w.writer_id = k.writer_id"
    cur.execute(
        "INSERT INTO acks (project, run_id, writer_id, sequence, outcome) SELECT * FROM"
        " unnest(%s::text[], %s::text[], %s::text[], %s::int8[], %s::text[])"
        " ON CONFLICT (project, run_id, writer_id, sequence)"
        " DO UPDATE SET outcome = excluded.outcome",  # a part's progress (parts_rule)
        _columns(acks, 5),
    )
    cur.execute(
        f"UPDATE writers w SET last_sequence = k.seq FROM {unnest} WHERE {same}",
        _columns([(*k, seq) for k, seq in last.items()], 4),
    )
    trim = [(*k, seq - ACK_RETENTION) for k, seq in last.items() if seq > ACK_RETENTION]
    if trim:
        cur.execute(
            f"DELETE FROM acks w USING {unnest} WHERE {same} AND w.sequence <= k.seq",
            _columns(trim, 4),
        )


def _part_refused(cur: Cursor, part: RunCommit) -> bool:
    """A part of a batch not right after the one before it (its writer row is locked)."""
    for w in part.writers:
        if isinstance(w, parts_rule.PartCommit):
            cur.execute(
                "SELECT outcome FROM acks WHERE project = %s AND run_id = %s AND writer_id = %s"
                " AND sequence = %s",
                (w.project, w.run_id, w.writer_id, w.sequence),
            )
            row = cur.fetchone()
            if parts_rule.refuses(w, None if row is None else str(row[0])):
                return True
    return False


def _insert_incarnation(
    cur: Cursor,
    key: tuple[str, str, str],
    parent: Incarnation | None,
    fork_step: float | None,
    snapshot: int | None,
    origin: Origin,
    now: float,
) -> None:
    cur.execute(
        "INSERT INTO incarnations (project, run_id, incarnation_id, parent_incarnation,"
        " parent_run_id, fork_step, snapshot_chunk, origin, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            *key,
            None if parent is None else parent.incarnation_id,
            None if parent is None else parent.run_id,
            fork_step,
            snapshot,
            int(origin),
            now,
        ),
    )
