"""The async seam over a synchronous `Store`: reads on a small thread pool, writes on their own.

Everything above the store (ingest, runs, reading, the web view) reaches it through here, so
both engines sit behind one boundary and no event-loop code knows which one it talks to.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from .base import Store

T = TypeVar("T")


class AsyncStore:
    """Runs store calls off the event loop. `sync` is the store itself, for the store threads."""

    def __init__(self, store: Store, *, read_threads: int = 2, write_threads: int = 1) -> None:
        self.sync = store
        self._reads = ThreadPoolExecutor(read_threads, thread_name_prefix="store-read")
        # SQLite has one writer; PostgreSQL's commits of one worker are ordered anyway.
        self._writes = ThreadPoolExecutor(write_threads, thread_name_prefix="store-write")
        self._guard = threading.Lock()
        self._reading = 0  # read calls running on the read threads

    async def read(self, fn: Callable[[Store], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reads, self._read, fn)

    def _read(self, fn: Callable[[Store], T]) -> T:
        with self._guard:
            self._reading += 1
        try:
            return fn(self.sync)
        finally:
            with self._guard:
                self._reading -= 1

    async def write(self, fn: Callable[[Store], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writes, fn, self.sync)

    def close(self) -> None:
        """Wait for the writes under way; interrupt the reads under way (their callers are
        gone by now: a long read must not hold the process past its grace period); close."""
        self._writes.shutdown(wait=True)
        self._reads.shutdown(wait=False, cancel_futures=True)
        # An interrupt lands only on a statement that is running: repeat until the reads end.
        give_up = time.monotonic() + 10.0
        while self._reading and time.monotonic() < give_up:
            self.sync.interrupt()
            time.sleep(0.02)
        self._reads.shutdown(wait=True)
        self.sync.close()


def migrate_store(url: str) -> None:
    """Only the schema migrations of the store at `url`, safe beside a live service: for
    SQLite no owner lock, no staged-row replay and no flush (docs/staging.md, One owner)."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from .sqlite import migrate

        migrate(Path(_sqlite_path(url)))
        return
    open_store(url).close()  # PostgreSQL keeps nothing in memory to replay


def _sqlite_path(url: str) -> str:
    path = url[len("sqlite://") :]
    if not path or path == "/":
        raise ValueError(f"store URL {url!r} names no file; use sqlite:///path/to/file")
    return path


def open_store(url: str, *, sqlite_synchronous: str = "FULL") -> Store:
    """`sqlite:///path` or `postgresql://user@host:port/db` (also `postgres://`)."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(Path(_sqlite_path(url)), synchronous=sqlite_synchronous)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(
        f"unsupported store URL {url!r}: use sqlite:///path or postgresql://user@host:port/db"
    )
