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
]


@pytest.mark.timeout(420)
def test_bench_quick_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "latest.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-mlflow", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    table = done.stdout
    assert "| case | stepstream | no-op sink | stepstream / no-op | MLflow |" in table
    assert "machine: " in table
    assert "-m bench --quick --no-mlflow --out" in table
    for row in EXPECTED_ROWS:
        assert row in table, f"missing row {row!r} in:\n{table}"
    assert "FAILED" not in table
    assert "n/a (skipped: --no-mlflow)" in table
    assert out.read_text() == table.rstrip("\n") + "\n"
