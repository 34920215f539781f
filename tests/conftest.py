"""Real components for every test: an embedded redis-server on a free port, a store (SQLite in
the test's own directory; also PostgreSQL for modules marked `stores("sqlite", "postgresql")`,
in a database of this test run, emptied before each test), and the grpc.aio service on a free
loopback port."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from stepstream import _lifecycle
from stepstream.v1 import ingest_pb2_grpc, runs_pb2_grpc
from stepstream_server.config import Settings
from stepstream_server.embedded_redis import EmbeddedRedis
from stepstream_server.server import Service
from wire import Stream, create_run

sys.path.insert(0, str(Path(__file__).parent))

# The `auth_settings` and `secured` fixtures (a service with --auth required and its tokens).
pytest_plugins = ["secured"]
sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))  # redis_cluster.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's client spool ($STEPSTREAM_DIR) in its own directory, never the checkout."""
    path = tmp_path / "client-spool"
    monkeypatch.setenv("STEPSTREAM_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def stop_leaked_runs() -> Iterator[None]:
    """A Run that a test left open (it failed before close()) has its sender stopped after
    the test: it would go on reconnecting to a service that is gone, and log into later
    tests. Runs open before the test (a module's fixture) are left alone."""
    before = set(_lifecycle._open_runs)
    yield
    for run in set(_lifecycle._open_runs) - before:
        _lifecycle.untrack(run)
        run._sender.abort()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


# Under pytest-xdist (`make test`) each test module runs whole on one worker, in its own order,
# its module-scoped servers started once; the modules that write into the checkout
# (build/protodeps; client-node/'s npm ci and tsc, which the bench's Node case runs too) run on
# one worker one after another. Modules are handed out in collection order, LONG_MODULES first
# (their tests summed take minutes on a loaded 2-core machine), so that none of them starts
# last and holds one worker alone at the end; the others follow in pytest's order.
CHECKOUT_WRITERS = (
    "tests/test_bench_smoke.py",
    "tests/test_node_client.py",
    "tests/test_protos.py",
)
LONG_MODULES = (
    "tests/test_wide_runs.py",  # 1,000,000 series, restarted and walked
    "tests/test_bench_smoke.py",  # with the other CHECKOUT_WRITERS
    "tests/test_replicas.py",
    "tests/test_client_targets.py",
    "tests/test_bounds.py",
    "tests/test_spool.py",
    "tests/test_mesh.py",
    "tests/test_spool_faults.py",
    "tests/test_processes.py",
    "tests/test_auth.py",
)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = _module(nodeid)
            return "checkout" if module in CHECKOUT_WRITERS else module

    config.option.loadscopereorder = False  # collection order, not most tests first
    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a run without xdist keeps pytest's order
        rank = {module: i for i, module in enumerate(LONG_MODULES)}
        items.sort(key=lambda item: rank.get(_module(item.nodeid), len(rank)))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("stores")
        metafunc.parametrize("store_kind", marker.args if marker else ("sqlite",))


@pytest.fixture(scope="session")
def pg_run_database() -> Iterator[str]:
    """One PostgreSQL database for this test run, migrated once."""
    from pg import create_database, drop_database
    from stepstream_server.store.postgres import PostgresStore

    url = create_database()
    PostgresStore(url).close()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped after it."""
    from pg import create_database, drop_database

    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def store_url(store_kind: str, request: pytest.FixtureRequest) -> str | None:
    """None for the default SQLite store, else a PostgreSQL database emptied for this test."""
    if store_kind == "sqlite":
        return None
    from pg import empty_database

    url: str = request.getfixturevalue("pg_run_database")
    empty_database(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, redis_server: EmbeddedRedis, store_url: str | None) -> Settings:
    return Settings(
        address="127.0.0.1:0",
        data_dir=tmp_path / "data",
        redis_url=redis_server.url,
        store=store_url,
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


@pytest.fixture
async def stream(
    runs: runs_pb2_grpc.RunServiceStub, ingest: ingest_pb2_grpc.IngestServiceStub
) -> AsyncIterator[Stream]:
    """An open ingest stream into a fresh run "r1"."""
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    yield s
    await s.close()
