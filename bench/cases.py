"""The cases: each starts what it needs, runs its repetitions and returns table rows.

Within a case, stepstream and the no-op sink are measured alternately, repetition by
repetition, so that the noise of this shared machine falls on both columns alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import table
from bench.mlflow_env import MLFLOW_ENV, MlflowServer
from bench.mlflow_env import python as mlflow_python
from bench.procs import BenchError, DriverPool, Message, bench_env, python_module
from bench.table import Row, median
from bench.targets import Target, start_noop_sink, start_stepstream

# Targets from the issue.
SHAPE_B_MIN_RATE = 2_000_000
SHAPE_B_MIN_OF_NOOP = 0.5
MIN_OVER_MLFLOW = 300
MAX_P99 = 0.020
MAX_CPU_PER_POINT = 1e-6
SHAPE_C_MIN_OF_SINGLE = 0.8
MAX_READ_WHOLE = 0.3
MAX_READ_DOWN = 0.030


@dataclass(frozen=True)
class Shape:
    """An ingest workload: `procs` processes x `runs_per_proc` Run objects, each logging a
    `series`-key dict per step for `steps` steps; MLflow gets `ml_procs` x `ml_threads`
    writers with `ml_steps_per_call` steps of the same dict per log_batch call."""

    key: str
    title: str
    procs: int
    runs_per_proc: int
    series: int
    steps: int
    shared_run: bool = False
    ml_procs: int = 1
    ml_threads: int = 1
    ml_steps_per_call: int = 1

    @property
    def points(self) -> int:
        return self.procs * self.runs_per_proc * self.series * self.steps


def shapes(quick: bool) -> dict[str, Shape]:
    if quick:
        found = [
            Shape("a", "(a) 10 series/step, 1 process", 1, 1, 10, 20_000, ml_steps_per_call=100),
            Shape("b", "(b) 1,000 series/step, 1 process", 1, 1, 1000, 200),
            Shape(
                "c",
                "(c) 8 writer processes → 1 run (quick: not 64)",
                8,
                1,
                10,
                1_000,
                shared_run=True,
                ml_procs=2,
                ml_threads=4,
                ml_steps_per_call=100,
            ),
            Shape(
                "d",
                "(d) 16 streams → 16 runs (quick: 2 proc x 8 runs)",
                2,
                8,
                10,
                200,
                ml_procs=2,
                ml_threads=8,
                ml_steps_per_call=100,
            ),
        ]
    else:
        found = [
            Shape("a", "(a) 10 series/step, 1 process", 1, 1, 10, 1_000_000, ml_steps_per_call=100),
            Shape("b", "(b) 1,000 series/step, 1 process", 1, 1, 1000, 5_000),
            Shape(
                "c",
                "(c) 64 writer processes → 1 run, 10 series each",
                64,
                1,
                10,
                20_000,
                shared_run=True,
                ml_procs=8,
                ml_threads=8,
                ml_steps_per_call=100,
            ),
            Shape(
                "d",
                "(d) 256 streams → 256 runs (8 proc x 32 Run)",
                8,
                32,
                10,
                2_000,
                ml_procs=8,
                ml_threads=32,
                ml_steps_per_call=100,
            ),
        ]
    return {shape.key: shape for shape in found}


@dataclass
class Context:
    reps: int
    quick: bool
    work_dir: Path
    mlflow: MlflowServer | None
    mlflow_reason: str
    # Medians other cases build on: "rate:a" (stepstream points/s of shape a), ...
    measured: dict[str, float] = field(default_factory=dict)

    @property
    def mlflow_seconds(self) -> float:
        return 1.0 if self.quick else 3.0

    def progress(self, message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)


@contextmanager
def both_targets(ctx: Context) -> Iterator[tuple[Target, Target]]:
    """A fresh `stepstream serve` and a fresh no-op sink, stopped afterwards by their PIDs."""
    stepstream = start_stepstream(ctx.work_dir)
    try:
        noop = start_noop_sink(ctx.work_dir)
        try:
            yield stepstream, noop
        finally:
            noop.stop()
    finally:
        stepstream.stop()


def create_run(address: str, run_id: str) -> None:
    import grpc
    from stepstream.v1 import runs_pb2, runs_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        runs_pb2_grpc.RunServiceStub(channel).CreateRun(
            runs_pb2.CreateRunRequest(run_id=run_id), timeout=60
        )


def aggregate_rate(results: list[Message]) -> tuple[float, int, int]:
    """(points/s of all drivers together, points acknowledged, points logged)."""
    acked = sum(int(r["acked"]) for r in results)
    logged = sum(int(r["points"]) for r in results)
    elapsed = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    return acked / elapsed, acked, logged


# -- 1, 2, 3, 7: ingest ---------------------------------------------------------------------


def ingest_rep(pool: DriverPool, target: Target, shape: Shape, tag: str) -> tuple[float, str]:
    """One repetition of `shape` against `target`: (points/s, the shared run's ID or "")."""
    shared = f"{tag}-shared" if shape.shared_run else ""
    if shared:
        create_run(target.address, shared)
    for i in range(shape.procs):
        run_ids = [shared] if shared else [f"{tag}-p{i}-{j}" for j in range(shape.runs_per_proc)]
        pool.send(
            {
                "cmd": "prepare",
                "address": target.address,
                "series": shape.series,
                "steps": shape.steps,
                "run_ids": run_ids,
                "resume": bool(shared),
                "series_prefix": f"rank{i:03d}/" if shared else "",
            },
            only=i,
        )
    pool.collect()
    results = pool.command({"cmd": "go"})
    pool.command({"cmd": "finish"})
    rate, acked, logged = aggregate_rate(results)
    if acked != logged:
        raise BenchError(f"{target.label} {tag}: {acked:,} of {logged:,} points acknowledged")
    return rate, shared


def verify_shared_run(address: str, run_id: str, shape: Shape) -> tuple[int, int]:
    """Read back every writer's series of a shared run: (points lost, points duplicated)."""
    import numpy as np
    import stepstream

    lost = duplicated = 0
    expected = np.arange(shape.steps, dtype=np.float64)
    for rank in range(shape.procs):
        for k in range(shape.series):
            series = stepstream.read_series(run_id, f"rank{rank:03d}/m{k:04d}", address=address)
            steps = np.asarray(series.steps, dtype=np.float64)
            unique = np.unique(steps)
            duplicated += len(steps) - len(unique)
            lost += len(np.setdiff1d(expected, unique, assume_unique=True))
    return lost, duplicated


def ingest(ctx: Context, shape: Shape) -> list[Row]:
    rates: dict[str, list[float]] = {"stepstream": [], "no-op": []}
    checks: list[tuple[int, int]] = []
    memory: dict[str, Any] = {}
    argv = [python_module("bench.driver", "ingest")] * shape.procs
    with (
        both_targets(ctx) as targets,
        DriverPool(f"ingest-{shape.key}", argv, ctx.work_dir) as pool,
    ):
        for rep in range(ctx.reps):
            for target in targets:
                rate, shared = ingest_rep(pool, target, shape, f"{shape.key}-{target.label}-{rep}")
                rates[target.label].append(rate)
                ctx.progress(f"{shape.title} {target.label} rep {rep + 1}: {rate:,.0f} pts/s")
                if shared and target.label == "stepstream":
                    checks.append(verify_shared_run(target.address, shared, shape))
        stepstream, noop = targets
        memory = {
            "stepstream": stepstream.server.peak_rss_kb(),
            "redis": sum(stepstream.server.children_peak_rss_kb().values()),
            "no-op": noop.server.peak_rss_kb(),
        }
    ml_rates, ml_note = mlflow_ingest(ctx, shape, "batch")
    ss_rate = median(rates["stepstream"])
    noop_rate = median(rates["no-op"])
    ml_rate = median(ml_rates)
    assert ss_rate is not None
    ctx.measured[f"rate:{shape.key}"] = ss_rate
    row = Row(
        f"1. ingest {shape.title}, durable, via stepstream.Run",
        table.rate,
        ss_rate,
        noop_rate,
        ml_rate,
        mlflow_text=None if ml_rates else f"n/a ({ctx.mlflow_reason or ml_note})",
    )
    if ml_note:
        row.notes.append(ml_note)
    row.notes.append(
        "per-repetition pts/s: stepstream "
        + ", ".join(f"{r:,.0f}" for r in rates["stepstream"])
        + "; no-op "
        + ", ".join(f"{r:,.0f}" for r in rates["no-op"])
    )
    conditions: list[bool] = []
    targets_text: list[str] = []
    if shape.key == "b":
        assert noop_rate is not None
        conditions += [ss_rate >= SHAPE_B_MIN_RATE, ss_rate >= SHAPE_B_MIN_OF_NOOP * noop_rate]
        targets_text += ["≥ 2,000,000 pts/s", "≥ 50% of no-op"]
    if shape.key == "c" and "rate:a" in ctx.measured:
        single = ctx.measured["rate:a"]
        conditions.append(ss_rate >= SHAPE_C_MIN_OF_SINGLE * single)
        targets_text.append(f"≥ 80% of (a) ({ss_rate / single:.0%} of {single:,.0f})")
    if ml_rate:
        conditions.append(ss_rate >= MIN_OVER_MLFLOW * ml_rate)
    targets_text.append("≥ 300x MLflow")
    row.target = "; ".join(targets_text)
    row.met = all(conditions) if conditions else None
    rows = [row]
    if shape.key == "a":
        single_rates, single_note = mlflow_ingest(ctx, shape, "single")
        rows.append(
            Row(
                "1. ingest (a) vs MLflow one log_metric call per point",
                table.rate,
                ss_rate,
                None,
                median(single_rates),
                mlflow_text=None if single_rates else f"n/a ({ctx.mlflow_reason or single_note})",
                target="≥ 300x MLflow",
                met=(ss_rate >= MIN_OVER_MLFLOW * single_rates[0]) if single_rates else None,
                notes=[single_note] if single_note else [],
            )
        )
    if shape.shared_run:
        lost = sum(c[0] for c in checks)
        dup = sum(c[1] for c in checks)
        total = shape.points * len(checks)
        rows.append(
            Row(
                f"1. {shape.title}: read back, lost / duplicated",
                table.rate,
                stepstream_text=f"{lost:,} lost / {dup:,} dup of {total:,}",
                target="0 lost, 0 duplicated",
                met=lost == 0 and dup == 0,
                notes=[
                    f"every series of every repetition read back with stepstream.read_series "
                    f"({shape.procs * shape.series} series x {len(checks)} runs)"
                ],
            )
        )
    if shape.key == "d":
        rows.append(
            Row(
                f"7. service peak RSS (VmHWM) under {shape.title}",
                table.mebibytes,
                memory["stepstream"],
                memory["no-op"],
                notes=[
                    f"the embedded redis-server's own peak RSS: "
                    f"{table.mebibytes(memory['redis'])} (not included)"
                ],
            )
        )
    return rows


def mlflow_ingest(ctx: Context, shape: Shape, mode: str) -> tuple[list[float], str]:
    """MLflow points/s per repetition for `shape` (empty with a reason when unavailable)."""
    server = ctx.mlflow
    if server is None:
        return [], ctx.mlflow_reason
    single = mode == "single"
    procs, threads = (1, 1) if single else (shape.ml_procs, shape.ml_threads)
    argv = [[str(mlflow_python()), "-m", "bench.mlflow_driver"]] * procs
    rates: list[float] = []
    errors = calls = 0
    last_error = ""
    env = bench_env(MLFLOW_ENV)
    with DriverPool(f"mlflow-{shape.key}-{mode}", argv, ctx.work_dir, env=env) as pool:
        for rep in range(ctx.reps):
            run_ids = [server.create_run()] if shape.shared_run and not single else None
            for p in range(procs):
                pool.send(
                    {
                        "cmd": "prepare",
                        "uri": server.uri,
                        "mode": mode,
                        "threads": threads,
                        "run_ids": run_ids,
                        "prefixes": [
                            f"rank{p * threads + t:03d}/" if run_ids else "" for t in range(threads)
                        ],
                        "series": shape.series,
                        "steps_per_call": 1 if single else shape.ml_steps_per_call,
                        "seconds": ctx.mlflow_seconds,
                    },
                    only=p,
                )
            pool.collect()
            results = pool.command({"cmd": "go"})
            pool.command({"cmd": "finish"})
            rate, _, _ = aggregate_rate(results)
            rates.append(rate)
            errors += sum(int(r["errors"]) for r in results)
            calls += sum(int(r["calls"]) for r in results)
            last_error = next((r["last_error"] for r in results if r["last_error"]), last_error)
            ctx.progress(f"MLflow {shape.title} {mode} rep {rep + 1}: {rate:,.0f} pts/s")
    how = (
        "one log_metric call per point"
        if single
        else f"log_batch of {shape.series * shape.ml_steps_per_call} metrics, "
        f"{procs} proc x {threads} threads"
    )
    note = f"MLflow {shape.key} ({how}, {ctx.mlflow_seconds:g} s per repetition)"
    if errors:
        note += f": {errors} of {calls} calls failed, not counted (last: {last_error})"
    return rates, note


# -- 4: ack latency -------------------------------------------------------------------------

DEFAULT_MAX_RATE = {"a": 2_000_000.0, "b": 500_000.0}
SERIES_OF = {"a": 10, "b": 1000}


def latency(ctx: Context, key: str) -> list[Row]:
    measured = ctx.measured.get(f"rate:{key}")
    offered = (measured or DEFAULT_MAX_RATE[key]) / 2
    seconds = 1.0 if ctx.quick else 4.0
    found: dict[str, dict[str, list[float]]] = {}
    methods = set()
    argv = [python_module("bench.driver", "latency")]
    with both_targets(ctx) as targets, DriverPool(f"latency-{key}", argv, ctx.work_dir) as pool:
        for rep in range(ctx.reps):
            for target in targets:
                result = pool.command(
                    {
                        "cmd": "prepare",
                        "address": target.address,
                        "run_id": f"lat-{key}-{rep}",
                        "keys": SERIES_OF[key],
                        "rate": offered,
                        "seconds": seconds,
                    }
                )
                result = pool.command({"cmd": "go"})[0]
                pool.command({"cmd": "finish"})
                methods.add(result["method"])
                into = found.setdefault(target.label, {})
                for name in ("p50", "p99", "achieved_rate"):
                    into.setdefault(name, []).append(float(result[name]))
                wire = raw_wire_latency(target, key, offered, seconds, rep)
                for name in ("p50", "p99"):
                    into.setdefault("wire_" + name, []).append(float(wire[name]))
                ctx.progress(
                    f"latency ({key}) {target.label} rep {rep + 1}: client p99 "
                    f"{result['p99'] * 1000:.1f} ms, raw wire p99 {wire['p99'] * 1000:.1f} ms"
                )
    ss, noop = found["stepstream"], found["no-op"]
    basis = (
        f"offered {offered:,.0f} pts/s = half of (a)'s median"
        if measured and key == "a"
        else f"offered {offered:,.0f} pts/s = half of ({key})'s median"
        if measured
        else f"offered {offered:,.0f} pts/s (shape ({key}) not measured in this run: a default)"
    )
    how = (
        "per 1 ms burst of log_metrics calls, from the first call's scheduled time to the "
        "acknowledgement reaching the sender thread (timestamped by wrapping the client's "
        "internal Sender._on_answer)"
        if methods == {"hook"}
        else "by polling Run.acknowledged_points every 0.2 ms"
    )
    rows = []
    for name in ("p50", "p99"):
        row = Row(
            f"4. ack latency {name}, shape ({key}), via stepstream.Run",
            table.millis,
            median(ss[name]),
            median(noop[name]),
        )
        if name == "p99":
            value = median(ss[name])
            row.target = "< 20 ms at half load"
            row.met = value is not None and value < MAX_P99
            achieved = median(ss["achieved_rate"]) or 0.0
            row.notes.append(f"{basis}; achieved {achieved:,.0f} pts/s; measured {how}")
        rows.append(row)
    wire_row = Row(
        f"4. ack latency p99, shape ({key}), raw wire (1 PointBatch per ~10 ms tick)",
        table.millis,
        median(ss["wire_p99"]),
        median(noop["wire_p99"]),
        notes=[
            f"same offered load, grpc.aio stub without the client library, one batch of "
            f"{SERIES_OF[key]} series per tick; p50 stepstream "
            f"{table.millis(median(ss['wire_p50']) or 0)}, no-op "
            f"{table.millis(median(noop['wire_p50']) or 0)}"
        ],
    )
    rows.append(wire_row)
    return rows


def raw_wire_latency(target: Target, key: str, rate: float, seconds: float, rep: int) -> Message:
    return run_json(
        python_module(
            "bench.wire",
            "latency",
            "--address",
            target.address,
            "--run-id",
            f"wire-{key}-{rep}",
            "--series",
            SERIES_OF[key],
            "--rate",
            rate,
            "--seconds",
            seconds,
        ),
        timeout=300,
    )


def run_json(argv: list[str], timeout: float) -> Message:
    """Run a one-shot driver that prints one JSON object; raise BenchError if it fails."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, env=bench_env(), timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(argv[2:4])}` did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise BenchError(f"`{' '.join(argv[2:4])}` failed:\n{done.stderr[-2000:]}")
    result: Message = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- 5: trainer-thread cost and a stalled service ---------------------------------------------


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
                f"after SIGCONT all {result['points']:,} logged points were acknowledged: {lossless}; "
                "the client's policy for a full queue is to block (documented in stepstream.Run)"
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


# -- 6: reads -------------------------------------------------------------------------------


def reads(ctx: Context) -> list[Row]:
    points = 50_000 if ctx.quick else 1_000_000
    batch = 10_000 if ctx.quick else 50_000
    stepstream = start_stepstream(ctx.work_dir)
    try:
        result = run_json(
            python_module(
                "bench.wire",
                "reads",
                "--address",
                stepstream.address,
                "--points",
                points,
                "--batch",
                batch,
                "--reps",
                max(ctx.reps, 3),
            ),
            timeout=900,
        )
    finally:
        stepstream.stop()

    def row(key: str, what: str, limit: float | None, target: str) -> Row:
        found = result[key]
        counts = set(found["points"]) if isinstance(found["points"], list) else {found["points"]}
        value = float(found["median"])
        return Row(
            f"6. read {what}",
            table.seconds if limit is None or limit >= 0.1 else table.millis,
            value,
            noop_text="n/a",
            mlflow_text="—",
            target=target,
            met=None if limit is None else value < limit,
            notes=[f"points returned: {', '.join(f'{c:,}' for c in sorted(counts))}"],
        )

    n = f"{points:,}"
    rows = [
        row("flat_whole", f"{n}-point series whole (ReadSeries)", MAX_READ_WHOLE, "< 0.3 s"),
        row("flat_down", f"{n} points downsampled, max_points=2000", MAX_READ_DOWN, "< 30 ms"),
        row("fork_whole", f"{n} points across two fork hops, whole", MAX_READ_WHOLE, "< 0.3 s"),
        row("fork_down", f"{n} points across two fork hops, downsampled", MAX_READ_DOWN, "< 30 ms"),
        row("client_whole", f"{n} points whole via stepstream.read_series (lists)", None, "—"),
    ]
    rows[0].notes.append(
        f"written first through AppendPoints in {batch:,}-point batches: "
        f"{result['write_seconds']:.2f} s for {result['written']:,} points; reads timed on a "
        "grpc.aio stub, consuming every message; one untimed warm-up read each"
    )
    return rows


def register(ctx_shapes: dict[str, Shape]) -> dict[str, Callable[[Context], list[Row]]]:
    """Case name → function, in the order they run ((a) and (b) before the latency cases,
    which offer half of the throughput those measured)."""
    cases: dict[str, Callable[[Context], list[Row]]] = {}
    for key, shape in ctx_shapes.items():
        cases[key] = lambda ctx, shape=shape: ingest(ctx, shape)  # type: ignore[misc]
    cases["latency"] = lambda ctx: latency(ctx, "a") + latency(ctx, "b")
    cases["cost"] = cost
    cases["stall"] = stall
    cases["reads"] = reads
    return cases


def error_row(name: str, error: BaseException) -> Row:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return Row(
        f"{name}: FAILED",
        table.rate,
        stepstream_text=f"error: {first[:160]}",
        met=False,
        notes=[f"{type(error).__name__}: {str(error)[:1500]}"],
    )
