"""The growth bench case runs end to end in quick mode: its rows, its plot and its byte format.

Only that it ran, printed its rows and drew its plot is asserted, never a figure (STYLE.md: no
timed assertions in the test suite). The chunk-packing test checks that packing a commit's
chunks together (codec.chunk_rows) writes exactly the bytes of packing them one by one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stepstream_server.model import ChunkWrite
from stepstream_server.store import codec

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_growth_quick_prints_rows_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "latest.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--cases",
            "growth",
            "--no-mlflow",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    table = done.stdout
    assert "FAILED" not in table
    for row in (
        "| 8. growth: ingest at ",
        "| 8. growth: read a 100,000-point series, last 10,000 steps, at ",
        "| 8. growth: read a 100,000-point series, whole, downsampled, at ",
        "| 8. growth: service RSS at ",
        "| 8. growth: service RSS with 10,000 distinct series in one run |",
    ):
        assert row in table, f"missing row {row!r} in:\n{table}"
    png = tmp_path / "growth-quick.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _one_by_one(chunk: ChunkWrite) -> tuple[object, ...]:
    """The row format written before chunk_rows, spelled out: block stats of (first, min, max,
    first NaN or first, last) per 256 points, sorted, as (step, value, timestamp) float64;
    steps and timestamps in their shortest form (tests/test_chunk_columns.py)."""
    steps, values, ts = chunk.steps, np.asarray(chunk.values, dtype=np.float64), chunk.timestamps
    table = []
    for lo in range(0, len(values), codec.STATS_BLOCK):
        block = values[lo : lo + codec.STATS_BLOCK]
        nan = np.isnan(block)
        low = int(np.where(nan, np.inf, block).argmin())
        high = int(np.where(nan, -np.inf, block).argmax())
        first_nan = int(nan.argmax()) if nan.any() else 0
        for i in sorted([0, low, high, first_nan, len(block) - 1]):
            table.append((steps[lo + i], values[lo + i], ts[lo + i]))
    stats = np.array(table, dtype=np.float64).tobytes()
    return (float(steps[0]), float(steps[-1]), len(steps), codec.pack_floats(steps),
            values.tobytes(), codec.pack_floats(ts), stats)  # fmt: skip


def test_chunk_rows_pack_each_chunk_as_alone() -> None:
    rng = np.random.default_rng(7)
    chunks = []
    # Equal lengths (packed as one matrix), lengths around the stats block, NaN and infinities,
    # an all-NaN block, a single point, and a string chunk among them.
    for n in [1, 1, 2, 100, 100, 100, 255, 256, 257, 600, 600, 513]:
        values = rng.normal(size=n)
        values[rng.random(n) < 0.1] = np.nan
        values[rng.random(n) < 0.05] = np.inf
        values[rng.random(n) < 0.05] = -np.inf
        chunks.append(ChunkWrite("i", f"f{n}", False, np.arange(n) * 2.0, values, rng.random(n)))
    chunks.append(
        ChunkWrite("i", "nan", False, np.arange(300.0), np.full(300, np.nan), np.zeros(300))
    )
    chunks.append(
        ChunkWrite("i", "nan2", False, np.arange(300.0), np.full(300, np.nan), np.ones(300))
    )
    chunks.insert(3, ChunkWrite("i", "s", True, np.arange(2.0), ["a", "é"], np.zeros(2)))
    rows = codec.chunk_rows(chunks)
    assert len(rows) == len(chunks)
    for chunk, row in zip(chunks, rows, strict=True):
        if chunk.is_string:
            assert row == codec.chunk_columns(chunk)
            assert row[-1] is None
        else:
            assert row == _one_by_one(chunk), chunk.name
