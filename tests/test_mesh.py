"""Mesh behaviour (docs/drain.md): a service that ends connections by age (GOAWAY, then the
grace) moves a streaming trainer from connection to connection with nothing lost, nothing
applied twice and no error surfaced; the flags reach gRPC as channel arguments."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import stepstream
from conftest import free_port
from procs import ServiceProcess
from stepstream_server.cli import main
from stepstream_server.config import Settings
from stepstream_server.embedded_redis import EmbeddedRedis
from stepstream_server.server import grpc_options

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
