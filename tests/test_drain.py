"""SIGTERM drain (docs/drain.md): health NOT_SERVING first, every open stream gets the answers of
what it handed over and then UNAVAILABLE / SERVICE_DRAINING, the client reconnects and re-sends,
nothing is lost or applied twice, no ERROR line or traceback is logged, and the service exits
without waiting out its grace period."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import stepstream
from conftest import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc
from procs import ServiceProcess
from stepstream.v1 import ingest_pb2, ingest_pb2_grpc, runs_pb2_grpc
from stepstream_server.config import Settings
from stepstream_server.embedded_redis import EmbeddedRedis
from stepstream_server.server import Service
from wire import Stream, create_run, fseries, rpc_reason

HERE = Path(__file__).parent
MIN_STEPS = 1500
NAMES = [f"layer{i}/norm" for i in range(10)]  # trainer_proc.py's


def log_problems(text: str) -> list[str]:
    return [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]


def test_sigterm_with_three_trainers_loses_nothing(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    # A long grace: the drain must end the streams itself, not wait for the deadline.
    svc = ServiceProcess(tmp_path / "data", redis_server.url, free_port(), extra=["--grace", "20"])
    svc.start()
    log_path = tmp_path / f"service-{svc.port}.log"
    release = tmp_path / "release"  # the trainers stream until it exists
    trainers = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "trainer_proc.py"),
                svc.address,
                f"t{i}",
                str(release),
                str(MIN_STEPS),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    try:
        for t in trainers:
            assert t.stdout is not None
            assert t.stdout.readline().strip() == "started"
        assert svc.terminate() == 0
        first_life = log_path.read_text()
        assert "draining 3 ingest stream(s)" in first_life
        assert "at the grace deadline" not in first_life
        assert log_problems(first_life) == []
        svc.start()  # the restarted service: the trainers reconnect and re-send
        release.touch()
        results = []
        for t in trainers:
            out, err = t.communicate(timeout=180)
            assert t.returncode == 0, err
            assert "Traceback" not in err
            results.append(json.loads(out.strip().splitlines()[-1]))
        for result in results:
            assert result["steps"] >= MIN_STEPS, result
            assert result["acknowledged"] == result["steps"] * len(NAMES), result
            assert result["rejected"] == 0 and result["errors"] == [], result
            assert result["connections"] >= 2, result  # each one did move
        for i, result in enumerate(results):
            steps = range(result["steps"])
            for j, name in enumerate(NAMES):
                series = stepstream.read_series(f"t{i}", name, address=svc.address)
                assert series.steps == [float(s) for s in steps], (i, name)
                assert series.values == [s * 0.25 + j for s in steps], (i, name)
        assert svc.terminate() == 0
        assert log_problems(log_path.read_text()) == []
    finally:
        for t in trainers:
            if t.poll() is None:
                t.kill()
                t.wait()
        svc.terminate()


async def test_drain_answers_first_then_service_draining(settings: Settings) -> None:
    service = await Service.start(settings)
    stopping: asyncio.Future[None] | None = None
    try:
        assert service.metrics is not None
        async with grpc.aio.insecure_channel(service.address) as ch:
            await create_run(runs_pb2_grpc.RunServiceStub(ch), "r1")
            s = Stream(ingest_pb2_grpc.IngestServiceStub(ch))
            await s.open("r1")
            assert (await s.send(fseries("loss", [0], [1.0]))).appended.accepted_count == 1
            # A second batch written, its answer not read yet: it is committed and answered.
            batch = ingest_pb2.PointBatch(sequence=2, float_series=[fseries("loss", [1], [2.0])])
            await s.call.write(ingest_pb2.AppendPointsRequest(batch=batch))
            appended = service.metrics.batches.labels("appended")
            for _ in range(1000):  # until it is answered (bounded)
                if appended._value.get() == 2:
                    break
                await asyncio.sleep(0.01)
            stopping = asyncio.ensure_future(service.stop())
            answer = await s.call.read()
            assert answer.sequence == 2 and answer.appended.accepted_count == 1
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await s.call.read()
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert rpc_reason(ended.value) == "SERVICE_DRAINING"
            check = await service.health.Check(health_pb2.HealthCheckRequest(service=""), None)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await (stopping if stopping is not None else service.stop())


async def test_health_watch_sees_not_serving_then_ends_without_holding_the_drain(
    settings: Settings,
) -> None:
    # A grace far longer than the test: a Watch cut at the deadline would end UNAVAILABLE.
    service = await Service.start(dataclasses.replace(settings, grace_seconds=600))
    stopping: asyncio.Future[None] | None = None
    try:
        async with grpc.aio.insecure_channel(service.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            whole = health.Watch(health_pb2.HealthCheckRequest(service=""))
            ingest = health.Watch(
                health_pb2.HealthCheckRequest(service="stepstream.v1.IngestService")
            )
            unknown = health.Watch(health_pb2.HealthCheckRequest(service="nope"))
            for watch in (whole, ingest):
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            assert (await unknown.read()).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            stopping = asyncio.ensure_future(service.stop())
            for watch in (whole, ingest):
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            for watch in (whole, ingest, unknown):
                assert await watch.read() is grpc.aio.EOF
                assert await watch.code() == grpc.StatusCode.OK
            await stopping
    finally:
        await (stopping if stopping is not None else service.stop())
