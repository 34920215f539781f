"""Real components for every test: an embedded redis-server on a free port, a SQLite store in
the test's own directory, and the grpc.aio service on a free loopback port."""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from stepstream.v1 import ingest_pb2_grpc, runs_pb2_grpc
from stepstream_server.config import Settings
from stepstream_server.embedded_redis import EmbeddedRedis
from stepstream_server.server import Service

sys.path.insert(0, str(Path(__file__).parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(tmp_path: Path, redis_server: EmbeddedRedis) -> Settings:
    return Settings(
        address="127.0.0.1:0",
        data_dir=tmp_path / "data",
        redis_url=redis_server.url,
        grace_seconds=1.0,
    )


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    svc = await Service.start(settings)
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def channel(service: Service) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(service.address) as ch:
        yield ch


@pytest.fixture
def runs(channel: grpc.aio.Channel) -> runs_pb2_grpc.RunServiceStub:
    return runs_pb2_grpc.RunServiceStub(channel)


@pytest.fixture
def ingest(channel: grpc.aio.Channel) -> ingest_pb2_grpc.IngestServiceStub:
    return ingest_pb2_grpc.IngestServiceStub(channel)
