"""Cases 1, 2, 3 and 7: durable ingest of each shape through `stepstream.Run`, on SQLite and (for
shapes a, b, c) on PostgreSQL through 1 and 2 replicas, the same against the no-op sink and
MLflow, the read-back check of (c) on every store, and the service's peak memory under (d)."""

from __future__ import annotations

from typing import Any

from bench import table
from bench.cases import (
    MIN_OVER_MLFLOW,
    PG_SHAPE_A_MIN_OF_SQLITE,
    PG_SHAPE_B_MIN_RATE,
    PG_SHAPES,
    SHAPE_B_MIN_OF_NOOP,
    SHAPE_B_MIN_RATE,
    SHAPE_C_MIN_OF_SINGLE,
    Context,
    Shape,
    aggregate_rate,
    create_run,
    ingest_targets,
)
from bench.mlflow_env import MLFLOW_ENV
from bench.mlflow_env import python as mlflow_python
from bench.procs import BenchError, DriverPool, bench_env, python_module
from bench.table import Row, median
from bench.targets import Target


def ingest_rep(pool: DriverPool, target: Target, shape: Shape, tag: str) -> tuple[float, str]:
    """One repetition of `shape` against `target`: (points/s, the shared run's ID or "").
    Driver process i logs to replica i % n of a target with n replicas."""
    shared = f"{tag}-shared" if shape.shared_run else ""
    if shared:
        create_run(target.address, shared)
    for i in range(shape.procs):
        run_ids = [shared] if shared else [f"{tag}-p{i}-{j}" for j in range(shape.runs_per_proc)]
        pool.send(
            {
                "cmd": "prepare",
                "address": target.address_for(i),
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


def per_rep(values: list[float]) -> str:
    return ", ".join(f"{r:,.0f}" for r in values)


def ingest(ctx: Context, shape: Shape) -> list[Row]:
    postgres = shape.key in PG_SHAPES and not ctx.postgres_reason
    rates: dict[str, list[float]] = {}
    titles: dict[str, str] = {}
    replicas: dict[str, int] = {}
    checks: dict[str, list[tuple[int, int]]] = {}
    memory: dict[str, Any] = {}
    argv = [python_module("bench.driver", "ingest")] * shape.procs
    with (
        ingest_targets(ctx, postgres) as targets,
        DriverPool(f"ingest-{shape.key}", argv, ctx.work_dir) as pool,
    ):
        for target in targets:
            rates[target.label] = []
            titles[target.label] = target.title
            replicas[target.label] = len(target.addresses)
        for rep in range(ctx.reps):
            for target in targets:
                tag = f"{shape.key}-{target.label.replace(' ', '-')}-{rep}"
                rate, shared = ingest_rep(pool, target, shape, tag)
                rates[target.label].append(rate)
                ctx.progress(f"{shape.title} {target.label} rep {rep + 1}: {rate:,.0f} pts/s")
                if shared and target.label != "no-op":
                    # Through the last replica: a run written through all of them reads back
                    # whole from any one.
                    checks.setdefault(target.label, []).append(
                        verify_shared_run(target.addresses[-1], shared, shape)
                    )
        stepstream, noop = targets[0], targets[-1]
        memory = {
            "stepstream": stepstream.server.peak_rss_kb(),
            "redis": sum(stepstream.server.children_peak_rss_kb().values()),
            "no-op": noop.server.peak_rss_kb(),
        }
    ml_rates, ml_note = mlflow_ingest(ctx, shape, "batch")
    medians = {label: median(values) for label, values in rates.items()}
    ss_rate = medians["stepstream"]
    noop_rate = medians["no-op"]
    ml_rate = median(ml_rates)
    assert ss_rate is not None and noop_rate is not None
    ctx.measured[f"rate:{shape.key}"] = ss_rate  # SQLite: what (c) and the latency cases use
    ml_text = None if ml_rates else f"n/a ({ctx.mlflow_reason or ml_note})"
    # Shapes with PostgreSQL rows name the SQLite one too; (d) keeps its old name.
    suffix = f": {titles['stepstream']}" if shape.key in PG_SHAPES else ""
    row = Row(
        f"1. ingest {shape.title}, durable, via stepstream.Run{suffix}",
        table.rate,
        ss_rate,
        noop_rate,
        ml_rate,
        mlflow_text=ml_text,
    )
    if ml_note and ml_note != ctx.mlflow_reason:
        row.notes.append(ml_note)
    row.notes.append(
        "per-repetition pts/s: stepstream "
        + per_rep(rates["stepstream"])
        + "; no-op "
        + per_rep(rates["no-op"])
    )
    conditions: list[bool] = []
    targets_text: list[str] = []
    if shape.key == "b":
        conditions += [ss_rate >= SHAPE_B_MIN_RATE, ss_rate >= SHAPE_B_MIN_OF_NOOP * noop_rate]
        targets_text += [f"≥ {SHAPE_B_MIN_RATE:,} pts/s", f"≥ {SHAPE_B_MIN_OF_NOOP:.0%} of no-op"]
    if shape.key == "c" and "rate:a" in ctx.measured:
        single = ctx.measured["rate:a"]
        conditions.append(ss_rate >= SHAPE_C_MIN_OF_SINGLE * single)
        targets_text.append(
            f"≥ {SHAPE_C_MIN_OF_SINGLE:.0%} of (a) ({ss_rate / single:.0%} of {single:,.0f})"
        )
    if ml_rate:
        conditions.append(ss_rate >= MIN_OVER_MLFLOW * ml_rate)
    targets_text.append(f"≥ {MIN_OVER_MLFLOW}x MLflow")
    row.target = "; ".join(targets_text)
    row.met = all(conditions) if conditions else None
    rows = [row]
    rows += postgres_rows(shape, rates, medians, titles, replicas, ml_rate, ml_text)
    if not postgres and shape.key in PG_SHAPES:
        rows.append(
            Row(
                f"1. ingest {shape.title}, durable, via stepstream.Run: stepstream (PostgreSQL)",
                table.rate,
                stepstream_text=f"n/a ({ctx.postgres_reason})",
            )
        )
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
                target=f"≥ {MIN_OVER_MLFLOW}x MLflow",
                met=(ss_rate >= MIN_OVER_MLFLOW * single_rates[0]) if single_rates else None,
                notes=[single_note] if single_note and single_note != ctx.mlflow_reason else [],
            )
        )
    for label, found in checks.items():
        lost = sum(c[0] for c in found)
        dup = sum(c[1] for c in found)
        total = shape.points * len(found)
        where = f", {titles[label]}" if shape.key in PG_SHAPES else ""
        via = (
            f" through replica {replicas[label]} of {replicas[label]}"
            if replicas[label] > 1
            else ""
        )
        rows.append(
            Row(
                f"1. {shape.title}{where}: read back, lost / duplicated",
                table.rate,
                stepstream_text=f"{lost:,} lost / {dup:,} dup of {total:,}",
                target="0 lost, 0 duplicated",
                met=lost == 0 and dup == 0,
                notes=[
                    f"every series of every repetition read back with stepstream.read_series"
                    f"{via} ({shape.procs * shape.series} series x {len(found)} runs)"
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


def postgres_rows(
    shape: Shape,
    rates: dict[str, list[float]],
    medians: dict[str, float | None],
    titles: dict[str, str],
    replicas: dict[str, int],
    ml_rate: float | None,
    ml_text: str | None,
) -> list[Row]:
    """One row per PostgreSQL target measured, with its targets: (a) 1 replica ≥ 50% of
    SQLite, (b) 1 replica ≥ 1M points/s, (c) 2 replicas against 1 (no target set)."""
    rows: list[Row] = []
    sqlite = medians["stepstream"]
    one = medians.get("stepstream pg x1")
    assert sqlite is not None
    for label, value in medians.items():
        if not label.startswith("stepstream pg") or value is None:
            continue
        n = replicas[label]
        row = Row(
            f"1. ingest {shape.title}, durable, via stepstream.Run: {titles[label]}",
            table.rate,
            value,
            medians["no-op"],
            ml_rate,
            mlflow_text=ml_text,
        )
        row.notes.append(
            f"per-repetition pts/s: {per_rep(rates[label])}; "
            f"{value / sqlite:.2f}x the SQLite median"
            + (f", {value / one:.2f}x 1 replica" if n > 1 and one else "")
        )
        if n > 1 and shape.procs == 1:
            row.notes.append(
                f"one writer process: it logs to the first replica only, "
                f"{'the second idles' if n == 2 else f'the other {n - 1} idle'} "
                f"(driver i logs to replica i % {n})"
            )
        elif n > 1:
            row.notes.append(
                f"driver process i logs to replica i % {n} "
                f"({-(-shape.procs // n)} writer processes per replica)"
            )
        if n == 1 and shape.key == "a":
            row.target = (
                f"≥ {PG_SHAPE_A_MIN_OF_SQLITE:.0%} of SQLite "
                f"({value / sqlite:.0%} of {sqlite:,.0f})"
            )
            row.met = value >= PG_SHAPE_A_MIN_OF_SQLITE * sqlite
        elif n == 1 and shape.key == "b":
            row.target = f"≥ {PG_SHAPE_B_MIN_RATE:,} pts/s ({value / sqlite:.0%} of SQLite)"
            row.met = value >= PG_SHAPE_B_MIN_RATE
        elif n > 1 and shape.key == "c" and one:
            row.target = f"none set ({n} replicas / 1: {value / one:.2f}x)"
        rows.append(row)
    return rows


def mlflow_ingest(ctx: Context, shape: Shape, mode: str) -> tuple[list[float], str]:
    """MLflow points/s per repetition for `shape` (empty with a reason when unavailable or
    when MLflow failed: the other columns of the row stand on their own)."""
    try:
        return _mlflow_ingest(ctx, shape, mode)
    except (BenchError, OSError) as exc:  # OSError: urllib's errors creating a shared run
        first = str(exc).strip().splitlines()[0][:300]
        ctx.progress(f"MLflow {shape.key} {mode} failed: {first}")
        return [], f"MLflow failed: {first}"


def _mlflow_ingest(ctx: Context, shape: Shape, mode: str) -> tuple[list[float], str]:
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
