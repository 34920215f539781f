"""The async seam over a synchronous `Store`: reads on a small thread pool, writes on their own.

Everything above the store (ingest, runs, reading, the web view) reaches it through here, so
both engines sit behind one boundary and no event-loop code knows which one it talks to.
"""

from __future__ import annotations

import asyncio
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

    async def read(self, fn: Callable[[Store], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reads, fn, self.sync)

    async def write(self, fn: Callable[[Store], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writes, fn, self.sync)

    def close(self) -> None:
        """Wait for calls under way, then close the store."""
        self._reads.shutdown(wait=True)
        self._writes.shutdown(wait=True)
        self.sync.close()


def open_store(url: str, *, sqlite_synchronous: str = "FULL") -> Store:
    """`sqlite:///path` or `postgresql://user@host:port/db` (also `postgres://`)."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        path = url[len("sqlite://") :]
        if not path or path == "/":
            raise ValueError(f"store URL {url!r} names no file; use sqlite:///path/to/file")
        return SqliteStore(Path(path), synchronous=sqlite_synchronous)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(
        f"unsupported store URL {url!r}: use sqlite:///path or postgresql://user@host:port/db"
    )
