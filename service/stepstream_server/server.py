"""Wiring: store, Redis, worker, servicers, health and reflection in one grpc.aio server, and
the optional read-only web view on the same event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from dataclasses import dataclass
from typing import Any

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from stepstream.v1 import ingest_pb2, runs_pb2

from .auth import Security, preflight
from .config import Settings
from .datadir import DataDirLock
from .embedded_redis import EmbeddedRedis, RedisWatch
from .ingest import IngestWorker, WorkerLimits
from .judge import new_replica_id
from .ordering import FloorCache
from .reading import Reader
from .run_servicer import RunServicer, run_handler
from .runs import RunManager
from .servicer import IngestServicer, ingest_handler
from .store import AsyncStore, open_store
from .web import WebView

log = logging.getLogger("stepstream")

SERVICE_NAMES = (
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    runs_pb2.DESCRIPTOR.services_by_name["RunService"].full_name,
)
MAX_PENDING_CALLS = 100_000
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Calls that arrived but that the asyncio server has not taken up yet: beyond 3,000 of
    # them (Core's default hard limit) new ones are refused with RESOURCE_EXHAUSTED "Too many
    # pending requests for this server", which a grpc.aio client that is still writing sees
    # as INTERNAL "Internal error from Core". A burst of thousands of streams opened at once
    # is normal here (every rank of a job at start), so queue them instead (docs/faults.md).
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
]


class Readiness:
    """gRPC health: SERVING only while every part the service needs is up (the embedded Redis,
    the store taking writes). Reads keep working whatever it says."""

    def __init__(self) -> None:
        self.health: Any = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.down: set[str] = set()

    async def set(self, part: str, up: bool) -> None:
        if up:
            self.down.discard(part)
        else:
            self.down.add(part)
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING
            if self.down
            else health_pb2.HealthCheckResponse.SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)


@dataclass
class Service:
    """A running service; `stop()` drains and releases everything it started."""

    settings: Settings
    server: grpc.aio.Server
    port: int
    worker: IngestWorker
    store: AsyncStore
    redis_client: Any  # redis.asyncio.Redis or RedisCluster
    readiness: Readiness
    embedded: EmbeddedRedis | None
    lock: DataDirLock | None
    watch: RedisWatch | None = None
    web: WebView | None = None
    security: Security | None = None

    @property
    def health(self) -> Any:
        return self.readiness.health

    @property
    def address(self) -> str:
        host = self.settings.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @classmethod
    async def start(cls, settings: Settings) -> Service:
        binds = {"--address": settings.address}
        if settings.web_address is not None:
            binds["--web-address"] = settings.web_address
        preflight(settings.security, binds)  # before anything starts: nothing to undo
        # One process per data directory: the embedded store and Redis live there.
        lock = None
        if settings.store is None or settings.redis_url is None:
            lock = DataDirLock(settings.data_dir).acquire()
        embedded = None
        store = None
        try:
            redis_url = settings.redis_url
            if redis_url is None:
                embedded = EmbeddedRedis(settings.data_dir / "redis")
                await asyncio.to_thread(embedded.start)
                redis_url = embedded.url
            client = redis_client(redis_url, cluster=settings.redis_cluster)
            store = AsyncStore(
                await asyncio.to_thread(
                    open_store, settings.store_url, sqlite_synchronous=settings.sqlite_synchronous
                ),
                read_threads=settings.read_threads,
            )
            security = await Security.start(settings.security, settings.store_url, store)
        except BaseException:
            if store is not None:
                await asyncio.to_thread(store.close)
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)
            if lock is not None:
                lock.release()
            raise
        floors = FloorCache(client, replica=new_replica_id(), lease_seconds=settings.lease_seconds)
        readiness = Readiness()
        worker = IngestWorker(
            store,
            floors,
            limits=WorkerLimits(max_queued_points=settings.max_queued_points),
            on_store_serving=functools.partial(readiness.set, "store"),
        )
        worker.start()
        runs, reader = RunManager(store, worker), Reader(store)
        # Bound before the servicer exists: runs carry links with the web view's real port.
        web = None
        if settings.web_address is not None:
            web = await WebView.start(settings.web_address, runs, reader, security)
        server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=security.interceptors)
        server.add_generic_rpc_handlers((ingest_handler(IngestServicer(worker)),))
        server.add_generic_rpc_handlers(
            (run_handler(RunServicer(runs, reader, web.url if web is not None else "")),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(readiness.health, server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        port = security.bind(server, settings.address)
        if port == 0:
            if web is not None:
                await web.stop()
            raise RuntimeError(f"could not bind {settings.address}")
        await server.start()
        service = cls(
            settings,
            server,
            port,
            worker,
            store,
            client,
            readiness,
            embedded,
            lock,
            web=web,
            security=security,
        )
        await readiness.set("store", True)
        if embedded is not None:
            service.watch = RedisWatch(embedded, functools.partial(readiness.set, "redis"))
            service.watch.start()
        return service

    async def stop(self) -> None:
        """Stop taking work, let streams finish for the grace period (then cancel them: a
        long read is interrupted in the store), commit what is queued, then close the store
        and stop the Redis this service started."""
        if self.web is not None:
            await self.web.stop()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_seconds)
        await self.worker.drain_and_stop(timeout=self.settings.grace_seconds)
        if self.watch is not None:
            await self.watch.stop()
        await self.redis_client.aclose()
        if self.security is not None:
            await self.security.close()
        await asyncio.to_thread(self.store.close)
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
        if self.lock is not None:
            self.lock.release()


def redis_client(url: str, *, cluster: bool) -> Any:
    """No silent retries: a re-run check script would judge points against floors it moved
    itself. The judge moves to a new epoch instead (judge.py)."""
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, retry=Retry(NoBackoff(), 0))
    return aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0))


def _redact(url: str) -> str:
    """The store URL without its password, for the log."""
    head, sep, tail = url.rpartition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, credentials = head.partition("//")
    return f"{scheme}//{credentials.split(':', 1)[0]}:***@{tail}"


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then drain and stop."""
    service = await Service.start(settings)
    redis_where = f"embedded at {service.embedded.url}" if service.embedded else settings.redis_url
    log.info(
        "stepstream listening on %s (store: %s, redis: %s)",
        service.address,
        _redact(settings.store_url),
        redis_where,
    )
    if service.web is not None:
        log.info("stepstream web view on %s", service.web.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stepstream draining (grace %.1fs)", settings.grace_seconds)
    await service.stop()
    log.info("stepstream stopped")
