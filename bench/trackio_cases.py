"""Case 8: Trackio's own workloads (10 series x 20,000 steps, timed from the first log call
until close returns), through stepstream (SQLite; per-call also on PostgreSQL), the no-op sink
and Trackio's self-hosted server, measured in turn repetition by repetition."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from bench import table
from bench.cases import Context
from bench.procs import BenchError, DriverPool, python_module
from bench.table import Row, median
from bench.targets import Target, start_noop_sink, start_stepstream, start_stepstream_pg
from bench.trackio_env import TrackioServer
from bench.trackio_env import python as trackio_python

# Targets from the issue (ratios against Trackio in the same run).
PER_CALL_MIN_RATE = 400_000
PER_CALL_MIN_OVER_TRACKIO = 10
DICT_MIN_OVER_TRACKIO = 20
WIDE_MIN_OVER_TRACKIO = 10
MAX_CLOSE_SHARE = 0.20
MAX_CALL_SECONDS = 2e-6
TRACKIO_PROJECT = "stepstream-bench"


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    mode: str  # bench.trackio_driver's workload
    series: int
    steps: int
    min_over_trackio: int

    @property
    def points(self) -> int:
        return self.series * self.steps


def workloads(quick: bool) -> list[Workload]:
    steps, wide_steps = (2_000, 20) if quick else (20_000, 200)
    return [
        Workload("dict", f"10 series x {steps:,} steps, one dict per step", "dict", 10, steps, 20),
        Workload("call", f"10 series x {steps:,} steps, one call per point", "call", 10, steps, 10),
        Workload(
            "wide", f"1,000 series x {wide_steps:,} steps, one dict per step", "dict", 1000,
            wide_steps, 10,
        ),
    ]  # fmt: skip


@dataclass
class Measured:
    rates: list[float]
    close_shares: list[float]  # close() wait / logging loop
    call_seconds: list[float]  # logging loop / calls


def one_rep(
    argv: list[str], env: dict[str, str] | None, ctx: Context, prepare: dict[str, object]
) -> dict[str, float]:
    """One fresh writer process: prepare, go, exit; its answer."""
    with DriverPool("trackio-workload", [argv], ctx.work_dir, env=env) as pool:
        pool.command({"cmd": "prepare", **prepare})
        (result,) = pool.command({"cmd": "go"}, timeout=900)
    return result


def trackio_workloads(ctx: Context) -> list[Row]:
    chosen = workloads(ctx.quick)
    with ExitStack() as stack:
        targets: dict[str, Target] = {}
        factories: list[tuple[str, Callable[[], Target]]] = [
            ("stepstream", lambda: start_stepstream(ctx.work_dir))
        ]
        if not ctx.postgres_reason:
            factories.append(("stepstream pg x1", lambda: start_stepstream_pg(ctx.work_dir, 1)))
        factories.append(("no-op", lambda: start_noop_sink(ctx.work_dir)))
        for label, factory in factories:
            target = factory()
            stack.callback(target.stop)
            targets[label] = target
        trackio: TrackioServer | None = None
        trackio_reason = ctx.trackio_reason
        if not trackio_reason:
            try:
                trackio = TrackioServer(ctx.work_dir)
                stack.callback(trackio.stop)
            except Exception as exc:
                trackio_reason = f"trackio show failed: {str(exc).strip().splitlines()[0][:200]}"
                ctx.progress(trackio_reason)
        found: dict[tuple[str, str], Measured] = {}
        lost: list[str] = []
        ss_argv = python_module("bench.trackio_driver")
        for rep in range(ctx.reps):
            for w in chosen:
                for label, target in targets.items():
                    if label.startswith("stepstream pg") and w.key != "call":
                        continue  # PostgreSQL: the per-call rows
                    run_id = f"trackio-{w.key}-{label.replace(' ', '-')}-{rep}"
                    result = one_rep(
                        ss_argv,
                        None,
                        ctx,
                        {
                            "target": "stepstream",
                            "address": target.address,
                            "run": run_id,
                            "workload": w.mode,
                            "series": w.series,
                            "steps": w.steps,
                        },
                    )
                    if int(result["acked"]) != w.points:
                        raise BenchError(
                            f"{label} {w.key}: {result['acked']:,} of {w.points:,} acknowledged"
                        )
                    record(found, label, w, result, w.points)
                if trackio is not None:
                    run_name = f"{w.key}-{rep}"
                    result = one_rep(
                        [str(trackio_python()), "-m", "bench.trackio_driver"],
                        trackio.driver_env(),
                        ctx,
                        {
                            "target": "trackio",
                            "url": trackio.url,
                            "project": TRACKIO_PROJECT,
                            "run": run_name,
                            "workload": w.mode,
                            "series": w.series,
                            "steps": w.steps,
                        },
                    )
                    stored = trackio.stored_points(TRACKIO_PROJECT, run_name)
                    if stored != w.points:
                        lost.append(f"{w.key} rep {rep + 1}: {stored:,} of {w.points:,} stored")
                    record(found, "trackio", w, result, stored)
                summary = ", ".join(
                    f"{label} {m.rates[-1]:,.0f}"
                    for (label, key), m in found.items()
                    if key == w.key and len(m.rates) == rep + 1
                )
                ctx.progress(f"trackio workload {w.key} rep {rep + 1}: {summary} pts/s")
        titles = {label: target.title for label, target in targets.items()}
    return rows_for(ctx, chosen, found, titles, trackio_reason, lost)


def record(
    found: dict[tuple[str, str], Measured],
    label: str,
    w: Workload,
    result: dict[str, float],
    stored: int,
) -> None:
    loop_seconds = result["t_logged"] - result["t0"]
    m = found.setdefault((label, w.key), Measured([], [], []))
    m.rates.append(stored / (result["t1"] - result["t0"]))
    m.close_shares.append((result["t1"] - result["t_logged"]) / loop_seconds)
    m.call_seconds.append(loop_seconds / result["calls"])


def rows_for(
    ctx: Context,
    chosen: list[Workload],
    found: dict[tuple[str, str], Measured],
    titles: dict[str, str],
    trackio_reason: str,
    lost: list[str],
) -> list[Row]:
    def med(label: str, key: str, what: str) -> float | None:
        m = found.get((label, key))
        return median(getattr(m, what)) if m is not None else None

    trackio_text = f"n/a ({trackio_reason})" if trackio_reason else None
    rows: list[Row] = []
    labels = [label for label in titles if label != "no-op"]
    for w in chosen:
        tr = med("trackio", w.key, "rates")
        for label in labels:
            rate = med(label, w.key, "rates")
            if rate is None:
                continue
            conditions = [] if tr is None else [rate >= w.min_over_trackio * tr]
            target_text = [f"≥ {w.min_over_trackio}x Trackio"]
            if w.key == "call":
                share = med(label, w.key, "close_shares")
                assert share is not None
                conditions += [rate >= PER_CALL_MIN_RATE, share <= MAX_CLOSE_SHARE]
                target_text = [
                    f"≥ {PER_CALL_MIN_RATE:,} pts/s",
                    *target_text,
                    f"close() ≤ {MAX_CLOSE_SHARE:.0%} of the loop ({share:.0%})",
                ]
            m = found[(label, w.key)]
            rows.append(
                Row(
                    f"8. Trackio's workload {w.title}, log call → close(): {titles[label]}",
                    table.rate,
                    rate,
                    med("no-op", w.key, "rates"),
                    trackio=tr,
                    trackio_text=trackio_text,
                    target="; ".join(target_text),
                    met=all(conditions) if tr is not None else None,
                    notes=[
                        "per-repetition pts/s: "
                        + ", ".join(f"{r:,.0f}" for r in m.rates)
                        + "; close() wait / loop: "
                        + ", ".join(f"{s:.0%}" for s in m.close_shares)
                    ],
                )
            )
        if ctx.postgres_reason and w.key == "call":
            rows.append(
                Row(
                    f"8. Trackio's workload {w.title}: stepstream (PostgreSQL)",
                    table.rate,
                    stepstream_text=f"n/a ({ctx.postgres_reason})",
                )
            )
    call = next(w for w in chosen if w.key == "call")
    for label in labels:
        seconds = med(label, "call", "call_seconds")
        if seconds is None:
            continue
        rows.append(
            Row(
                f"8. trainer thread per one-key log_metrics call (loop time / calls, the "
                f"loop's own cost included), {call.title}: {titles[label]}",
                table.micros,
                seconds,
                med("no-op", "call", "call_seconds"),
                trackio=med("trackio", "call", "call_seconds"),
                trackio_text=trackio_text,
                target=f"≤ {MAX_CALL_SECONDS * 1e6:g} µs",
                met=seconds <= MAX_CALL_SECONDS,
                notes=[
                    "Trackio's column: trackio.log per call (it queues to a background thread too)"
                ],
            )
        )
    if lost:
        rows[0].notes.append("Trackio stored fewer points than logged: " + "; ".join(lost))
    return rows
