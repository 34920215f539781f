"""One process per data directory: an exclusive `flock` held for the service's lifetime.

The embedded store (one SQLite file) and the embedded Redis belong to exactly one process; a
second `stepstream serve` on the same directory would judge against its own Redis and store every
point twice. The lock is the kernel's: it goes away with the process, kill -9 included.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DataDirInUse(RuntimeError):
    """Another process holds the directory."""


class DataDirLock:
    """An exclusive, non-blocking lock on `<directory>/lock` (or on the file given)."""

    def __init__(self, where: Path) -> None:
        self.path = (
            where / "lock" if where.suffix == "" or where.is_dir() else Path(f"{where}.lock")
        )
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DataDirInUse(
                f"{self.path.parent} is in use by stepstream process {holder}: one service per"
                " data directory (give this one its own --data-dir, or run replicas on a shared"
                " PostgreSQL store and Redis: see the README's Production deployment)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
