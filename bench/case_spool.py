"""Case 9: the client's durable spool (docs/spool.md).

- log_metrics of a 10-key dict while the service is down: the run is offline and every point
  goes to the SQLite spool (durable: the rate counts until `wait()` returned, which in an
  offline run means committed with synchronous=FULL). Measured alternately with the same loop
  streaming to the no-op sink (online, acknowledged), with the trainer's RSS sampled as the
  spool grows, and the spool's size on disk per million points.
- `stepstream sync` of that spool into a fresh `stepstream serve` (SQLite): points per second
  from the command's start to its exit, every point durable on the service (acknowledged).

The trainer is a child process: `python -m bench.case_spool ADDRESS RUN_ID MODE CALLS` prints
one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import table
from bench.cases import Context, run_json
from bench.procs import bench_env, proc_status_kb, python_module
from bench.table import Row, median
from bench.targets import start_noop_sink, start_stepstream

MIN_RATE = 1_000_000  # points/s, both rows (issue 9)
KEYS = 10


def spool(ctx: Context) -> list[Row]:
    calls = 5_000 if ctx.quick else 1_000_000  # x 10 keys: 10 M points in full mode
    points = calls * KEYS
    offline: list[float] = []
    online: list[float] = []
    synced: list[float] = []
    rss_growth: list[float] = []
    rss_text = ""
    per_million: list[float] = []
    stepstream = start_stepstream(ctx.work_dir)
    noop = start_noop_sink(ctx.work_dir)
    try:
        for rep in range(ctx.reps):
            ctx.progress(f"spool rep {rep + 1}/{ctx.reps}")
            root = ctx.work_dir / f"spool-{rep}"
            env = {"STEPSTREAM_DIR": str(root)}
            down = _trainer(noop.address, f"offline-{rep}", "offline", calls, env)
            offline.append(points / down["durable_seconds"])
            per_million.append(down["spool_bytes"] / (points / 1e6))
            growth = down["rss_peak_kb"] - down["rss_after_start_kb"]
            rss_growth.append(growth)
            rss_text = (
                f"{table.mebibytes(down['rss_after_start_kb'])} → "
                f"{table.mebibytes(down['rss_peak_kb'])} peak (+{growth / 1024:,.0f} MiB)"
            )
            up = _trainer(noop.address, f"online-{rep}", "online", calls, {})
            online.append(points / up["durable_seconds"])
            started = time.monotonic()
            done = subprocess.run(
                python_module("stepstream.cli", "sync", "--address", stepstream.address, root),
                capture_output=True,
                text=True,
                env=bench_env(env),
                timeout=1800,
            )
            elapsed = time.monotonic() - started
            if done.returncode != 0 or "uploaded" not in done.stdout:
                raise RuntimeError(f"stepstream sync failed: {done.stdout}{done.stderr[-2000:]}")
            synced.append(points / elapsed)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        noop.stop()
        stepstream.stop()
    down_rate, up_rate, sync_rate = median(offline), median(online), median(synced)
    growth_kb = median(rss_growth) or 0.0
    return [
        Row(
            f"9. log_metrics while the service is down, {KEYS}-key dict → durable spool",
            table.rate,
            down_rate,
            up_rate,
            target="≥ 1,000,000 pts/s",
            met=down_rate is not None and down_rate >= MIN_RATE,
            notes=[
                f"{points:,} points per rep; until wait() returned (committed, synchronous=FULL);"
                " the no-op column is the same loop streaming online to the no-op sink"
            ],
        ),
        Row(
            f"9. trainer RSS while {points:,} points spill",
            table.mebibytes,
            stepstream_text=rss_text,
            target="flat",
            met=growth_kb < 256 * 1024,
            notes=["RSS sampled every 5% of the calls; growth from after Run() to the peak"],
        ),
        Row(
            "9. spool on disk per million points (10-key rows)",
            table.mebibytes,
            stepstream_text=f"{(median(per_million) or 0) / 2**20:,.1f} MiB",
            notes=["SQLite file + WAL after wait(), before the spool drains"],
        ),
        Row(
            "9. stepstream sync into stepstream serve (durable on the service)",
            table.rate,
            sync_rate,
            target="≥ 1,000,000 pts/s",
            met=sync_rate is not None and sync_rate >= MIN_RATE,
            notes=[
                "from the command's start (interpreter start-up included) to its exit; every "
                "point acknowledged (committed to the service's store)"
            ],
        ),
    ]


def _trainer(
    address: str, run_id: str, mode: str, calls: int, env: dict[str, str]
) -> dict[str, Any]:
    argv = python_module("bench.case_spool", address, run_id, mode, calls)
    if env:
        argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
    return run_json(argv, timeout=1800)


def _rss_kb() -> int:
    return proc_status_kb(os.getpid(), "VmRSS") or 0


def main() -> None:
    import stepstream

    address, run_id, mode, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    data = {f"train/m{k}": 0.5 + k for k in range(KEYS)}
    if mode == "offline":  # as if the service were down: nothing is sent, all is spooled
        run = stepstream.Run(run_id, address=address, mode="offline")
    else:
        run = stepstream.Run(run_id, address=address)
    rss_start = _rss_kb()
    peak = rss_start
    every = max(calls // 20, 1)
    started = time.perf_counter()
    for step in range(calls):
        run.log_metrics(data, step=step)
        if step % every == 0:
            peak = max(peak, _rss_kb())
    logged = time.perf_counter()
    run.wait(verbose=False)
    durable = time.perf_counter()
    peak = max(peak, _rss_kb())
    spool_bytes = 0
    if mode == "offline":
        root = Path(os.environ["STEPSTREAM_DIR"])
        spool_bytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    run.close()
    print(
        json.dumps(
            {
                "log_seconds": logged - started,
                "durable_seconds": durable - started,
                "rss_after_start_kb": rss_start,
                "rss_peak_kb": peak,
                "spool_bytes": spool_bytes,
            }
        )
    )


if __name__ == "__main__":
    main()
