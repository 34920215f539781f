"""Prometheus metrics of one service (`--metrics-address HOST:PORT`, path `/metrics`).

Every metric lives in the registry of one `Metrics` object, one per `Service` (tests run
several services in one process; the global default registry would mix them and refuse the
second set of names). The hot path counts per batch and per group, never per point: the
servicer counts each answered batch, the worker each committed group, `MeteredFloors` each
Redis round trip, `RpcMetrics` (a server interceptor) each call. Gauges that mirror state
(queued points) are read when scraped, costing nothing in between.

The endpoint is an aiohttp application on the service's event loop (the web view's stack).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.aiohttp import make_aiohttp_handler

from .model import BatchFailure, Outcome
from .ordering import CheckAnswer, CheckRequest, FloorCache

# Seconds: from a millisecond Redis round trip to a store commit stalled for seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Group sizes go up to WorkerLimits' bounds (512 batches, 500,000 points).
GROUP_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
GROUP_POINT_BUCKETS = (1, 10, 100, 1_000, 10_000, 50_000, 100_000, 250_000, 500_000)


class Metrics:
    """The service's metrics and the calls that move them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.points_accepted = Counter(
            "stepstream_points_accepted_total", "Points committed to the store.", registry=r
        )
        self.points_duplicate = Counter(
            "stepstream_points_duplicate_total",
            "Points dropped as duplicates: the same step and value already stored.",
            registry=r,
        )
        self.points_rejected = Counter(
            "stepstream_points_rejected_total",
            "Points rejected inside answered batches, by reason (e.g. STEP_NOT_INCREASING).",
            ["reason"],
            registry=r,
        )
        self.batches = Counter(
            "stepstream_batches_total",
            "Batches answered: appended (committed now), duplicate (a re-sent batch answered"
            " from its stored outcome) or rejected (a whole-batch error).",
            ["result"],
            registry=r,
        )
        self.batches_rejected = Counter(
            "stepstream_batches_rejected_total",
            "Whole batches refused, by ErrorInfo reason.",
            ["reason"],
            registry=r,
        )
        self.group_batches = Histogram(
            "stepstream_group_commit_batches",
            "Batches per group commit.",
            buckets=GROUP_BATCH_BUCKETS,
            registry=r,
        )
        self.group_points = Histogram(
            "stepstream_group_commit_points",
            "Accepted points per group commit.",
            buckets=GROUP_POINT_BUCKETS,
            registry=r,
        )
        self.group_seconds = Histogram(
            "stepstream_group_commit_seconds",
            "From a group's judging to its acknowledgements (Redis check, store commit).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_commit_seconds = Histogram(
            "stepstream_store_commit_seconds",
            "One group's store transaction.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_check_seconds = Histogram(
            "stepstream_redis_check_seconds",
            "One pipelined ordering check of a group against the floors in Redis.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.floor_loads = Counter(
            "stepstream_floor_loads_total",
            "Runs whose floors were opened in Redis at a new epoch (after a restart, a fence"
            " move or an emptied Redis).",
            registry=r,
        )
        self.floor_series_loaded = Counter(
            "stepstream_floor_series_loaded_total",
            "Series floors loaded from the store into Redis.",
            registry=r,
        )
        self.queued_points = Gauge(
            "stepstream_queued_points",
            "Points waiting for their group commit.",
            registry=r,
        )
        self.open_streams = Gauge(
            "stepstream_open_streams", "AppendPoints streams open now.", registry=r
        )
        self.rpcs = Counter(
            "stepstream_rpcs_total",
            "Finished RPCs by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.auth_failures = Counter(
            "stepstream_auth_failures_total",
            "Requests refused by authorization, by reason (TOKEN_MISSING, ...).",
            ["reason"],
            registry=r,
        )
        self.draining = Gauge(
            "stepstream_draining", "1 once the service drains (SIGTERM).", registry=r
        )
        # The children the hot path moves, looked up once (labels() takes a lock each time).
        self._appended = self.batches.labels("appended")
        self._duplicate = self.batches.labels("duplicate")
        self._rejected = self.batches.labels("rejected")

    # -- hooks ------------------------------------------------------------------------------

    @staticmethod
    def clock() -> float:
        return time.perf_counter()

    def watch_queue(self, queued: Callable[[], float]) -> None:
        """The queued-points gauge reads `queued()` at each scrape."""
        self.queued_points.set_function(queued)

    def batch_answered(self, outcome: Outcome) -> None:
        """One batch's outcome, as its stream answers it."""
        if isinstance(outcome, BatchFailure):
            self.batch_rejected(outcome.reason)
            return
        if outcome.duplicate_batch:  # its points were counted when it committed
            self._duplicate.inc()
            return
        self._appended.inc()
        if outcome.accepted:
            self.points_accepted.inc(outcome.accepted)
        if outcome.duplicates:
            self.points_duplicate.inc(outcome.duplicates)
        for rejection in outcome.rejections:
            self.points_rejected.labels(rejection.reason).inc(rejection.count)

    def batch_rejected(self, reason: str) -> None:
        self._rejected.inc()
        self.batches_rejected.labels(reason).inc()

    def group_committed(self, batches: int, points: int, started: float) -> None:
        self.group_batches.observe(batches)
        self.group_points.observe(points)
        self.group_seconds.observe(time.perf_counter() - started)

    def auth_failure(self, reason: str) -> None:
        """A request refused by authorization (`TOKEN_MISSING`, `PROJECT_NOT_ALLOWED`, ...):
        the `on_failure` hook of the auth interceptor and of the web view's check."""
        self.auth_failures.labels(reason).inc()

    def rpc_finished(self, method: str, code: grpc.StatusCode) -> None:
        self.rpcs.labels(method, code.name).inc()

    def interceptor(self) -> RpcMetrics:
        return RpcMetrics(self)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# -- floors: Redis check latency and loads ---------------------------------------------------


class MeteredFloors(FloorCache):
    """The floor cache, timing each check and counting each load from the store."""

    def __init__(self, client: Any, *, replica: str, lease_seconds: float, metrics: Metrics):
        super().__init__(client, replica=replica, lease_seconds=lease_seconds)
        self.metrics = metrics

    async def check(self, token: str, requests: Sequence[CheckRequest]) -> list[CheckAnswer]:
        started = time.perf_counter()
        try:
            return await super().check(token, requests)
        finally:
            self.metrics.redis_check_seconds.observe(time.perf_counter() - started)

    async def load(self, project: str, run_id: str, incarnation_id: str, epoch: int) -> None:
        await super().load(project, run_id, incarnation_id, epoch)
        self.metrics.floor_loads.inc()

    async def fill(
        self,
        project: str,
        run_id: str,
        incarnation_id: str,
        epoch: int,
        floors: dict[str, tuple[float, str] | None],
    ) -> None:
        await super().fill(project, run_id, incarnation_id, epoch, floors)
        self.metrics.floor_series_loaded.inc(len(floors))


# -- RPCs by method and code: a server interceptor -------------------------------------------


class RpcMetrics(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every call by method and final status code. First in the chain, so that calls
    an authorization interceptor refuses are counted too."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED itself
            return handler
        method = handler_call_details.method.rsplit(".", 1)[-1]  # "IngestService/AppendPoints"
        return _wrapped(handler, method, self.metrics)


def _finish(metrics: Metrics, method: str, context: Any, error: BaseException | None) -> None:
    code = context.code()  # set by abort() or set_code(); None for a call that returned
    if not isinstance(code, grpc.StatusCode):
        if error is None:
            code = grpc.StatusCode.OK
        elif isinstance(error, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        else:
            code = grpc.StatusCode.UNKNOWN
    metrics.rpc_finished(method, code)


def _wrapped(handler: Any, method: str, metrics: Metrics) -> Any:
    def unary_response(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: Any) -> Any:
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                _finish(metrics, method, context, exc)
                raise
            _finish(metrics, method, context, None)
            return response

        return call

    def stream_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):  # writes with context.write
            return unary_response(behavior)

        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            responses = behavior(request, context)
            try:
                async for response in responses:
                    yield response
            except BaseException as exc:
                _finish(metrics, method, context, exc)
                raise
            else:
                _finish(metrics, method, context, None)
            finally:
                await responses.aclose()  # its own cleanup now, not when collected

        return call

    common = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary_response(handler.unary_unary), **common)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream_response(handler.unary_stream), **common)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary_response(handler.stream_unary), **common)
    return grpc.stream_stream_rpc_method_handler(stream_response(handler.stream_stream), **common)


# -- the endpoint ----------------------------------------------------------------------------


class MetricsEndpoint:
    """`/metrics` over HTTP on its own address; `start()` binds, `stop()` closes."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.port = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    @classmethod
    async def start(cls, address: str, metrics: Metrics) -> MetricsEndpoint:
        from .web.links import base_url, split_address

        try:
            host, port = split_address(address)
        except ValueError:
            raise ValueError(f"--metrics-address must be HOST:PORT, got {address!r}") from None
        endpoint = cls(metrics)
        app = web.Application()
        # The library's handler: text or OpenMetrics by Accept, `name[]` filters, gzip.
        app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            raise ValueError(f"--metrics-address {address}: cannot listen there ({exc})") from None
        endpoint._runner = runner
        endpoint.port = int(runner.addresses[0][1])
        endpoint.url = base_url(host, endpoint.port) + "/metrics"
        return endpoint

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
