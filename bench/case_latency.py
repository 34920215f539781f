"""Case 4: acknowledgement latency at half the measured maximum load."""

from __future__ import annotations

from bench import table
from bench.cases import MAX_P99, Context, both_targets, run_json
from bench.procs import DriverPool, Message, python_module
from bench.table import Row, median
from bench.targets import Target

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
                pool.command(
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
                for name in ("p50", "p99", "achieved_rate", "points_per_batch"):
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
            row.notes.append(
                f"{basis}; achieved {achieved:,.0f} pts/s; the client sent "
                f"{median(ss['points_per_batch']) or 0:,.0f} points per batch on average "
                f"(no-op: {median(noop['points_per_batch']) or 0:,.0f}); measured {how}"
            )
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
