"""Case 6: reading a 1,000,000-point series, whole and downsampled, flat and across two fork
hops."""

from __future__ import annotations

from bench import table
from bench.cases import MAX_READ_DOWN, MAX_READ_WHOLE, Context, run_json
from bench.procs import python_module
from bench.table import Row
from bench.targets import start_stepstream


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
        fmt = table.seconds if limit is None or limit >= 0.1 else table.millis
        return Row(
            f"6. read {what}",
            fmt,
            value,
            noop_text="n/a",
            mlflow_text="—",
            target=target,
            met=None if limit is None else value < limit,
            notes=[
                f"points returned: {', '.join(f'{c:,}' for c in sorted(counts))}; per "
                f"repetition: {', '.join(fmt(t) for t in found['seconds'])}"
            ],
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
