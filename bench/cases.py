"""The cases: each starts what it needs, runs its repetitions and returns table rows.

Within a case, stepstream and the no-op sink are measured alternately, repetition by
repetition, so that the noise of this shared machine falls on both columns alike.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench import table
from bench.mlflow_env import MlflowServer
from bench.procs import BenchError, Message, bench_env
from bench.table import Row
from bench.targets import Target, start_noop_sink, start_stepstream, start_stepstream_pg

# Targets from the issue.
SHAPE_B_MIN_RATE = 2_000_000
SHAPE_B_MIN_OF_NOOP = 0.5
MIN_OVER_MLFLOW = 300
MAX_P99 = 0.020
MAX_CPU_PER_POINT = 1e-6
SHAPE_C_MIN_OF_SINGLE = 0.8
# PostgreSQL targets (the replicas issue): shape (a) through 1 replica at least half of the
# SQLite figure; shape (b) through 1 replica at least 1M points/s, durable. Shape (c) through
# 2 replicas is reported as a ratio to 1 replica, with no target set.
PG_SHAPE_A_MIN_OF_SQLITE = 0.5
PG_SHAPE_B_MIN_RATE = 1_000_000
# The PostgreSQL targets measured beside SQLite in the ingest shapes below (replica counts).
PG_REPLICAS = (1, 2)
PG_SHAPES = ("a", "b", "c")
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
    # "" when the PostgreSQL targets can run; else why not (--no-postgres, unreachable).
    postgres_reason: str = ""
    # "" when Trackio is installed (bench/.trackio-venv); else why not (--no-trackio, ...).
    trackio_reason: str = ""
    # Medians other cases build on: "rate:a" (stepstream points/s of shape a), ...
    measured: dict[str, float] = field(default_factory=dict)
    # Where the table is written; cases that draw a plot put it beside it.
    out_dir: Path | None = None

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


@contextmanager
def ingest_targets(ctx: Context, postgres: bool) -> Iterator[list[Target]]:
    """Every target an ingest shape alternates over, in measuring order: stepstream on SQLite,
    then (with `postgres`) stepstream on PostgreSQL through each of PG_REPLICAS replicas, then
    the no-op sink; all stopped afterwards (servers by their PIDs, databases dropped)."""
    factories: list[Callable[[], Target]] = [lambda: start_stepstream(ctx.work_dir)]
    if postgres:
        factories += [functools.partial(start_stepstream_pg, ctx.work_dir, n) for n in PG_REPLICAS]
    factories.append(lambda: start_noop_sink(ctx.work_dir))
    with ExitStack() as stack:
        targets = []
        for factory in factories:
            target = factory()
            stack.callback(target.stop)
            targets.append(target)
        yield targets


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


def error_row(name: str, error: BaseException) -> Row:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return Row(
        f"{name}: FAILED",
        table.rate,
        stepstream_text=f"error: {first[:160]}",
        met=False,
        notes=[f"{type(error).__name__}: {str(error)[:1500]}"],
    )


def register(shapes: dict[str, Shape]) -> dict[str, Callable[[Context], list[Row]]]:
    """Case name → function, in the order they run ((a) and (b) before the latency cases,
    which offer half of the throughput those measured)."""
    from bench.case_growth import growth
    from bench.case_hostile import hostile
    from bench.case_ingest import ingest
    from bench.case_latency import latency
    from bench.case_node import node_ingest
    from bench.case_reads import reads
    from bench.case_security import security
    from bench.case_spool import spool
    from bench.case_trainer import cost, stall
    from bench.case_web import web
    from bench.trackio_cases import trackio_workloads

    cases: dict[str, Callable[[Context], list[Row]]] = {}
    for key, shape in shapes.items():
        cases[key] = functools.partial(ingest, shape=shape)
    cases["node"] = functools.partial(node_ingest, shape=shapes["b"])
    cases["latency"] = lambda ctx: latency(ctx, "a") + latency(ctx, "b")
    cases["cost"] = cost
    cases["trackio"] = trackio_workloads
    cases["stall"] = stall
    cases["reads"] = reads
    cases["web"] = web
    cases["hostile"] = hostile
    cases["security"] = functools.partial(security, shapes=shapes)
    cases["spool"] = spool
    cases["growth"] = growth  # opt-in (OPT_IN): minutes long, run with --cases growth
    return cases


# Cases that "all" leaves out.
OPT_IN = ("growth",)
