"""Mesh behaviour (docs/drain.md): a service that ends connections by age (GOAWAY, then the
grace) moves a streaming trainer from connection to connection with nothing lost, nothing
applied twice and no error surfaced; the flags reach gRPC as channel arguments; browser
connections that close early are a debug line, not an error."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import stepstream
from conftest import free_port
from procs import ServiceProcess
from stepstream.v1 import ingest_pb2_grpc, runs_pb2_grpc
from stepstream_server.cli import main
from stepstream_server.config import Settings
from stepstream_server.embedded_redis import EmbeddedRedis
from stepstream_server.server import Service, grpc_options
from wire import Stream, create_run, fseries

NAMES = [f"layer{i}/norm" for i in range(8)]
STEPS = 2500


def test_max_connection_age_moves_a_trainer_without_loss_or_error(
    tmp_path: Path, redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    age = ["--max-connection-age", "1", "--max-connection-age-grace", "0.5"]
    svc = ServiceProcess(tmp_path / "data", redis_server.url, free_port(), extra=age).start()
    try:
        caplog.set_level(logging.WARNING)
        run = stepstream.Run("aged", address=svc.address, max_batch_points=400)
        for step in range(STEPS):
            run.log_metrics({n: step * 0.5 + i for i, n in enumerate(NAMES)}, step=step)
            if step % 25 == 0:
                time.sleep(0.04)  # about 4 s of training: several connection ages
        run.wait(timeout=120, verbose=False)
        stats = run.stats
        assert stats.connections >= 3, stats  # the age ended connections, more than once
        assert stats.acknowledged_points == STEPS * len(NAMES), stats
        assert stats.rejected_points == 0 and not run.errors
        run.close(timeout=60)
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        for i, name in enumerate(NAMES):
            series = stepstream.read_series("aged", name, address=svc.address)
            assert series.steps == [float(s) for s in range(STEPS)], name
            assert series.values == [s * 0.5 + i for s in range(STEPS)], name
        assert svc.terminate() == 0
        log = (tmp_path / f"service-{svc.port}.log").read_text()
        assert " ERROR " not in log and "Traceback" not in log
    finally:
        svc.terminate()


def test_keepalive_and_age_flags_become_channel_arguments() -> None:
    default = dict(grpc_options(Settings()))
    assert default["grpc.keepalive_time_ms"] == 30_000
    assert default["grpc.keepalive_timeout_ms"] == 10_000
    assert default["grpc.max_connection_age_ms"] == 1_800_000
    assert default["grpc.max_connection_age_grace_ms"] == 30_000
    assert default["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    off = dict(grpc_options(Settings(max_connection_age_seconds=0, keepalive_seconds=5)))
    assert "grpc.max_connection_age_ms" not in off and off["grpc.keepalive_time_ms"] == 5_000


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--keepalive-time", "0", "--keepalive-time must be above 0 seconds"),
        ("--keepalive-timeout", "-1", "--keepalive-timeout must be above 0 seconds"),
        ("--max-connection-age-grace", "nan", "--max-connection-age-grace must be above 0"),
        ("--max-connection-age", "-5", "--max-connection-age must be 0 (off) or above"),
    ],
)
def test_bad_mesh_flags_are_refused(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", flag, value])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture
async def web_service(settings: Settings) -> AsyncIterator[Service]:
    svc = await Service.start(dataclasses.replace(settings, web_address="127.0.0.1:0"))
    try:
        yield svc
    finally:
        await svc.stop()


async def test_web_connections_closed_early_log_no_traceback(
    web_service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.insecure_channel(web_service.address) as ch:
        await create_run(runs_pb2_grpc.RunServiceStub(ch), "r1")
        s = Stream(ingest_pb2_grpc.IngestServiceStub(ch))
        await s.open("r1")
        for b in range(2):  # 100,000 points: an answer of megabytes
            steps = list(range(b * 50_000, (b + 1) * 50_000))
            await s.send(fseries("big", steps, [0.123456789] * 50_000))
        await s.close()
    assert web_service.web is not None
    port = web_service.web.port
    big = b"GET /api/series?run_id=r1&name=big&max_points=100000 HTTP/1.1\r\nHost: x\r\n\r\n"
    for request in (
        big,
        big,
        b"GET /runs/default/r1 HTTP/1.1\r\nHo",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the answer cannot fit
        raw.connect(("127.0.0.1", port))
        raw.setblocking(False)
        _, writer = await asyncio.open_connection(sock=raw)
        writer.write(request)
        await writer.drain()
        await asyncio.sleep(0.2)
        # Reset, not FIN: what a browser leaving a loading page may do.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
    async with aiohttp.ClientSession() as http, http.get(web_service.web.url + "/api/runs") as r:
        assert r.status == 200  # the view serves on
    await asyncio.sleep(0.2)
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert noisy == []


def test_aiohttp_early_close_errors_become_one_debug_line(
    web_service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """Where aiohttp does log a reset connection as an error (older versions, a handler that
    writes itself), the record is replaced by a debug line without traceback."""
    caplog.set_level(logging.DEBUG)
    server_log = logging.getLogger("aiohttp.server")
    try:
        raise ConnectionResetError("Cannot write to closing transport")
    except ConnectionResetError:
        server_log.exception("Error handling request from %s", "127.0.0.1")
    try:
        raise ValueError("a real bug")
    except ValueError:
        server_log.exception("Unhandled exception")
    seen = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert seen == [
        (
            "stepstream_server.web.app",
            "DEBUG",
            "web client closed the connection early: Cannot write to closing transport",
        ),
        ("aiohttp.server", "ERROR", "Unhandled exception"),  # anything else stays an error
    ]
