"""Case 8: cost as the store grows. One `stepstream serve` (SQLite, defaults) is filled to
100,000,000 points (100 runs of 100 series x 10,000 steps, plus a 1,000,000-point reference
series) in FloatBlock batches of 100,000 points through the real service; at each checkpoint
(empty, then once at least 1 M, 10 M and 100 M points are stored: a checkpoint is reached
a run or two past its figure, and the probes add to the store) the driver measures:

- ingest: a probe of fresh runs written the same way (points/s; median of the probes);
- reads of the reference series: its last 10,000 steps, and the whole series downsampled to
  2,000 points (median of 5, after one untimed read);
- the service's RSS (VmRSS of the `stepstream serve` process).

Then one run gets 1,000,000 distinct series (one point each, 20,000 series per batch), with
the service's RSS after 10,000, 100,000 and 1,000,000 of them. The curves are plotted into
`growth.png` beside the table (`growth-quick.png` in quick mode, whose sizes are 100x smaller).

The driver half of this module runs in its own process: `python -m bench.case_growth ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Targets from the issue: ingest at the last checkpoint >= 90% of the empty store's rate; reads
# no slower than at the first non-empty checkpoint; RSS flat.
MIN_RATE_OF_EMPTY = 0.9
# "No slower" on a shared machine: a read within this factor of the first checkpoint's.
READ_SLACK = 1.25
# "Flat": RSS at the end within this factor of RSS at the first checkpoint (plus 50 MiB).
RSS_SLACK = 1.25
RSS_SLACK_KB = 50 * 1024


@dataclass(frozen=True)
class Plan:
    checkpoints: tuple[int, ...]  # stored points at which to measure (0 = empty store)
    series: int  # series per filling run
    steps: int  # steps per filling run
    rows: int  # steps per batch (batch = series x rows points)
    reference: int  # points of the reference series
    probe_steps: int  # steps per probe run (two runs side by side per probe)
    probes: int  # probes per checkpoint
    wide: tuple[int, ...]  # distinct series of the wide run at which to read RSS
    wide_batch: int  # series per batch in the wide run
    tail: int = 10_000  # steps read from the end of the reference series
    max_points: int = 2_000
    reads: int = 5

    @staticmethod
    def make(quick: bool) -> Plan:
        if quick:
            return Plan((0, 100_000, 1_000_000), 10, 10_000, 1_000, 100_000, 2_000, 3,
                        (1_000, 10_000), 5_000)  # fmt: skip
        return Plan((0, 1_000_000, 10_000_000, 100_000_000), 100, 10_000, 1_000, 1_000_000, 2_000, 3,
                    (10_000, 100_000, 1_000_000), 20_000)  # fmt: skip


# -- the case (parent process) ---------------------------------------------------------------


def growth(ctx: Any) -> list[Any]:
    from bench import table
    from bench.cases import run_json
    from bench.procs import python_module
    from bench.table import Row
    from bench.targets import start_stepstream

    plan = Plan.make(ctx.quick)
    started = time.monotonic()
    stepstream = start_stepstream(ctx.work_dir)
    try:
        result = run_json(
            python_module(
                "bench.case_growth",
                "--address",
                stepstream.address,
                "--pid",
                stepstream.server.pid,
                *(["--quick"] if ctx.quick else []),
            ),
            timeout=600 if ctx.quick else 4 * 3600,
        )
    finally:
        stepstream.stop()
    took = time.monotonic() - started
    out_dir = getattr(ctx, "out_dir", None) or ctx.work_dir
    png = Path(out_dir) / ("growth-quick.png" if ctx.quick else "growth.png")
    plot(result, png)

    empty, first, last = (result["checkpoints"][i] for i in (0, 1, -1))
    n = f"{last['stored']:,}"
    rows: list[Row] = []

    def per_checkpoint(key: str, fmt: Any) -> str:
        return "; ".join(
            f"{c['stored']:,}: {fmt(c[key])}" for c in result["checkpoints"] if key in c
        )

    rows.append(
        Row(
            f"8. growth: ingest at {n} stored points vs empty store",
            table.rate,
            last["rate"],
            noop_text="n/a",
            mlflow_text="—",
            target=f"≥ {MIN_RATE_OF_EMPTY:.0%} of empty ({table.rate(empty['rate'])})",
            met=last["rate"] >= MIN_RATE_OF_EMPTY * empty["rate"],
            notes=[
                f"probe rates at each checkpoint: {per_checkpoint('rate', table.rate)}; "
                f"filled in {result['fill_seconds']:.0f} s ({result['stored']:,} points "
                f"stored in all); the whole case took {took:.0f} s; plot: {png.name}"
            ],
        )
    )
    for key, what in (("tail", f"last {plan.tail:,} steps"), ("down", "whole, downsampled")):
        rows.append(
            Row(
                f"8. growth: read the reference series ({plan.reference:,} points), {what}, "
                f"at {n} stored points",
                table.millis,
                last[key],
                noop_text="n/a",
                mlflow_text="—",
                target=f"no slower than at {first['stored']:,} ({table.millis(first[key])})",
                met=last[key] <= READ_SLACK * first[key],
                notes=[f"at each checkpoint: {per_checkpoint(key, table.millis)}"],
            )
        )
    rss_last, rss_first = last["rss_kb"], first["rss_kb"]
    rows.append(
        Row(
            f"8. growth: service RSS at {n} stored points",
            table.mebibytes,
            rss_last,
            noop_text="n/a",
            mlflow_text="—",
            target=f"flat (vs {table.mebibytes(rss_first)} at {first['stored']:,})",
            met=rss_last <= RSS_SLACK * rss_first + RSS_SLACK_KB,
            notes=[f"at each checkpoint: {per_checkpoint('rss_kb', table.mebibytes)}"],
        )
    )
    wide = result["wide"]
    rows.append(
        Row(
            f"8. growth: service RSS with {wide[-1]['series']:,} distinct series in one run",
            table.mebibytes,
            wide[-1]["rss_kb"],
            noop_text="n/a",
            mlflow_text="—",
            target=f"flat (vs {table.mebibytes(rss_last)} before the wide run)",
            met=wide[-1]["rss_kb"] <= RSS_SLACK * rss_last + RSS_SLACK_KB,
            notes=[
                "after each count of series: "
                + "; ".join(f"{w['series']:,}: {table.mebibytes(w['rss_kb'])}" for w in wide)
            ],
        )
    )
    return rows


def plot(result: dict[str, Any], png: Path) -> None:
    """Ingest rate, read times and RSS against stored points, and RSS against series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cps = result["checkpoints"]
    empty, grown = cps[0], cps[1:]
    xs = [c["stored"] for c in grown]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    axes[0].plot(xs, [c["rate"] / 1e6 for c in grown], "o-", label="probe")
    axes[0].axhline(empty["rate"] / 1e6, ls="--", c="gray", label="empty store")
    axes[0].axhline(MIN_RATE_OF_EMPTY * empty["rate"] / 1e6, ls=":", c="red", label="90% of empty")
    axes[0].set_ylabel("ingest, M points/s")
    axes[0].legend(fontsize=8)
    axes[1].plot(xs, [c["tail"] * 1e3 for c in grown], "o-", label="last 10,000 steps")
    axes[1].plot(xs, [c["down"] * 1e3 for c in grown], "s-", label="whole, downsampled")
    axes[1].set_ylabel("read of one series, ms")
    axes[1].legend(fontsize=8)
    axes[2].plot(xs, [c["rss_kb"] / 1024 for c in grown], "o-")
    axes[2].axhline(empty["rss_kb"] / 1024, ls="--", c="gray", label="empty store")
    axes[2].set_ylabel("service RSS, MiB")
    axes[2].legend(fontsize=8)
    for ax in axes[:3]:
        ax.set_xscale("log")
        ax.set_xlabel("stored points")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    wide = result["wide"]
    axes[3].plot([w["series"] for w in wide], [w["rss_kb"] / 1024 for w in wide], "o-")
    axes[3].set_xscale("log")
    axes[3].set_xlabel("distinct series in one run")
    axes[3].set_ylabel("service RSS, MiB")
    axes[3].set_ylim(bottom=0)
    axes[3].grid(alpha=0.3)
    fig.suptitle(f"stepstream (SQLite): cost as the store grows ({result['machine']})", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


# -- the driver (its own process) ------------------------------------------------------------


def encode_block(
    sequence: int, names: bytes, steps: np.ndarray[Any, Any], values: np.ndarray[Any, Any]
) -> bytes:
    """AppendPointsRequest{batch: PointBatch{sequence, float_blocks: [FloatBlock]}}; `names`
    is the block's names field, already encoded."""
    from bench.wire import field, varint

    block = (
        names
        + field(0x12, steps.astype("<f8").tobytes())
        + field(0x1A, values.astype("<f8").tobytes())
    )
    return field(0x12, b"\x08" + varint(sequence) + field(0x22, block))


def encode_names(names: list[str]) -> bytes:
    from bench.wire import field

    return b"".join(field(0x0A, n.encode()) for n in names)


class Filler:
    """Writes runs through AppendPoints, several batches in flight per stream."""

    WINDOW = 4

    def __init__(self, channel: Any, runs: Any, plan: Plan) -> None:
        self.channel = channel
        self.runs = runs
        self.plan = plan
        self.count = 0
        self.stored = 0

    async def write_run(
        self, run_id: str, names: list[str], steps: int, rows: int, values_seed: float = 0.0
    ) -> int:
        """Steps 0..steps-1 of every name, `rows` steps per batch; returns points accepted."""
        import grpc.aio
        from stepstream.v1 import runs_pb2

        from bench.wire import open_stream

        await self.runs.CreateRun(runs_pb2.CreateRunRequest(run_id=run_id))
        call = await open_stream(self.channel, run_id, "growth")
        encoded = encode_names(names)
        batches = list(range(0, steps, rows))
        accepted = answered = 0

        async def read_answers() -> None:
            nonlocal accepted, answered
            for _ in batches:
                answer: Any = await call.read()
                if answer is grpc.aio.EOF or answer.WhichOneof("result") != "appended":
                    raise RuntimeError(f"{run_id}: a batch failed: {answer}")
                accepted += answer.appended.accepted_count
                answered += 1

        reader = asyncio.create_task(read_answers())
        for sequence, lo in enumerate(batches, start=1):
            while sequence - answered > self.WINDOW and not reader.done():
                await asyncio.sleep(0.001)  # at most WINDOW batches unacknowledged
            hi = min(lo + rows, steps)
            step_arr = np.arange(lo, hi, dtype=np.float64)
            values = np.sin(np.arange(lo * len(names), hi * len(names)) / 997.0 + values_seed)
            await call.write(encode_block(sequence, encoded, step_arr, values))
        await reader
        await call.done_writing()
        expected = steps * len(names)
        if accepted != expected:
            raise RuntimeError(f"{run_id}: {accepted:,} of {expected:,} points accepted")
        self.stored += accepted
        return accepted

    async def fill_run(self) -> None:
        names = [f"layer{k:03d}/metric" for k in range(self.plan.series)]
        self.count += 1
        await self.write_run(f"fill-{self.count:05d}", names, self.plan.steps, self.plan.rows)


def rss_kb(pid: int) -> int:
    from bench.procs import proc_status_kb

    return proc_status_kb(pid, "VmRSS") or 0


async def timed_read(runs: Any, run_id: str, name: str, **kw: Any) -> tuple[float, int]:
    from stepstream.v1 import runs_pb2

    request = runs_pb2.ReadSeriesRequest(
        selector=runs_pb2.SeriesSelector(run_id=run_id), names=[name], **kw
    )
    start = time.perf_counter()
    points = 0
    async for part in runs.ReadSeries(request):
        points += len(part.steps)
    return time.perf_counter() - start, points


async def median_read(runs: Any, plan: Plan, **kw: Any) -> tuple[float, int]:
    await timed_read(runs, "reference", "train/loss", **kw)  # untimed
    found = [await timed_read(runs, "reference", "train/loss", **kw) for _ in range(plan.reads)]
    return statistics.median(t for t, _ in found), found[0][1]


async def drive(address: str, pid: int, plan: Plan) -> dict[str, Any]:
    import grpc.aio
    from stepstream.v1 import runs_pb2_grpc

    from bench.table import machine
    from bench.wire import CHANNEL_OPTIONS

    out: dict[str, Any] = {"plan": asdict(plan), "checkpoints": [], "wide": []}
    out["machine"] = machine().split(";")[0].removeprefix("machine: ")
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        runs = runs_pb2_grpc.RunServiceStub(channel)
        filler = Filler(channel, runs, plan)
        fill_seconds = 0.0
        probe = 0
        referenced = False
        for checkpoint in plan.checkpoints:
            t = time.perf_counter()
            if checkpoint > 0 and not referenced:
                referenced = True
                # The reference series first: 1 series, in batches of `rows * series` points.
                await filler.write_run(
                    "reference", ["train/loss"], plan.reference, plan.rows * plan.series
                )
            while filler.stored < checkpoint:
                await asyncio.gather(filler.fill_run(), filler.fill_run())
            fill_seconds += time.perf_counter() - t
            rates = []
            at = filler.stored
            names = [f"layer{k:03d}/metric" for k in range(plan.series)]
            for _ in range(plan.probes):
                t = time.perf_counter()
                probe += 2
                written = await asyncio.gather(
                    *(
                        filler.write_run(
                            f"probe-{probe - k:04d}", names, plan.probe_steps, plan.rows
                        )
                        for k in range(2)
                    )
                )
                rates.append(sum(written) / (time.perf_counter() - t))
            entry: dict[str, Any] = {
                "points": checkpoint,
                "stored": at,
                "rate": statistics.median(rates),
                "rates": rates,
                "rss_kb": rss_kb(pid),
            }
            if checkpoint > 0:
                tail, n_tail = await median_read(
                    runs, plan, step_min=float(plan.reference - plan.tail)
                )
                down, n_down = await median_read(runs, plan, max_points=plan.max_points)
                if n_tail != plan.tail or not 0 < n_down <= plan.max_points:
                    raise RuntimeError(f"reference reads returned {n_tail} and {n_down} points")
                entry.update(tail=tail, down=down)
            out["checkpoints"].append(entry)
            print(f"growth: {json.dumps(entry)}", file=sys.stderr, flush=True)
        out["fill_seconds"] = fill_seconds
        out["stored"] = filler.stored
        # The wide run: distinct series, one point each.
        done = 0
        from stepstream.v1 import runs_pb2

        from bench.wire import open_stream

        await runs.CreateRun(runs_pb2.CreateRunRequest(run_id="wide"))
        call = await open_stream(channel, "wide", "growth")
        sequence = 0
        for target in plan.wide:
            while done < target:
                width = min(plan.wide_batch, target - done)
                names = [f"wide/s{done + k:07d}" for k in range(width)]
                sequence += 1
                await call.write(
                    encode_block(
                        sequence, encode_names(names), np.zeros(1), np.arange(width, dtype=float)
                    )
                )
                answer: Any = await call.read()
                if answer.WhichOneof("result") != "appended" or (
                    answer.appended.accepted_count != width
                ):
                    raise RuntimeError(f"wide run: batch {sequence} failed: {answer}")
                done += width
            out["wide"].append({"series": done, "rss_kb": rss_kb(pid)})
        await call.done_writing()
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.case_growth")
    parser.add_argument("--address", required=True)
    parser.add_argument("--pid", type=int, required=True, help="the service's PID (for RSS)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(drive(args.address, args.pid, Plan.make(args.quick)))))


if __name__ == "__main__":
    main(sys.argv[1:])
