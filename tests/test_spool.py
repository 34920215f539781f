"""The client's durable spool, offline runs and `stepstream sync` (docs/spool.md), with real
service processes (started late, killed, stopped) and `stepstream sync` as a real subprocess.
Every crash case of docs/spool.md has a test here or in test_spool_faults.py."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import stepstream
import stepstream._spill
from conftest import free_port
from procs import ServiceProcess
from stepstream._exceptions import PointsRejectedError
from stepstream._spool_queue import Spill

KEYS = [f"layer{i}/grad" for i in range(10)]


def row(step: int) -> dict[str, float]:
    return {key: step * 0.5 + i for i, key in enumerate(KEYS)}


def sync(address: str, *paths: str | Path) -> subprocess.CompletedProcess[str]:
    """`stepstream sync` in a child process (the spool root comes from $STEPSTREAM_DIR)."""
    return subprocess.run(
        [sys.executable, "-m", "stepstream.cli", "sync", "--address", address, "--timeout", "20"]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )


def assert_exact(address: str, run_id: str, steps: int) -> None:
    """Every key holds steps 0..steps-1 once, with the values logged."""
    for i, key in enumerate(KEYS):
        series = stepstream.read_series(run_id, key, address=address)
        assert series.steps == [float(s) for s in range(steps)], key
        assert series.values == [s * 0.5 + i for s in range(steps)], key


def spools(root: Path) -> list[Path]:
    return sorted(root.rglob("*.spool")) if root.exists() else []


@pytest.fixture
def dead_address() -> str:
    return f"127.0.0.1:{free_port()}"


def test_service_down_at_creation_then_sync_uploads_each_point_once(
    tmp_path: Path, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with caplog.at_level(logging.WARNING, "stepstream"):
        run = stepstream.Run(
            address=address, connect_timeout=0.5, config={"lr": 0.1}, tags=["offline"]
        )
    assert run.run_id.startswith("run-") and run.stats.offline
    assert "is offline" in caplog.text and "stepstream sync" in caplog.text
    for step in range(3000):
        run.log_metrics(row(step), step=step)
    run.log_configs({"note": "late"})
    run.add_tags(["late"])
    run.close()
    assert run.stats.spooled_points == 30_000
    (path,) = spools(spool_dir)
    assert path.parent.name == run.run_id
    svc = ServiceProcess(tmp_path / "data", None, port).start()
    try:
        result = sync(address)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"/{run.run_id}: uploaded; 30,000 points sent, 0 rejected; spool removed" in (
            result.stdout
        )
        assert spools(spool_dir) == []
        assert_exact(address, run.run_id, 3000)
        info = stepstream.get_run(run.run_id, address=address)
        assert info.state == "FINISHED"
        assert info.config == {"lr": 0.1, "note": "late"}
        assert info.tags == ["late", "offline"]
        again = sync(address)  # sync twice: nothing left, nothing sent twice
        assert again.returncode == 0 and "nothing to sync" in again.stdout
        assert_exact(address, run.run_id, 3000)
    finally:
        svc.terminate()


def test_offline_mode_queues_state_changes_in_order_with_the_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    monkeypatch.setenv("STEPSTREAM_MODE", "offline")
    run = stepstream.Run("ordered", address=address)
    for step in range(100):
        run.log_metrics(row(step), step=step)
    run.stop()  # points logged while stopped are rejected RUN_NOT_ACTIVE, in order
    run.log_metrics(row(100), step=100)
    run.resume()
    for step in range(101, 200):
        run.log_metrics(row(step), step=step)
    run.log_metric("best", 0.25, single_value=True)
    run.fail("diverged at step 199")
    svc = ServiceProcess(tmp_path / "data", None, port).start()
    try:
        result = sync(address)
        assert result.returncode == 1  # rejected points make the exit code 1
        assert "ordered: uploaded; 1,990 points sent, 10 rejected (RUN_NOT_ACTIVE: 10)" in (
            result.stdout
        )
        series = stepstream.read_series("ordered", KEYS[0], address=address)
        assert series.steps == [float(s) for s in range(200) if s != 100]
        info = stepstream.get_run("ordered", address=address)
        assert (info.state, info.failure_reason) == ("FAILED", "diverged at step 199")
        assert info.values == {"best": 0.25}
    finally:
        svc.terminate()


def test_outage_longer_than_the_reconnect_window_spools_and_drains(
    tmp_path: Path, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    svc = ServiceProcess(tmp_path / "data", None, free_port()).start()
    try:
        run = stepstream.Run(
            "outage", address=svc.address, reconnect_timeout=1.0, max_batch_points=2000
        )
        for step in range(1000):
            run.log_metrics(row(step), step=step)
        run.wait(timeout=60, verbose=False)
        svc.kill9()
        with caplog.at_level(logging.WARNING, "stepstream"):
            total = 1000
            deadline = time.monotonic() + 60
            while not run.stats.offline:  # training goes on while the sender gives up
                assert time.monotonic() < deadline
                run.log_metrics(row(total), step=total)
                total += 1
                time.sleep(0.001)
            for step in range(total, total + 3000):
                run.log_metrics(row(step), step=step)
            total += 3000
            run.wait(timeout=60, verbose=False)  # offline: returns once all is durable
        assert caplog.text.count("the run goes offline") == 1
        assert run.stats.spooled_points > 0 and len(spools(spool_dir)) == 1
        svc.start()  # back: the run reconnects and drains its spool, in order, exactly once
        deadline = time.monotonic() + 60
        while run.stats.offline:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        run.close(timeout=120)
        assert run.stats.acknowledged_points == total * len(KEYS)
        assert not run.errors
        assert_exact(svc.address, "outage", total)
        assert stepstream.get_run("outage", address=svc.address).state == "FINISHED"
        assert spools(spool_dir) == []
    finally:
        svc.terminate()


def test_memory_bound_reached_spills_and_log_calls_keep_returning(tmp_path: Path) -> None:
    svc = ServiceProcess(tmp_path / "data", None, free_port()).start()
    try:
        run = stepstream.Run(
            "bound",
            address=svc.address,
            max_queued_points=1000,
            max_batch_points=500,
            max_inflight_batches=2,
        )
        run.log_metrics(row(0), step=0)
        run.wait(timeout=60, verbose=False)
        svc.pause()  # the service stops answering: in flight fills, then the queue
        steps = 20_000
        loop = threading.Thread(
            target=lambda: [run.log_metrics(row(s), step=s) for s in range(1, steps)]
        )
        loop.start()
        loop.join(120)
        assert not loop.is_alive()  # 200,000 points against a bound of 1,000: spilled
        assert run.stats.spooled_points > 100_000
        svc.resume()
        run.close(timeout=180)
        assert run.stats.acknowledged_points == steps * len(KEYS)
        assert_exact(svc.address, "bound", steps)
    finally:
        svc.terminate()


def test_spool_max_bytes_blocks_log_calls_then_they_go_on(
    tmp_path: Path, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    svc = ServiceProcess(tmp_path / "data", None, free_port()).start()
    try:
        run = stepstream.Run(
            "small-disk",
            address=svc.address,
            reconnect_timeout=1.0,
            max_queued_points=2000,
            max_batch_points=1000,
            spool_max_bytes=256 * 1024,
        )
        run.log_metrics(row(0), step=0)
        run.wait(timeout=60, verbose=False)
        svc.kill9()
        steps = 8000  # 80,000 points, ~700 KB encoded: more than the spool may hold
        done = threading.Event()

        def train() -> None:
            for s in range(1, steps):
                run.log_metrics(row(s), step=s)
            done.set()

        with caplog.at_level(logging.WARNING, "stepstream"):
            loop = threading.Thread(target=train)
            loop.start()
            deadline = time.monotonic() + 60
            while "the spool has no room" not in caplog.text:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert not done.is_set()  # blocked, nothing dropped
            (path,) = spools(spool_dir)
            on_disk = sum(
                p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name)
            )
            assert on_disk <= 2 * 256 * 1024
            svc.start()
            loop.join(120)
            assert done.is_set()
        assert caplog.text.count("the spool has no room") == 1
        run.close(timeout=120)
        assert_exact(svc.address, "small-disk", steps)
    finally:
        svc.terminate()


def test_a_spool_too_small_for_what_is_in_flight_waits_without_holding_the_sender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The stream fails and the run is not offline yet (a long reconnect window): the 32
    # batches in flight (~280 KB) go first into a spool of 64 KB, so the very first append
    # finds no room and leaves nothing in the file. Retrying at once, without ever yielding,
    # once kept the sender's loop to itself: the connector never ran, the service that came
    # back was never reached and close() hung.
    monkeypatch.setattr(stepstream._spill, "SPILL_AFTER", 60.0)  # spill on the memory bound
    svc = ServiceProcess(tmp_path / "data", None, free_port()).start()
    try:
        run = stepstream.Run(
            "tiny-spool",
            address=svc.address,
            reconnect_timeout=120.0,
            max_queued_points=40_000,
            max_batch_points=1000,
            spool_max_bytes=64 * 1024,
        )
        run.log_metrics(row(0), step=0)
        run.wait(timeout=60, verbose=False)
        svc.kill9()
        steps = 8000
        with caplog.at_level(logging.WARNING, "stepstream"):
            for s in range(1, steps):
                run.log_metrics(row(s), step=s)
            deadline = time.monotonic() + 60
            while "the spool has no room" not in caplog.text:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert not run.stats.offline and not run.stats.connected
        svc.start()
        run.close(timeout=120)
        assert run.stats.acknowledged_points == steps * len(KEYS)
        assert_exact(svc.address, "tiny-spool", steps)
    finally:
        svc.terminate()


def test_an_entry_spooled_after_every_loaded_one_was_answered_is_still_sent(
    tmp_path: Path,
) -> None:
    # Every entry in the file was loaded (sent) and answered, and deleted: an entry spooled
    # next once got the position of a deleted one (SQLite reuses the highest rowids), below
    # the "loaded up to" mark. It was never sent; the batches after it went from memory and
    # the service refused them with SEQUENCE_GAP (seen in a full run of the max-bytes test).
    spill = Spill(path=tmp_path / "r.spool", meta={"run_id": "r", "writer_id": "w"}, max_bytes=None)
    spill.append([], [(1, 10, "", b"one"), (2, 10, "", b"two")])
    assert [e.sequence for e in spill.load(8)] == [1, 2]
    spill.answered(1)
    spill.answered(2)
    spill.flush_deletes(force=True)
    spill.append([], [(3, 10, "", b"three")])
    assert spill.has_unloaded
    assert [(e.sequence, e.body) for e in spill.load(8)] == [(3, b"three")]
    spill.close()


def test_fail_fast_keeps_the_old_behaviour(tmp_path: Path, dead_address: str) -> None:
    with pytest.raises(stepstream.RPCError, match="could not create the run"):
        stepstream.Run("r", address=dead_address, connect_timeout=0.5, on_unavailable="raise")
    svc = ServiceProcess(tmp_path / "data", None, free_port()).start()
    try:
        run = stepstream.Run(
            "fast", address=svc.address, reconnect_timeout=0.5, on_unavailable="raise"
        )
        run.log_metrics(row(0), step=0)
        run.wait(timeout=60, verbose=False)
        svc.kill9()
        deadline = time.monotonic() + 60
        with pytest.raises(stepstream.RunClosedError, match="gave up reconnecting"):
            for step in range(1, 10_000_000):
                assert time.monotonic() < deadline
                run.log_metrics(row(step), step=step)
                time.sleep(0.001)
        assert not run.stats.offline
    finally:
        svc.terminate()


def test_on_rejection_raise_raises_the_first_rejection_at_the_next_log_call(
    tmp_path: Path,
) -> None:
    svc = ServiceProcess(tmp_path / "data", None, free_port()).start()
    try:
        with stepstream.Run("strict", address=svc.address, on_rejection="raise") as run:
            run.log_metrics({"loss": 1.0}, step=5)
            run.log_metrics({"loss": 2.0}, step=3)  # not increasing: rejected
            run.wait(timeout=60, verbose=False)
            with pytest.raises(PointsRejectedError) as caught:
                run.log_metrics({"loss": 3.0}, step=6)
            assert caught.value.error.reason == "STEP_NOT_INCREASING"
            assert caught.value.error.series == "loss"
            run.log_metrics({"loss": 3.0}, step=7)  # raised once; logging goes on
        series = stepstream.read_series("strict", "loss", address=svc.address)
        assert series.steps == [5.0, 7.0]
    finally:
        svc.terminate()


def test_corrupt_and_foreign_spool_files_are_named_and_nothing_else_is_lost(
    tmp_path: Path, spool_dir: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with stepstream.Run("good", address=address, mode="offline") as run:
        for step in range(200):
            run.log_metrics(row(step), step=step)
    bad_dir = spool_dir / "_default" / "bad"
    bad_dir.mkdir(parents=True)
    garbage = bad_dir / "garbage.spool"
    garbage.write_bytes(b"this is not a database" * 100)
    foreign = bad_dir / "foreign.spool"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE points (x)")
    foreign_bytes = foreign.read_bytes()
    svc = ServiceProcess(tmp_path / "data", None, port).start()
    try:
        result = sync(address)
        assert result.returncode == 1
        out = result.stdout
        assert f"{garbage}: error" in out and "corrupt or not a stepstream spool" in out
        assert f"{foreign}: error" in out and "not a stepstream spool (no spool tables)" in out
        assert "good: uploaded; 2,000 points sent" in out
        assert_exact(address, "good", 200)
        assert garbage.read_bytes() == b"this is not a database" * 100
        assert foreign.read_bytes() == foreign_bytes
    finally:
        svc.terminate()


def test_offline_fork_of_a_missing_parent_is_reported_not_guessed(
    tmp_path: Path, spool_dir: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with stepstream.Run(
        "child", address=address, mode="offline", fork_run_id="nowhere", fork_step=10
    ) as run:
        run.log_metrics(row(11), step=11)
    with stepstream.Run(address=address, mode="offline", resume_from="gone?_step=5") as rewound:
        rewound.log_metrics(row(6), step=6)
    svc = ServiceProcess(tmp_path / "data", None, port).start()
    try:
        result = sync(address)
        assert result.returncode == 1
        assert "child: error" in result.stdout
        assert "the fork parent 'nowhere' does not exist on the service" in result.stdout
        assert "gone: error" in result.stdout
        assert "the run to rewind, 'gone', does not exist on the service" in result.stdout
        assert len(spools(spool_dir)) == 2  # both kept, untouched, for a later sync
        with pytest.raises(stepstream.RPCError):
            stepstream.get_run("child", address=address)
        # Once the parent exists, the same spool uploads.
        with stepstream.Run("nowhere", address=address) as parent:
            parent.log_metrics(row(0), step=0)
        result = sync(address, spools(spool_dir)[0].parent)
        assert "child: uploaded; 10 points sent, 0 rejected" in result.stdout
        info = stepstream.get_run("child", address=address)
        assert info.incarnations[0].parent_run_id == "nowhere"
    finally:
        svc.terminate()


def test_policy_arguments_are_checked(dead_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [
        ({"mode": "airplane"}, "mode must be one of 'online', 'offline', got 'airplane'"),
        ({"on_full": "drop"}, "on_full must be one of 'spill', 'block', got 'drop'"),
        ({"on_unavailable": "x"}, "on_unavailable must be one of 'offline', 'raise', got 'x'"),
        ({"on_rejection": "x"}, "on_rejection must be one of 'report', 'raise', got 'x'"),
        ({"spool_max_bytes": 10}, "spool_max_bytes must be an int of at least 65536"),
        (
            {"mode": "offline", "writer_id": "w1"},
            "an offline run numbers its batches from 1 under a writer ID of its own",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(stepstream.InvalidArgumentError, match=message):
            stepstream.Run("r", address=dead_address, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setenv("STEPSTREAM_MODE", "sometimes")
    with pytest.raises(
        stepstream.InvalidArgumentError, match="STEPSTREAM_MODE must be one of 'online'"
    ):
        stepstream.Run("r", address=dead_address)


def test_sync_with_the_service_unreachable_exits_3_and_keeps_the_spool(
    spool_dir: Path, dead_address: str
) -> None:
    with stepstream.Run("later", address=dead_address, mode="offline") as run:
        run.log_metrics(row(0), step=0)
    (path,) = spools(spool_dir)
    before = path.read_bytes()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stepstream.cli",
            "sync",
            "--address",
            dead_address,
            "--timeout",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3
    assert "later: unreachable; 0 points sent, 0 rejected; 3 entries left" in result.stdout
    assert path.read_bytes() == before
