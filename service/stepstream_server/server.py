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
from stepstream.v1 import ingest_pb2, runs_pb2, tokens_pb2, tokens_pb2_grpc

from . import collector
from .auth import Security, preflight
from .auth.token_service import TokenServicer
from .config import Settings
from .datadir import DataDirLock
from .embedded_redis import EmbeddedRedis, RedisWatch
from .ingest import IngestWorker, WorkerLimits
from .judge import new_replica_id
from .metrics import MeteredFloors, Metrics, MetricsEndpoint
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
    tokens_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name,
)
MAX_PENDING_CALLS = 100_000
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Clients may ping every 10 s, with or without calls (the Python client pings every 20 s);
    # the service's own keepalive and connection age come from Settings (grpc_options).
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


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """The server's channel arguments: GRPC_OPTIONS, keepalive, and the connection age after
    which gRPC sends GOAWAY so that a load balancer can move long streams (docs/drain.md)."""
    options = [
        *GRPC_OPTIONS,
        ("grpc.keepalive_time_ms", max(1, int(settings.keepalive_seconds * 1000))),
        ("grpc.keepalive_timeout_ms", max(1, int(settings.keepalive_timeout_seconds * 1000))),
    ]
    if settings.max_connection_age_seconds > 0:
        options += [
            ("grpc.max_connection_age_ms", max(1, int(settings.max_connection_age_seconds * 1000))),
            (
                "grpc.max_connection_age_grace_ms",
                max(1, int(settings.max_connection_age_grace_seconds * 1000)),
            ),
        ]
    return options


class DrainingHealth(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """The library's health servicer, with a Watch that ends once it has sent NOT_SERVING for
    the drain: an open Watch would otherwise hold the service until the grace deadline."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: dict[str, int] = {}
        self.shutting_down = False
        self._changed = asyncio.Condition()

    async def set(self, service: str, status: int) -> None:
        await super().set(service, status)
        async with self._changed:
            if not self.shutting_down:
                self.statuses[service] = status
                self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        async with self._changed:
            self.shutting_down = True
            for service in self.statuses:
                self.statuses[service] = health_pb2.HealthCheckResponse.NOT_SERVING
            self._changed.notify_all()

    async def Watch(self, request: Any, context: Any) -> None:
        def current() -> int:
            unknown: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            return self.statuses.get(request.service, unknown)

        last = None
        while True:
            async with self._changed:  # written outside it: a slow watcher blocks no one
                status = current()
                while status == last and not self.shutting_down:
                    await self._changed.wait()
                    status = current()
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self.shutting_down:
                return  # NOT_SERVING is sent; the call ends OK


class Readiness:
    """gRPC health: SERVING only while every part the service needs is up (the embedded Redis,
    the store taking writes). Reads keep working whatever it says."""

    def __init__(self) -> None:
        self.health = DrainingHealth()
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
    ingest: IngestServicer | None = None
    metrics: Metrics | None = None
    metrics_endpoint: MetricsEndpoint | None = None
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
        # Before anything starts: nothing to undo.
        preflight(settings.security, binds, settings.metrics_address)
        metrics = Metrics()
        # Bound first: an address in use fails the start before anything else runs.
        endpoint = None
        if settings.metrics_address is not None:
            endpoint = await MetricsEndpoint.start(settings.metrics_address, metrics)
        # One process per data directory: the embedded store and Redis live there.
        lock = None
        embedded = None
        store = None
        try:
            if settings.store is None or settings.redis_url is None:
                lock = DataDirLock(settings.data_dir).acquire()
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
            security = await Security.start(
                settings.security, settings.store_url, store, on_failure=metrics.auth_failure
            )
        except BaseException:
            if store is not None:
                await asyncio.to_thread(store.close)
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)
            if lock is not None:
                lock.release()
            if endpoint is not None:
                await endpoint.stop()
            raise
        floors = MeteredFloors(
            client, replica=new_replica_id(), lease_seconds=settings.lease_seconds, metrics=metrics
        )
        readiness = Readiness()
        worker = IngestWorker(
            store,
            floors,
            limits=WorkerLimits(max_queued_points=settings.max_queued_points),
            on_store_serving=functools.partial(readiness.set, "store"),
            metrics=metrics,
        )
        worker.start()
        runs, reader = RunManager(store, worker), Reader(store)
        # Bound before the servicer exists: runs carry links with the web view's real port.
        web = None
        if settings.web_address is not None:
            web = await WebView.start(settings.web_address, runs, reader, security)
        # The metrics interceptor comes first: it counts what later interceptors refuse too.
        server = grpc.aio.server(
            options=grpc_options(settings),
            interceptors=[metrics.interceptor(), *security.interceptors],
        )
        ingest = IngestServicer(worker, metrics)
        server.add_generic_rpc_handlers((ingest_handler(ingest),))
        server.add_generic_rpc_handlers(
            (run_handler(RunServicer(runs, reader, web.url if web is not None else "")),)
        )
        tokens_pb2_grpc.add_TokenServiceServicer_to_server(TokenServicer(security.tokens), server)
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
            if endpoint is not None:
                await endpoint.stop()
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
            ingest=ingest,
            metrics=metrics,
            metrics_endpoint=endpoint,
            security=security,
        )
        await readiness.set("store", True)
        if embedded is not None:
            service.watch = RedisWatch(embedded, functools.partial(readiness.set, "redis"))
            service.watch.start()
        return service

    async def stop(self) -> None:
        """The drain (docs/drain.md), all within the grace period: health NOT_SERVING, no new
        calls, every ingest stream answers what it took and ends with SERVICE_DRAINING, calls
        still running at the deadline are cancelled (a long read is interrupted in the
        store), what is queued commits; then the store closes and the Redis this service
        started stops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.grace_seconds
        await self.health.enter_graceful_shutdown()
        if self.metrics is not None:
            self.metrics.draining.set(1)
        stopping = asyncio.ensure_future(self.server.stop(self.settings.grace_seconds))
        streams = self.ingest.drain() if self.ingest is not None else 0
        if streams:
            log.info("draining %d ingest stream(s)", streams)
        for part in (self.web, self.metrics_endpoint):
            if part is not None:
                await part.stop()
        if streams and self.ingest is not None:
            try:
                await asyncio.wait_for(self.ingest.drained(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                log.info(
                    "%d ingest stream(s) still open at the grace deadline: cut (their clients"
                    " re-send what was not answered)",
                    self.ingest.open_streams,
                )
        await stopping
        await self.worker.drain_and_stop(timeout=max(0.0, deadline - loop.time()))
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
    collector.tune()  # after startup: what it made is never garbage (collector.py)
    redis_where = f"embedded at {service.embedded.url}" if service.embedded else settings.redis_url
    log.info(
        "stepstream listening on %s (store: %s, redis: %s)",
        service.address,
        _redact(settings.store_url),
        redis_where,
    )
    if service.web is not None:
        log.info("stepstream web view on %s", service.web.url)
    if service.metrics_endpoint is not None:
        log.info("stepstream metrics on %s", service.metrics_endpoint.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stepstream draining (grace %.1fs)", settings.grace_seconds)
    await service.stop()
    log.info("stepstream stopped")
