"""SQLite's WAL checkpoints on a thread of their own, so that no group commit pays for them.

SQLite copies the write-ahead log back into the database file (a checkpoint: the pages, then
an fsync of the file) inside the COMMIT that grows the log past `wal_autocheckpoint` pages.
With its default of 1,000 pages, a wide group (1,000 series, about one dirty index page per
series) crosses it on nearly every commit, and a narrow one on every 50th: that commit then
takes several times longer, and its batches' acknowledgements wait for it (the p99 of the
latency bench). Here the committing connections keep only a high backstop, and a
`Checkpointer` runs `PRAGMA wal_checkpoint(PASSIVE)` on its own connection after a commit left
`CHECKPOINT_PAGES` or more frames uncopied (SQLite's own threshold: as often as before, only
elsewhere); a short burst that writes less is never checkpointed under the next commit's
fsync. It reads that count from the wal-index header in the `-shm` file (`mxFrame` and
`nBackfill`, sqlite.org/walformat.html). Durability does not change: a commit is durable once
its WAL frames are synced, whoever copies them later.

A passive checkpoint takes no lock a writer waits for. It can fall behind a writer that never
pauses; the log then only resets once a commit finds it wholly copied, so the backstop bounds
it: past `BACKSTOP_PAGES` a commit checkpoints itself (cheap then: most frames are copied
already) and the next one starts the log afresh. `JOURNAL_SIZE_LIMIT` truncates the file after
such a reset, so a burst leaves no large file behind.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import struct
import threading
import weakref
from pathlib import Path

from .background import OwnedThread

log = logging.getLogger(__name__)

# Uncopied WAL frames (pages) that make the checkpointer copy them: SQLite's default threshold.
CHECKPOINT_PAGES = 1_000
# Pages past which a committing connection checkpoints by itself (about 40 MiB of 4 KiB pages).
BACKSTOP_PAGES = 10_000
# Bytes of WAL file kept after the log resets.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
# At most this often: each checkpoint syncs the log and the database file once.
MIN_INTERVAL = 0.05

# The wal-index header at the start of the -shm file, in the machine's byte order: mxFrame (the
# last valid frame) at byte 16, and nBackfill (frames already copied) at byte 96.
_FRAME_FIELD = struct.Struct("=I")
_MX_FRAME, _BACKFILL, _HEADER_BYTES = 16, 96, 100


def uncopied_frames(shm: Path) -> int | None:
    """Frames of the log not yet copied into the database file; None if unknown (no -shm)."""
    try:
        with open(shm, "rb") as f:
            head = f.read(_HEADER_BYTES)
    except OSError:
        return None
    if len(head) < _HEADER_BYTES:
        return None
    frames = int(_FRAME_FIELD.unpack_from(head, _MX_FRAME)[0])
    copied = int(_FRAME_FIELD.unpack_from(head, _BACKFILL)[0])
    return max(0, frames - copied)


def configure(conn: sqlite3.Connection) -> None:
    """Settings of a connection that commits: checkpoints are the `Checkpointer`'s job."""
    conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")


class Checkpointer:
    """Checkpoints one database file after commits; started on the first `poke`."""

    def __init__(self, path: Path, synchronous: str, pages: int = CHECKPOINT_PAGES) -> None:
        self._path = path
        self._shm = path.with_name(path.name + "-shm")
        self._synchronous = synchronous
        self.pages = pages
        self._thread = OwnedThread("sqlite-checkpoint", _run, join_timeout=30)
        # Pokes so far, and the last poke whose commit a completed checkpoint covered.
        self.poked = 0
        self.covered = 0

    def poke(self) -> None:
        """A commit landed: checkpoint soon."""
        self.poked += 1  # only the committing thread pokes
        self._thread.poke(self)

    def stop(self) -> None:
        """End the thread (after the checkpoint under way, if any); later pokes do nothing."""
        self._thread.stop()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        return conn

    def due(self) -> bool:
        frames = uncopied_frames(self._shm)
        return frames is None or frames >= self.pages

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        target = self.poked  # every commit poked so far is in the log
        try:
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy and frames == copied:  # else a reader held some back: not all copied
                self.covered = max(self.covered, target)
        except sqlite3.Error as exc:  # a full disk, an I/O error: the next commit tries again
            log.debug("WAL checkpoint failed: %s", exc)


def _run(ref: weakref.ref[Checkpointer], wake: threading.Event, stop: threading.Event) -> None:
    conn: sqlite3.Connection | None = None
    try:
        while not stop.is_set():
            wake.wait(timeout=5.0)
            if stop.is_set():
                break
            if not wake.is_set():
                if ref() is None:  # the store is gone
                    break
                continue
            wake.clear()
            owner = ref()
            if owner is None:
                break
            if not owner.due():
                del owner
                continue
            try:
                if conn is None:
                    conn = owner._connect()
                owner._checkpoint(conn)
            except sqlite3.Error as exc:  # the file cannot be opened right now
                log.debug("WAL checkpoint connection failed: %s", exc)
            del owner
            stop.wait(MIN_INTERVAL)
    finally:
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
