"""Case 5: what logging costs the trainer's thread, and a stalled service."""

from __future__ import annotations

import time

from bench import table
from bench.cases import MAX_CPU_PER_POINT, Context, both_targets
from bench.mlflow_env import MLFLOW_ENV
from bench.mlflow_env import python as mlflow_python
from bench.procs import DriverPool, bench_env, python_module
from bench.table import Row, median
from bench.targets import start_stepstream


def cost(ctx: Context) -> list[Row]:
    keys = 1000
    calls = 100 if ctx.quick else 800  # below the default queue bound: never blocks
    found: dict[str, list[float]] = {"stepstream": [], "no-op": []}
    argv = [python_module("bench.driver", "cost")]
    with both_targets(ctx) as targets, DriverPool("cost", argv, ctx.work_dir) as pool:
        for rep in range(ctx.reps):
            for target in targets:
                pool.command(
                    {
                        "cmd": "prepare",
                        "address": target.address,
                        "run_id": f"cost-{rep}",
                        "keys": keys,
                        "calls": calls,
                    }
                )
                result = pool.command({"cmd": "go"})[0]
                pool.command({"cmd": "finish"})
                found[target.label].append(float(result["cpu_per_point"]))
    ml_cost: list[float] = []
    ml_note = ctx.mlflow_reason
    if ctx.mlflow is not None:
        env = bench_env(MLFLOW_ENV)
        argv = [[str(mlflow_python()), "-m", "bench.mlflow_driver"]]
        with DriverPool("mlflow-cost", argv, ctx.work_dir, env=env) as pool:
            for _ in range(ctx.reps):
                pool.command(
                    {
                        "cmd": "prepare",
                        "uri": ctx.mlflow.uri,
                        "mode": "cost",
                        "series": keys,
                        "seconds": 60,
                        "max_calls": 5 if ctx.quick else 20,
                    }
                )
                result = pool.command({"cmd": "go"})[0]
                pool.command({"cmd": "finish"})
                ml_cost.append(float(result["cpu_per_point"]))
        ml_note = "MLflow: CPU of the calling thread in log_batch (synchronous, HTTP included)"
    value = median(found["stepstream"])
    return [
        Row(
            "5. trainer-thread CPU per point, log_metrics of a 1,000-key dict",
            table.micros,
            value,
            median(found["no-op"]),
            median(ml_cost),
            mlflow_text=None if ml_cost else f"n/a ({ml_note})",
            target="≤ 1 µs per point",
            met=value is not None and value <= MAX_CPU_PER_POINT,
            notes=[
                f"time.thread_time() around {calls} log_metrics calls of {keys} keys; "
                + (ml_note if ml_cost else "")
            ],
        )
    ]


def stall(ctx: Context) -> list[Row]:
    max_queued = 100_000
    seconds = 1.5 if ctx.quick else 4.0
    stepstream = start_stepstream(ctx.work_dir)
    argv = [python_module("bench.driver", "stall")]
    try:
        with DriverPool("stall", argv, ctx.work_dir) as pool:
            pool.command(
                {
                    "cmd": "prepare",
                    "address": stepstream.address,
                    "run_id": "stall",
                    "keys": 1000,
                    "max_queued_points": max_queued,
                    "seconds": seconds,
                }
            )
            stepstream.server.pause()
            try:
                pool.send({"cmd": "go"})
                time.sleep(seconds + 1.0)
            finally:
                stepstream.server.resume()
            result = pool.collect()[0]
            pool.command({"cmd": "finish"})
    finally:
        stepstream.stop()
    blocked_after = result["blocked_after"]
    before = int(result["points_before_block"])
    growth_kb = int(result["rss_peak_kb"]) - int(result["rss_before_kb"])
    lossless = int(result["acked"]) == int(result["points"])
    if blocked_after is None:
        text = f"never blocked in {seconds:g} s ({result['points']:,} points logged)"
    else:
        text = (
            f"{before:,} points in {blocked_after:.3f} s, then blocked "
            f"{result['longest_call']:.1f} s until SIGCONT"
        )
    rows = [
        Row(
            f"5. service SIGSTOPped: log calls returned for (max_queued_points={max_queued:,})",
            table.seconds,
            stepstream_text=text,
            target="returns until the bound is reached; nothing lost",
            met=(blocked_after is None or before >= max_queued) and lossless,
            notes=[
                f"after SIGCONT, all {result['points']:,} logged points acknowledged: {lossless}; "
                "points accepted before blocking = the queue bound plus what the sender had "
                "already taken into in-flight batches (held back by gRPC flow control); the "
                "client's documented policy for a full queue is to block the log call"
            ],
        ),
        Row(
            "5. trainer process RSS while the service is stopped (before → peak)",
            table.mebibytes,
            stepstream_text=(
                f"{table.mebibytes(result['rss_before_kb'])} → "
                f"{table.mebibytes(result['rss_peak_kb'])} (+{table.mebibytes(growth_kb)})"
            ),
            target="bounded",
            met=growth_kb < 512 * 1024,
        ),
    ]
    return rows
