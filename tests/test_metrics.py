"""Prometheus metrics (`--metrics-address`): a known workload through a real service, then a
real scrape of /metrics over HTTP, and the exact value of every counter it moved."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from stepstream.v1 import ingest_pb2_grpc, runs_pb2, runs_pb2_grpc
from stepstream_server.auth import SecuritySettings, check_binding
from stepstream_server.config import Settings
from stepstream_server.metrics import Metrics
from stepstream_server.server import Service
from wire import Stream, create_run, error_reason, fseries, rpc_reason

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def metered(settings: Settings) -> AsyncIterator[Service]:
    svc = await Service.start(dataclasses.replace(settings, metrics_address="127.0.0.1:0"))
    try:
        yield svc
    finally:
        await svc.stop()


async def test_counters_after_a_known_workload(metered: Service) -> None:
    assert metered.metrics_endpoint is not None
    url = metered.metrics_endpoint.url
    async with grpc.aio.insecure_channel(metered.address) as ch:
        runs = runs_pb2_grpc.RunServiceStub(ch)
        ingest = ingest_pb2_grpc.IngestServiceStub(ch)
        await create_run(runs, "r1")
        with pytest.raises(grpc.aio.AioRpcError) as exists:
            await create_run(runs, "r1")
        assert exists.value.code() == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await runs.GetRun(runs_pb2.GetRunRequest(run_id="nope"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        s = Stream(ingest)
        await s.open("r1")
        first = await s.send(fseries("loss", [0, 1, 2], [0.5, 0.4, 0.3]))
        assert first.appended.accepted_count == 3
        # step 1 below the floor (rejected), step 2 the same point again (duplicate), 3 new;
        # "acc" not strictly increasing inside the batch (both points rejected).
        second = await s.send(
            fseries("loss", [1, 2, 3], [0.4, 0.3, 0.2]), fseries("acc", [5, 4], [0.1, 0.2])
        )
        assert (second.appended.accepted_count, second.appended.duplicate_count) == (1, 1)
        assert sorted((r.reason, r.count) for r in second.appended.rejections) == [
            ("STEPS_NOT_STRICTLY_INCREASING", 2),
            ("STEP_NOT_INCREASING", 1),
        ]
        again = await s.send(fseries("loss", [1, 2, 3], [0.4, 0.3, 0.2]), sequence=2)
        assert again.appended.duplicate_batch
        zero = await s.send(fseries("loss", [9], [0.0]), sequence=0)
        gap = await s.send(fseries("loss", [9], [0.0]), sequence=7)
        assert [error_reason(r.error) for r in (zero, gap)] == ["INVALID_SEQUENCE", "SEQUENCE_GAP"]

        during = await scrape(url)
        assert value(during, "stepstream_open_streams") == 1
        await runs.FinishRun(runs_pb2.FinishRunRequest(run_id="r1"))
        stopped = await s.send(fseries("loss", [10], [0.0]))
        assert error_reason(stopped.error) == "RUN_NOT_ACTIVE"
        await s.close()
        assert await s.call.read() is grpc.aio.EOF
        assert (await s.call.code()) == grpc.StatusCode.OK

        unknown = Stream(ingest)
        with pytest.raises(grpc.aio.AioRpcError) as no_run:
            await unknown.open("nope")
            await unknown.call.read()
        assert rpc_reason(no_run.value) == "RUN_NOT_FOUND"

    m = await scrape(url)
    assert value(m, "stepstream_points_accepted_total") == 4
    assert value(m, "stepstream_points_duplicate_total") == 1
    assert value(m, "stepstream_points_rejected_total", reason="STEP_NOT_INCREASING") == 1
    assert value(m, "stepstream_points_rejected_total", reason="STEPS_NOT_STRICTLY_INCREASING") == 2
    assert value(m, "stepstream_batches_total", result="appended") == 2
    assert value(m, "stepstream_batches_total", result="duplicate") == 1
    assert value(m, "stepstream_batches_total", result="rejected") == 3
    for reason in ("INVALID_SEQUENCE", "SEQUENCE_GAP", "RUN_NOT_ACTIVE"):
        assert value(m, "stepstream_batches_rejected_total", reason=reason) == 1, reason
    rpcs = {
        (dict(labels)["method"], dict(labels)["code"]): v
        for (name, labels), v in m.items()
        if name == "stepstream_rpcs_total" and not dict(labels)["method"].startswith("Health/")
    }
    assert rpcs == {
        ("RunService/CreateRun", "OK"): 1,
        ("RunService/CreateRun", "ALREADY_EXISTS"): 1,
        ("RunService/GetRun", "NOT_FOUND"): 1,
        ("RunService/FinishRun", "OK"): 1,
        ("IngestService/AppendPoints", "OK"): 1,
        ("IngestService/AppendPoints", "NOT_FOUND"): 1,
    }
    # Every batch that reached the worker was committed in a group of its own (each was
    # answered before the next was sent): two appended and the one refused at its turn.
    assert value(m, "stepstream_group_commit_batches_count") == 3
    assert value(m, "stepstream_group_commit_batches_sum") == 3
    assert value(m, "stepstream_group_commit_points_sum") == 4
    assert value(m, "stepstream_group_commit_seconds_count") == 3
    assert value(m, "stepstream_store_commit_seconds_count") == 3
    assert value(m, "stepstream_redis_check_seconds_count") >= 2
    assert value(m, "stepstream_floor_loads_total") == 1
    # "loss" only: "acc" was refused while decoding and never reached the floors.
    assert value(m, "stepstream_floor_series_loaded_total") == 1
    assert value(m, "stepstream_open_streams") == 0
    assert value(m, "stepstream_queued_points") == 0
    assert value(m, "stepstream_draining") == 0
    assert value(m, "stepstream_auth_failures_total", reason="TOKEN_MISSING") == 0


class Refuse(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """An authorization check at the interceptor seam: refuses every call the way the auth
    interceptor does, telling its `on_failure` hook the reason."""

    def __init__(
        self, code: grpc.StatusCode, reason: str, on_failure: Callable[[str], None]
    ) -> None:
        self.code, self.reason, self.on_failure = code, reason, on_failure

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        async def refuse(request: Any, context: Any) -> Any:
            self.on_failure(self.reason)
            await context.abort(self.code, f"{self.reason}: refused")

        return grpc.unary_unary_rpc_method_handler(refuse)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING"),
        (grpc.StatusCode.PERMISSION_DENIED, "ROLE_INSUFFICIENT"),
    ],
)
async def test_refused_calls_count_as_auth_failures_by_reason(
    code: grpc.StatusCode, reason: str
) -> None:
    metrics = Metrics()
    refuse = Refuse(code, reason, metrics.auth_failure)
    server = grpc.aio.server(interceptors=[metrics.interceptor(), refuse])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = runs_pb2_grpc.RunServiceStub(ch)
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetRun(runs_pb2.GetRunRequest(run_id="r"))
                assert err.value.code() == code
    finally:
        await server.stop(None)
    text = metrics.exposition().decode()
    assert f'stepstream_auth_failures_total{{reason="{reason}"}} 2.0' in text
    assert f'stepstream_rpcs_total{{code="{code.name}",method="RunService/GetRun"}} 2.0' in text


def test_each_service_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()  # a second set of the same names registers fine
    one.batch_rejected("SEQUENCE_GAP")
    assert b'stepstream_batches_rejected_total{reason="SEQUENCE_GAP"} 1.0' in one.exposition()
    assert b"SEQUENCE_GAP" not in two.exposition()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("9464", "--metrics-address must be HOST:PORT, got '9464'"),
        ("127.0.0.1:http", "--metrics-address must be HOST:PORT, got '127.0.0.1:http'"),
        ("in use", "--metrics-address 127.0.0.1:{port}: cannot listen there"),
    ],
)
async def test_bad_metrics_address_refuses_to_start(
    settings: Settings, address: str, message: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if address == "in use":
            address = f"127.0.0.1:{port}"
        with pytest.raises(ValueError) as refused:
            await Service.start(dataclasses.replace(settings, metrics_address=address))
    assert str(refused.value).startswith(message.format(port=port))
    # Nothing was left running: the same data directory starts at once.
    svc = await Service.start(settings)
    await svc.stop()


PUBLIC_METRICS_REFUSED = (
    "--metrics-address 0.0.0.0:9464 is not a loopback address, and /metrics answers anyone who"
    " can reach it without a token (--auth required does not cover it). Add --metrics-public"
    " to serve it there on purpose (e.g. for a Prometheus on another host), or bind it to"
    " 127.0.0.1"
)


def test_a_non_loopback_metrics_address_needs_metrics_public_or_insecure() -> None:
    grpc_bind = {"--address": "127.0.0.1:50051"}
    for security in (SecuritySettings(), SecuritySettings(auth="required")):
        with pytest.raises(ValueError) as refused:
            check_binding(security, grpc_bind, "0.0.0.0:9464")
        assert str(refused.value) == PUBLIC_METRICS_REFUSED
    check_binding(SecuritySettings(metrics_public=True), grpc_bind, "0.0.0.0:9464")
    check_binding(SecuritySettings(insecure=True), grpc_bind, "0.0.0.0:9464")
    for loopback in ("127.0.0.1:9464", "localhost:9464", "[::1]:9464"):
        check_binding(SecuritySettings(), grpc_bind, loopback)
    # Not HOST:PORT: the endpoint refuses it with its own message (the test above).
    check_binding(SecuritySettings(), grpc_bind, "9464")


def test_serve_refuses_a_public_metrics_address_and_says_why(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stepstream_server.cli", "serve", "--address", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "data"), "--auth", "required",
         "--metrics-address", "0.0.0.0:9464"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert PUBLIC_METRICS_REFUSED in result.stderr


async def test_metrics_public_serves_metrics_on_every_interface(settings: Settings) -> None:
    svc = await Service.start(
        dataclasses.replace(
            settings,
            metrics_address="0.0.0.0:0",
            security=SecuritySettings(metrics_public=True),
        )
    )
    try:
        assert svc.metrics_endpoint is not None
        samples = await scrape(f"http://127.0.0.1:{svc.metrics_endpoint.port}/metrics")
        assert samples[("stepstream_open_streams", frozenset())] == 0.0
    finally:
        await svc.stop()
