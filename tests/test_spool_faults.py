"""Crash points of docs/spool.md with real processes: the trainer killed -9 mid-spill, the
service killed mid-drain, `stepstream sync` killed mid-upload, two syncs at once. Each ends with
every point logged (up to what was durable) stored exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import stepstream
from conftest import free_port
from procs import ServiceProcess
from test_spool import KEYS, assert_exact, row, spools, sync

HERE = Path(__file__).parent


def trainer(address: str, run_id: str, mode: str, steps: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "spool_trainer.py"), address, run_id, mode, str(steps)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ),
    )


def durable_until(proc: subprocess.Popen[str], at_least: int) -> int:
    """Read the trainer's "durable N" lines until N >= at_least; the last N."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    last = -1
    while last < at_least:
        assert time.monotonic() < deadline, "the trainer made no progress"
        line = proc.stdout.readline()
        assert line, "the trainer exited"
        if line.startswith("durable "):
            last = int(line.split()[1])
    return last


def stored_prefix(address: str, run_id: str) -> int:
    """How many steps each series holds, checking they are 0..n-1 with the logged values."""
    counts = set()
    for i, key in enumerate(KEYS):
        series = stepstream.read_series(run_id, key, address=address)
        n = len(series.steps)
        assert series.steps == [float(s) for s in range(n)], key
        assert series.values == [s * 0.5 + i for s in range(n)], key
        counts.add(n)
    (n,) = counts  # a whole row or none: rows are never split across batches here
    return n


def test_trainer_kill_9_mid_spill_then_sync_uploads_what_was_durable(
    tmp_path: Path, spool_dir: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = trainer(address, "killed", "offline", 10_000_000)
    try:
        durable = durable_until(proc, 20_000)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-loop, mid-spill
        proc.communicate()
    (path,) = spools(spool_dir)
    svc = ServiceProcess(tmp_path / "data", None, port).start()
    try:
        result = sync(address)
        assert result.returncode == 0, result.stdout + result.stderr
        stored = stored_prefix(address, "killed")
        assert stored >= durable + 1  # everything durable before the kill, and no gap
        assert f"{stored * len(KEYS):,} points sent, 0 rejected; spool removed" in result.stdout
        assert not path.exists()
        assert stepstream.get_run("killed", address=address).state == "RUNNING"  # never closed
    finally:
        svc.terminate()


def test_service_killed_mid_drain_and_sync_killed_mid_upload(
    tmp_path: Path, spool_dir: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    steps = 60_000  # 600,000 points spooled
    with stepstream.Run("big", address=address, mode="offline") as run:
        for step in range(steps):
            run.log_metrics(row(step), step=step)
    svc = ServiceProcess(tmp_path / "data", None, port).start()
    try:
        # 1. sync, and kill -9 the service once it has stored some of the points.
        first = subprocess.Popen(
            [sys.executable, "-m", "stepstream.cli", "sync", "--address", address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        deadline = time.monotonic() + 120
        while first.poll() is None and not _some_stored(address, "big"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        svc.kill9()
        time.sleep(0.5)
        svc.start()  # the sync reconnects within its --timeout and goes on
        # 2. kill -9 the sync itself, wherever it is.
        while first.poll() is None and _stored(address, "big") < steps // 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
        first.communicate()
        # 3. sync again: what is left goes, what went is answered as duplicates.
        result = sync(address)
        assert result.returncode == 0, result.stdout + result.stderr
        assert_exact(address, "big", steps)
        assert spools(spool_dir) == []
        assert stepstream.get_run("big", address=address).state == "FINISHED"
    finally:
        svc.terminate()


def test_two_syncs_at_once_upload_each_point_once(tmp_path: Path, spool_dir: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    for name in ("twice-a", "twice-b"):
        with stepstream.Run(name, address=address, mode="offline") as run:
            for step in range(20_000):
                run.log_metrics(row(step), step=step)
    svc = ServiceProcess(tmp_path / "data", None, port).start()
    try:
        command = [sys.executable, "-m", "stepstream.cli", "sync", "--address", address]
        procs = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        both = "".join(outputs)
        for name in ("twice-a", "twice-b"):
            assert_exact(address, name, 20_000)
            assert both.count(f"{name}: uploaded") == 1, both  # the other: busy or gone
        # A busy file is not an upload: a later sync finds nothing left either way.
        assert spools(spool_dir) == []
        assert all(p.returncode in (0, 1) for p in procs)
    finally:
        svc.terminate()


def test_a_running_trainer_keeps_its_spool_from_sync(tmp_path: Path, spool_dir: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = trainer(address, "live", "offline", 2000)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while proc.stdout.readline().strip() != "done":
            assert time.monotonic() < deadline
        svc = ServiceProcess(tmp_path / "data", None, port).start()
        try:
            result = sync(address)
            assert result.returncode == 1
            assert "live: busy" not in result.stdout  # the run is not known before the lock
            assert "in use by another process" in result.stdout
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
            result = sync(address)
            assert result.returncode == 0, result.stdout + result.stderr
            assert_exact(address, "live", 2000)
        finally:
            svc.terminate()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()


def _stored(address: str, run_id: str) -> int:
    try:
        return len(stepstream.read_series(run_id, KEYS[0], address=address).steps)
    except stepstream.RPCError:
        return 0  # not created yet, or the service is restarting


def _some_stored(address: str, run_id: str) -> bool:
    return _stored(address, run_id) > 0
