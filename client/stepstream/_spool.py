"""The spool file: one SQLite database (WAL, synchronous=FULL) per writer of a run.

The format, the lock and what is durable when are in docs/spool.md. This module only reads
and writes the file; when to spill and how to drain is `_spill`'s job.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ._exceptions import StepstreamError

FORMAT = "stepstream-spool 1"
SUFFIX = ".spool"
DEFAULT_DIR = ".stepstream-client"
# The project directory of a run in the service's default project (project "").
DEFAULT_PROJECT_DIR = "_default"
PAGE_SIZE = 65536

try:  # POSIX: an advisory lock that dies with its process (kill -9 included)
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process lock
    fcntl = None  # type: ignore[assignment]


class SpoolError(StepstreamError):
    """A spool file that cannot be used: foreign, corrupt, or unreadable. Names the file."""


class SpoolBusy(SpoolError):
    """Another process (a live trainer, another `stepstream sync`) holds the spool's lock."""


class SpoolGone(SpoolError):
    """The spool file no longer exists (another process uploaded and removed it)."""


class SpoolFull(SpoolError):
    """The disk, or `spool_max_bytes`, has no room for the entries (SQLITE_FULL)."""


def spool_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where spools live: `root`, else $STEPSTREAM_DIR, else ./.stepstream-client."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("STEPSTREAM_DIR") or DEFAULT_DIR)


def spool_path(root: Path, project: str, run_id: str, writer_id: str) -> Path:
    """The spool file of one writer of a run (IDs are [A-Za-z0-9._:-], safe as names)."""
    return root / (project or DEFAULT_PROJECT_DIR) / run_id / f"{writer_id}{SUFFIX}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One spooled entry: a batch (`method` "") or a RunService operation."""

    pos: int
    sequence: int
    points: int
    method: str
    body: bytes
    attempted: bool = False

    @property
    def is_batch(self) -> bool:
        return not self.method


# What `append` takes: (sequence, points, method, body).
NewEntry = tuple[int, int, str, bytes]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    pos INTEGER PRIMARY KEY,
    sequence INTEGER NOT NULL,
    points INTEGER NOT NULL,
    method TEXT NOT NULL,
    body BLOB NOT NULL,
    attempted INTEGER NOT NULL DEFAULT 0
);
"""


class SpoolFile:
    """An open spool file, locked for this process.

    `create` makes a new file (directories included) with `meta`; without it the file must
    exist and be a stepstream spool. Raises SpoolBusy when another process holds the lock,
    SpoolError (naming the file) when it is not a spool or is corrupt.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: dict[str, str] | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        if create is None and not self.path.is_file():
            raise SpoolGone(f"{self.path}: no such spool file")
        if create is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        if create is None and not self.path.is_file():  # removed while we took the lock
            self._release_lock()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}.lock")
            raise SpoolGone(f"{self.path}: no such spool file (uploaded by another process)")
        # An existing file is opened read-write, never created (mode=rw).
        target = str(self.path) if create is not None else f"{self.path.resolve().as_uri()}?mode=rw"
        try:
            self._db = sqlite3.connect(
                target, isolation_level=None, check_same_thread=False, uri=create is None
            )
        except sqlite3.Error as exc:
            self._release_lock()
            raise SpoolError(f"{self.path}: cannot open: {exc}") from None
        try:
            self._setup(create, max_bytes)
            # Positions only grow while the file is open; append() never reuses those of
            # deleted entries (SQLite's own rowids would): an entry given a reused position
            # would sit below the sender's "loaded up to" mark, never sent (docs/spool.md).
            self._top_pos = self.last_pos()
            self._wal_limit = None if max_bytes is None else int(max_bytes) // 4
        except sqlite3.DatabaseError as exc:
            self._db.close()
            self._release_lock()
            raise SpoolError(f"{self.path}: corrupt or not a stepstream spool ({exc})") from None
        except SpoolError:
            self._db.close()
            self._release_lock()
            raise

    # ---- opening ------------------------------------------------------------------------

    def _take_lock(self) -> None:
        if fcntl is None:
            return
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolBusy(
                f"{self.path}: in use by another process (a running trainer or another "
                "`stepstream sync`)"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _setup(self, create: dict[str, str] | None, max_bytes: int | None) -> None:
        db = self._db
        if create is None:
            # Read before anything writes: a foreign database must stay as it was.
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if not {"meta", "entries"} <= tables:
                raise SpoolError(f"{self.path}: not a stepstream spool (no spool tables)")
        if create is not None:
            # Before the first table: large pages suit a log of large blobs (fewer overflow
            # pages to write per batch). Ignored for a file that already has pages.
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        if create is not None:
            with self._transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                existing = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if not existing:
                    rows = {"format": FORMAT, "created": f"{time.time():.3f}", **create}
                    db.executemany("INSERT INTO meta VALUES (?, ?)", sorted(rows.items()))
        self.meta: dict[str, str] = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if self.meta.get("format") != FORMAT:
            raise SpoolError(
                f"{self.path}: not a stepstream spool (format {self.meta.get('format')!r}, "
                f"expected {FORMAT!r})"
            )
        for key in ("run_id", "writer_id"):
            if not self.meta.get(key):
                raise SpoolError(f"{self.path}: spool metadata has no {key}")
        if max_bytes is not None:
            # The bound is the database's size; the WAL is emptied once an append leaves it
            # above a quarter of the bound (_truncate_wal) and truncated to that after other
            # checkpoints, so the files together stay within about 1.5 times the bound.
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            pages = max(int(max_bytes) // page_size, 2)
            db.execute(f"PRAGMA max_page_count={pages}")
            db.execute(f"PRAGMA wal_autocheckpoint={max(pages // 4, 4)}")
            db.execute(f"PRAGMA journal_size_limit={int(max_bytes) // 4}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:  # SQLITE_FULL may have rolled it back already
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- reading ------------------------------------------------------------------------

    @property
    def project(self) -> str:
        return self.meta.get("project", "")

    @property
    def run_id(self) -> str:
        return self.meta["run_id"]

    @property
    def writer_id(self) -> str:
        return self.meta["writer_id"]

    def entries(self, after: int = 0, limit: int = 1_000_000) -> list[Entry]:
        """Entries with pos > `after`, in log order, at most `limit`."""
        rows = self._db.execute(
            "SELECT pos, sequence, points, method, body, attempted FROM entries "
            "WHERE pos > ? ORDER BY pos LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Entry(p, s, n, m, bytes(b), bool(a)) for p, s, n, m, b, a in rows]

    def counts(self) -> tuple[int, int]:
        """(entries, batch points) left in the file."""
        row = self._db.execute("SELECT count(*), coalesce(sum(points), 0) FROM entries").fetchone()
        return int(row[0]), int(row[1])

    def last_pos(self) -> int:
        row = self._db.execute("SELECT coalesce(max(pos), 0) FROM entries").fetchone()
        return int(row[0])

    def last_sequence(self) -> int:
        """The highest sequence number used (an operation records the last batch before it,
        so this holds even when every batch is gone)."""
        row = self._db.execute("SELECT coalesce(max(sequence), 0) FROM entries").fetchone()
        return int(row[0])

    # ---- writing ------------------------------------------------------------------------

    def append(self, new: Iterable[NewEntry]) -> list[int]:
        """Append entries in one durable transaction; their positions. Raises SpoolFull
        (nothing written) when the disk or the bound has no room."""
        positions = []
        pos = self._top_pos
        try:
            with self._transaction():
                for sequence, points, method, body in new:
                    pos += 1
                    self._db.execute(
                        "INSERT INTO entries (pos, sequence, points, method, body) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (pos, sequence, points, method, body),
                    )
                    positions.append(pos)
        except sqlite3.OperationalError as exc:
            if "full" in str(exc).lower():
                self._truncate_wal()
                raise SpoolFull(f"{self.path}: {exc}") from None
            raise SpoolError(f"{self.path}: {exc}") from None
        if self._wal_limit is not None and self._wal_bytes() > self._wal_limit:
            self._truncate_wal()
        self._top_pos = pos
        return positions

    def _wal_bytes(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _truncate_wal(self) -> None:
        """Empty the WAL file into the database. A bounded spool does it after an append
        that leaves the WAL above a quarter of the bound, and after one that found no room:
        the WAL keeps the last transaction's pages (a rolled-back one's too) until the next
        checkpoint, and beside a database at the bound the files held about 2.4 times
        spool_max_bytes (its pages are 64 KB). Only a broken disk makes it fail."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def delete_batches(self, up_to_sequence: int) -> None:
        """Forget the batches answered up to this sequence number."""
        self._db.execute(
            "DELETE FROM entries WHERE method = '' AND sequence <= ?", (up_to_sequence,)
        )

    def delete(self, pos: int) -> None:
        self._db.execute("DELETE FROM entries WHERE pos = ?", (pos,))

    def mark_attempted(self, pos: int) -> None:
        self._db.execute("UPDATE entries SET attempted = 1 WHERE pos = ?", (pos,))

    def __enter__(self) -> SpoolFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(remove_if_empty=False)

    def close(self, *, remove_if_empty: bool = True) -> bool:
        """Close the file; remove it (and its run directory, if empty) when it holds no
        entries. True if it was removed."""
        removed = False
        try:
            empty = remove_if_empty and self.counts()[0] == 0
            self._db.close()
            if empty:
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{self.path}{suffix}")
                removed = True
        finally:
            if removed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}.lock")
            self._release_lock()
        if removed:
            for directory in (self.path.parent, self.path.parent.parent):
                with contextlib.suppress(OSError):
                    directory.rmdir()  # only when empty
        return removed


def find_spools(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Spool files named by `paths`: files as given, directories searched recursively."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob(f"*{SUFFIX}") if p.is_file()))
        else:
            found.append(path)
    return found
