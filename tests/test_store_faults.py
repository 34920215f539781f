"""A store that refuses writes for a while heals by itself (docs/faults.md): the group is held
and retried, health says NOT_SERVING meanwhile, reads keep working, one log line marks each
end of the outage, and nothing acknowledged is lost or applied twice."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stepstream.v1 import ingest_pb2_grpc, runs_pb2_grpc
from stepstream_server.config import Settings
from stepstream_server.embedded_redis import EmbeddedRedis
from stepstream_server.server import Service
from wire import Stream, create_run, fseries, read_points

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MB tmpfs (the tests run as root), unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def on_small_disk(small_disk: Path, redis_server: EmbeddedRedis) -> Settings:
    """A service's settings with its data directory (the SQLite store) on the small disk."""
    return Settings(
        address="127.0.0.1:0",
        data_dir=small_disk / "data",
        redis_url=redis_server.url,
        grace_seconds=1.0,
    )


async def health_status(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(resp.status)


async def until_health(channel: grpc.aio.Channel, status: int) -> None:
    for _ in range(600):  # bounded: about 30 s
        if await health_status(channel) == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health never became {status}")


def fill(where: Path) -> Path:
    """Fill the file system with one file until it is full; return that file."""
    filler = where / "filler"
    chunk = b"\0" * 65536
    # Unbuffered: a write cut short by the full disk leaves nothing for close() to retry.
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@contextlib.asynccontextmanager
async def writing(svc: Service) -> AsyncIterator[tuple[grpc.aio.Channel, object, Stream]]:
    """A channel, its RunService stub, and a stream open on a new run r1 as writer w."""
    async with grpc.aio.insecure_channel(svc.address) as ch:
        runs = runs_pb2_grpc.RunServiceStub(ch)
        await create_run(runs, "r1")
        s = Stream(ingest_pb2_grpc.IngestServiceStub(ch))
        await s.open("r1", writer_id="w")
        yield ch, runs, s


def batch(first: int, n: int) -> object:
    return fseries("m", [float(first + i) for i in range(n)], [float(first + i) for i in range(n)])


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "store outage" in r.getMessage()]


async def test_disk_full_heals_without_restart(
    small_disk: Path, on_small_disk: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = on_small_disk
    caplog.set_level(logging.INFO)
    svc = await Service.start(settings)
    try:
        async with writing(svc) as (ch, runs, s):
            first = await s.send(batch(0, 10))
            assert first.appended.accepted_count == 10
            filler = fill(small_disk)
            # 30,000 points (720 kB) cannot go to the WAL of a full disk: held, not answered.
            held = asyncio.create_task(s.send(batch(10, 30_000)))
            await until_health(ch, NOT_SERVING)
            assert not held.done()
            started = outage_lines(caplog)
            assert len(started) == 1
            assert "database or disk is full" in started[0]
            # Reads keep working during the outage.
            steps, _ = await read_points(runs, "r1", "m")
            assert steps == [float(i) for i in range(10)]

            filler.unlink()
            answer = await asyncio.wait_for(held, 60)
            assert answer.appended.accepted_count == 30_000
            assert not answer.appended.duplicate_batch
            await until_health(ch, SERVING)
            more = await s.send(batch(30_010, 5))
            assert more.appended.accepted_count == 5

            steps, values = await read_points(runs, "r1", "m")
            assert steps == [float(i) for i in range(30_015)]  # all there, none twice
            assert values == steps
        lines = outage_lines(caplog)
        assert len(lines) == 2 and lines[1].startswith("store outage over")
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    finally:
        await svc.stop()
    with sqlite3.connect(settings.data_dir / "stepstream.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _service_backends(url: str) -> list[int]:
    """PIDs of the service's backends that wait for a lock in the test's database."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'stepstream' AND wait_event_type = 'Lock'"
        ).fetchall()
    return [int(r[0]) for r in rows]


async def test_postgres_backend_killed_mid_commit_retries(
    tmp_path: Path,
    redis_server: EmbeddedRedis,
    fresh_pg_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(
        address="127.0.0.1:0",
        data_dir=tmp_path / "data",
        redis_url=redis_server.url,
        store=fresh_pg_url,
        grace_seconds=1.0,
    )
    svc = await Service.start(settings)
    try:
        async with writing(svc) as (ch, runs, s):
            assert (await s.send(batch(0, 3))).appended.accepted_count == 3
            # Hold the run's row: the next commit waits for it inside its transaction, where
            # its backend is killed (and the retries wait there too until the row is free).
            with psycopg.connect(fresh_pg_url) as blocker:
                blocker.execute("SELECT 1 FROM runs WHERE run_id = 'r1' FOR UPDATE")
                held = asyncio.create_task(s.send(batch(3, 100)))
                killed = 0
                for _ in range(600):
                    for pid in _service_backends(fresh_pg_url):
                        with psycopg.connect(fresh_pg_url, autocommit=True) as admin:
                            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                        killed += 1
                    if killed and svc.worker.outage.active:
                        break
                    await asyncio.sleep(0.05)
                assert killed
                await until_health(ch, NOT_SERVING)
                assert not held.done()
                blocker.rollback()
            answer = await asyncio.wait_for(held, 60)
            assert answer.appended.accepted_count == 100
            await until_health(ch, SERVING)
            again = await s.send(batch(3, 100), sequence=2)  # a naive re-send: a duplicate
            assert again.appended.duplicate_batch
            steps, _ = await read_points(runs, "r1", "m")
            assert steps == [float(i) for i in range(103)]
        lines = outage_lines(caplog)
        assert len(lines) == 2, lines
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    finally:
        await svc.stop()


def test_sqlite_errors_classified() -> None:
    from stepstream_server.store.sqlite import _transient

    def err(code: int) -> sqlite3.Error:
        exc = sqlite3.OperationalError("x")
        exc.sqlite_errorcode = code  # type: ignore[attr-defined]
        return exc

    assert _transient(err(sqlite3.SQLITE_FULL))
    assert _transient(err(sqlite3.SQLITE_IOERR_WRITE))  # extended codes count as their base
    assert _transient(err(sqlite3.SQLITE_BUSY))
    assert not _transient(err(sqlite3.SQLITE_CONSTRAINT_UNIQUE))
    assert not _transient(err(sqlite3.SQLITE_CORRUPT))
    assert not _transient(sqlite3.OperationalError("no code"))


def test_store_unavailable_is_a_retryable_status() -> None:
    from stepstream_server.store import StoreUnavailable

    exc = StoreUnavailable(OSError("database or disk is full\nmore"))
    assert exc.code == grpc.StatusCode.UNAVAILABLE
    assert exc.reason == "STORE_UNAVAILABLE"
    assert exc.message == "the store cannot take this now (database or disk is full); retry later"
    assert exc.metadata == {"detail": "database or disk is full"}


async def test_stop_during_an_outage_fails_held_batches_retryably(
    small_disk: Path, on_small_disk: Settings
) -> None:
    settings = on_small_disk
    svc = await Service.start(settings)
    stopped = False
    try:
        async with writing(svc) as (ch, _, s):
            filler = fill(small_disk)
            held = asyncio.create_task(s.send(batch(0, 30_000)))
            await until_health(ch, NOT_SERVING)
            await asyncio.wait_for(svc.stop(), 30)  # grace 1 s, then the held batch fails
            stopped = True
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await asyncio.wait_for(held, 30)
            # Both are re-sent by the client (cancelled at the grace deadline, or failed by
            # the drain when the stream was still there).
            assert exc.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    finally:
        if not stopped:
            await svc.stop()
    filler.unlink()
    svc = await Service.start(settings)  # the next service: the re-send lands once
    try:
        async with grpc.aio.insecure_channel(svc.address) as ch:
            s = Stream(ingest_pb2_grpc.IngestServiceStub(ch))
            opened = await s.open("r1", writer_id="w")
            assert opened.opened.last_committed_sequence == 0
            again = await s.send(batch(0, 30_000), sequence=1)
            assert again.appended.accepted_count == 30_000
            steps, _ = await read_points(runs_pb2_grpc.RunServiceStub(ch), "r1", "m")
            assert steps == [float(i) for i in range(30_000)]
    finally:
        await svc.stop()
