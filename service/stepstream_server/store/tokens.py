"""Access tokens in the store: the table both engines create (one migration each) and the few
queries on it, on a connection of their own so that checking a token never waits behind a
long read or a group commit.

A row holds a token's public id, name, scope (one project, or "*" for every project), role,
when it was created, when it expires and when it was revoked, and the SHA-256 of its secret,
never the secret itself (auth/tokens.py makes and checks tokens).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# Appended to each engine's MIGRATIONS (store/sqlite.py, store/postgres.py).
SQLITE_MIGRATION = """
CREATE TABLE IF NOT EXISTS access_tokens (
    token_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    project TEXT NOT NULL,
    role TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
) WITHOUT ROWID;
"""
POSTGRES_MIGRATION = """
CREATE TABLE IF NOT EXISTS access_tokens (
    token_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    project TEXT NOT NULL,
    role TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION
)
"""

ALL_PROJECTS = "*"
_COLUMNS = "token_id, name, project, role, secret_sha256, created_at, expires_at, revoked_at"


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    name: str
    project: str  # ALL_PROJECTS: every project
    role: str
    secret_sha256: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def state(self) -> str:
        """ "active", "expired" or "revoked"."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expired() else "active"


class TokenStore:
    """The access_tokens table of a store URL (sqlite:///path or postgresql://...), which the
    store's own migrations created. Safe for any number of threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        scheme = urlparse(url).scheme
        self._lock = threading.Lock()
        self._sqlite: sqlite3.Connection | None = None
        self._pool: Any = None
        if scheme == "sqlite":
            path = Path(url[len("sqlite://") :])
            self._sqlite = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._sqlite.execute("PRAGMA busy_timeout=30000")
            self._param = "?"
        elif scheme in ("postgresql", "postgres"):
            from psycopg_pool import ConnectionPool

            self._pool = ConnectionPool(
                url,
                min_size=1,
                max_size=2,
                kwargs={"autocommit": True, "application_name": "stepstream-tokens"},
                open=False,
                name="stepstream-tokens",
                check=ConnectionPool.check_connection,
                timeout=10.0,
            )
            self._pool.open(wait=True, timeout=30.0)
            self._param = "%s"
        else:
            raise ValueError(f"unsupported store URL {url!r}")

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        if self._sqlite is not None:
            with self._lock:
                yield self._sqlite.cursor()
            return
        with self._pool.connection() as conn, conn.cursor() as cur:
            yield cur

    def _sql(self, text: str) -> str:
        return text.replace("?", self._param)

    def add(self, record: TokenRecord) -> None:
        with self._cursor() as cur:
            cur.execute(
                self._sql(
                    f"INSERT INTO access_tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                (
                    record.token_id,
                    record.name,
                    record.project,
                    record.role,
                    record.secret_sha256,
                    record.created_at,
                    record.expires_at,
                    record.revoked_at,
                ),
            )

    def get(self, token_id: str) -> TokenRecord | None:
        with self._cursor() as cur:
            cur.execute(
                self._sql(f"SELECT {_COLUMNS} FROM access_tokens WHERE token_id = ?"), (token_id,)
            )
            row = cur.fetchone()
        return None if row is None else TokenRecord(*row)

    def list(self) -> list[TokenRecord]:
        with self._cursor() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM access_tokens ORDER BY created_at, token_id")
            rows = cur.fetchall()
        return [TokenRecord(*row) for row in rows]

    def revoke(self, token_id: str, now: float) -> bool:
        """Whether a token that was not revoked yet is now."""
        with self._cursor() as cur:
            cur.execute(
                self._sql(
                    "UPDATE access_tokens SET revoked_at = ? WHERE token_id = ?"
                    " AND revoked_at IS NULL"
                ),
                (now, token_id),
            )
            return bool(cur.rowcount)

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pool is not None:
            self._pool.close()
