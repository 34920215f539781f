"""Throw-away PostgreSQL databases for tests, on the local server (or STEPSTREAM_TEST_PG_URL).

Nothing here skips: a test that needs PostgreSQL fails loudly when it cannot have one. An
unreachable local server is started once with pg_ctlcluster first.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

# The maintenance database to connect to; created databases are its siblings.
ADMIN_URL = os.environ.get(
    "STEPSTREAM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

_started = threading.Lock()
_start_tried = False


def _admin() -> psycopg.Connection[TupleRow]:
    global _start_tried
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as first:
        with _started:
            if _start_tried:
                raise
            _start_tried = True
            versions = sorted(p.name for p in Path("/etc/postgresql").glob("*"))
            if not versions:
                raise RuntimeError(
                    f"PostgreSQL at {ADMIN_URL} is unreachable ({first}) and no local cluster"
                    " is installed under /etc/postgresql"
                ) from first
            cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        try:
            return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as second:
            raise RuntimeError(
                f"PostgreSQL at {ADMIN_URL} is unreachable ({first}); `{' '.join(cmd)}` exited"
                f" {done.returncode} ({(done.stderr or done.stdout).strip()}) and it is still"
                f" unreachable ({second})"
            ) from second


def create_database() -> str:
    """A fresh, empty database; returns its postgresql:// URL."""
    name = f"stepstream_test_{secrets.token_hex(6)}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path="/" + name))


def drop_database(url: str) -> None:
    """Drop a database made by `create_database`, disconnecting whoever is still on it."""
    name = urlsplit(url).path.lstrip("/")
    if not name.startswith("stepstream_test_"):
        raise ValueError(f"refusing to drop {name!r}: not made by create_database")
    with _admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def empty_database(url: str) -> None:
    """Remove every row of a stepstream database made by `create_database` (its schema stays)
    and restart its sequences. DELETE, referring tables first, rather than TRUNCATE: on the few
    rows a test leaves it is several times faster, and it waits for no other session's lock."""
    name = urlsplit(url).path.lstrip("/")
    if not name.startswith("stepstream_test_"):
        raise ValueError(f"refusing to empty {name!r}: not made by create_database")
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'schema_version'"
            )
        ]
        refers: dict[str, set[str]] = {t: set() for t in tables}  # table -> tables it refers to
        for child, parent in conn.execute(
            "SELECT c.relname, p.relname FROM pg_constraint k"
            " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid"
            " WHERE k.contype = 'f' AND k.connamespace = 'public'::regnamespace"
        ):
            if child != parent:
                refers[child].add(parent)
        sequences = [
            r[0]
            for r in conn.execute(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
            )
        ]
        with conn.transaction():
            for table in _referrers_first(refers):
                conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
            for seq in sequences:
                conn.execute(sql.SQL("ALTER SEQUENCE {} RESTART").format(sql.Identifier(seq)))


def _referrers_first(refers: dict[str, set[str]]) -> list[str]:
    """The tables ordered so that each comes before every table it refers to."""
    order: list[str] = []
    left = dict(refers)
    while left:
        referred = set().union(*left.values())
        ready = sorted(t for t in left if t not in referred)
        if not ready:
            raise RuntimeError(f"foreign keys form a cycle among {sorted(left)}")
        order += ready
        for t in ready:
            del left[t]
    return order
