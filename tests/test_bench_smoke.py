"""The benchmark harness runs end to end in quick mode and prints its table.

Only that it ran and printed the expected rows is asserted: never a figure (STYLE.md: no timed
assertions in the test suite).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

TRACKIO_ROWS = [
    "| 8. Trackio's workload 10 series x 2,000 steps, one dict per step, log call → close(): "
    "stepstream (SQLite) |",
    "| 8. Trackio's workload 10 series x 2,000 steps, one call per point, log call → close(): "
    "stepstream (SQLite) |",
    "| 8. Trackio's workload 10 series x 2,000 steps, one call per point, log call → close(): "
    "stepstream (PostgreSQL, 1 replica) |",
    "| 8. Trackio's workload 1,000 series x 20 steps, one dict per step, log call → close(): "
    "stepstream (SQLite) |",
    "| 8. trainer thread per one-key log_metrics call (loop time / calls, the loop's own cost "
    "included), 10 series x 2,000 steps, one call per point: stepstream (SQLite) |",
]

EXPECTED_ROWS = [
    "| 1. ingest (a) 10 series/step",
    "| 1. ingest (a) vs MLflow one log_metric call per point",
    "| 1. ingest (b) 1,000 series/step",
    "| 1. ingest (c) ",
    "read back, lost / duplicated |",
    "| 1. ingest (d) ",
    "| 7. service peak RSS (VmHWM) under (d)",
    "| 4. ack latency p50, shape (a)",
    "| 4. ack latency p99, shape (a)",
    "| 4. ack latency p99, shape (b)",
    "| 5. trainer-thread CPU per point",
    "| 5. service SIGSTOPped: log calls returned for",
    "| 5. trainer process RSS while the service is stopped",
    "| 6. read 50,000-point series whole (ReadSeries)",
    "| 6. read 50,000 points downsampled, max_points=2000",
    "| 6. read 50,000 points across two fork hops, whole",
    "| 6. read 50,000 points across two fork hops, downsampled",
    "| 10. ingest (a) 10 series/step, 1 process with TLS + --auth required",
    "| 10. ack latency p50, shape (b), TLS + --auth required",
    *TRACKIO_ROWS,
]


@pytest.mark.timeout(540)
def test_bench_quick_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "latest.md"
    argv = [sys.executable, "-m", "bench", "--quick", "--no-mlflow", "--no-trackio"]
    done = subprocess.run(
        [*argv, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=520,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    table = done.stdout
    assert "| case | stepstream | no-op sink | stepstream / no-op | MLflow |" in table
    assert "machine: " in table
    assert "-m bench --quick --no-mlflow --no-trackio --out" in table
    for row in EXPECTED_ROWS:
        assert row in table, f"missing row {row!r} in:\n{table}"
    assert "FAILED" not in table
    assert "n/a (skipped: --no-mlflow)" in table
    assert out.read_text() == table.rstrip("\n") + "\n"


TRACKIO_VENV_PYTHON = REPO / "bench" / ".trackio-venv" / "bin" / "python"


@pytest.mark.timeout(360)
@pytest.mark.skipif(
    not TRACKIO_VENV_PYTHON.exists(),
    reason="Trackio is installed by `make bench` (bench/.trackio-venv); tests download nothing",
)
def test_bench_trackio_case_with_trackio(tmp_path: Path) -> None:
    """The Trackio case against a real `trackio show`: every row has a Trackio figure."""
    out = tmp_path / "latest.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--cases", "trackio", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=340,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    table = done.stdout
    assert "| Trackio | stepstream / Trackio |" in table
    assert "`trackio show` (its self-hosted server" in table
    for row in TRACKIO_ROWS:
        line = next((line for line in table.splitlines() if line.startswith(row)), None)
        assert line is not None, f"missing row {row!r} in:\n{table}"
        trackio_cell = line.split(" | ")[6]
        assert trackio_cell.endswith(("pts/s", "µs")), line
    assert "FAILED" not in table and "stored fewer points" not in table
