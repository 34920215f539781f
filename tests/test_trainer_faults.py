"""Exactly once under faults through the real trainer client (SPEC §6): kill -9 of the service
and a Redis restart while a training loop logs; the client reconnects and re-sends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import stepstream
from conftest import free_port
from procs import ServiceProcess
from stepstream_server.embedded_redis import EmbeddedRedis

STEPS = 3000
NAMES = [f"layer{i}/norm" for i in range(20)]


def train(run: stepstream.Run, started: threading.Event) -> None:
    for step in range(STEPS):
        run.log_metrics({name: step * 0.25 + i for i, name in enumerate(NAMES)}, step=step)
        if step == 200:
            started.set()
        if step % 100 == 0:
            time.sleep(0.01)  # a training loop has other work; keep the stream spread out


def assert_stored_exactly_once(address: str, run_id: str) -> None:
    for i, name in enumerate(NAMES):
        series = stepstream.read_series(run_id, name, address=address)
        assert series.steps == [float(s) for s in range(STEPS)], name
        assert series.values == [s * 0.25 + i for s in range(STEPS)], name


def test_kill_9_while_a_trainer_logs(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    svc = ServiceProcess(tmp_path / "data", redis_server.url, free_port()).start()
    try:
        run = stepstream.Run("trainer", address=svc.address, max_batch_points=2000)
        started = threading.Event()
        loop = threading.Thread(target=train, args=(run, started))
        loop.start()
        assert started.wait(60)
        svc.kill9()
        time.sleep(0.2)
        svc.start()
        loop.join(120)
        run.wait(timeout=120, verbose=False)
        stats = run.stats
        assert stats.connections >= 2  # it did reconnect
        assert stats.acknowledged_points == STEPS * len(NAMES)
        assert stats.rejected_points == 0 and not run.errors
        run.close(timeout=60)
        assert_stored_exactly_once(svc.address, "trainer")
        assert stepstream.get_run("trainer", address=svc.address).state == "FINISHED"
    finally:
        svc.terminate()


def test_redis_restart_while_a_trainer_logs(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    svc = ServiceProcess(tmp_path / "data", redis_server.url, free_port()).start()
    try:
        run = stepstream.Run("trainer", address=svc.address, max_batch_points=2000)
        started = threading.Event()
        loop = threading.Thread(target=train, args=(run, started))
        loop.start()
        assert started.wait(60)
        redis_server.stop()
        time.sleep(0.3)
        redis_server.start()  # empty: every floor is rebuilt from the store
        loop.join(120)
        run.close(timeout=120)
        assert run.stats.acknowledged_points == STEPS * len(NAMES)
        assert not run.errors
        assert_stored_exactly_once(svc.address, "trainer")
    finally:
        svc.terminate()
