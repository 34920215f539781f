"""Case 8: cost as the store grows. Two `stepstream serve` (SQLite, defaults): one is filled to
100,000,000 points (runs of 100 series x 10,000 steps, two side by side, in FloatBlock batches
of 100,000 points through the real service); the other, fresh, only takes the probes. Both
first get a 1,000,000-point reference series and one unmeasured warm-up probe. At each
checkpoint (once the grown store holds at least 0, 1 M, 10 M and 100 M points; a checkpoint is
reached a run or two past its figure) the driver measures on both services, alternately, so
that this shared machine's load falls on both alike:

- ingest: 3 probes of two fresh runs side by side, written the same way (median points/s);
- reads of the reference series: its last 10,000 steps, and the whole series downsampled to
  2,000 points (median of 15, after one untimed read);
- the service's RSS (VmRSS of each `stepstream serve` process).

The targets compare the grown store with the fresh one at the same moment. Then one run of the
grown service gets 1,000,000 distinct series (one point each, 20,000 series per batch), with
its RSS after 10,000, 100,000 and 1,000,000 of them. The curves are plotted into `growth.png`
beside the table (`growth-quick.png` in quick mode, whose sizes are 100x smaller).

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

# Targets from the issue: ingest at the last checkpoint >= 90% of the rate on a (nearly) empty
# store; reads no slower than on a small store; RSS flat. "Empty" and "small" are the fresh
# service measured alternately beside the grown one.
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
    reads: int = 15

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
    grown = start_stepstream(ctx.work_dir)
    try:
        fresh = start_stepstream(ctx.work_dir)
        try:
            result = run_json(
                python_module(
                    "bench.case_growth",
                    "--address",
                    grown.address,
                    "--pid",
                    grown.server.pid,
                    "--fresh-address",
                    fresh.address,
                    "--fresh-pid",
                    fresh.server.pid,
                    *(["--quick"] if ctx.quick else []),
                ),
                timeout=600 if ctx.quick else 4 * 3600,
            )
        finally:
            fresh.stop()
    finally:
        grown.stop()
    took = time.monotonic() - started
    out_dir = getattr(ctx, "out_dir", None) or ctx.work_dir
    png = Path(out_dir) / ("growth-quick.png" if ctx.quick else "growth.png")
    plot(result, png)

    last = result["checkpoints"][-1]
    n = f"{last['stored']:,}"
    beside = f"the fresh store beside it ({last['fresh_stored']:,} points)"

    def per_checkpoint(key: str, fmt: Any) -> str:
        return "; ".join(
            f"{c['stored']:,}: {fmt(c[key])} vs {fmt(c['fresh_' + key])} on the fresh store"
            f" ({c['fresh_stored']:,})"
            for c in result["checkpoints"]
        )

    rows: list[Row] = []
    ratio = last["rate"] / last["fresh_rate"]
    rows.append(
        Row(
            f"8. growth: ingest at {n} stored points (2 runs x {plan.series} series in "
            f"{plan.series * plan.rows:,}-point FloatBlocks)",
            table.rate,
            last["rate"],
            noop_text="n/a",
            mlflow_text="—",
            target=f"≥ {MIN_RATE_OF_EMPTY:.0%} of {beside}: {table.rate(last['fresh_rate'])}, "
            f"so {ratio:.0%}",
            met=ratio >= MIN_RATE_OF_EMPTY,
            notes=[
                f"probe medians at each checkpoint (grown and fresh alternately): "
                f"{per_checkpoint('rate', table.rate)}; filled in {result['fill_seconds']:.0f} s "
                f"({result['stored']:,} points stored in all); the whole case took {took:.0f} s; "
                f"plot: {png.name}"
            ],
        )
    )
    for key, what in (("tail", f"last {plan.tail:,} steps"), ("down", "whole, downsampled")):
        ratio = last[key] / last["fresh_" + key]
        rows.append(
            Row(
                f"8. growth: read a {plan.reference:,}-point series, {what}, at {n} stored points",
                table.millis,
                last[key],
                noop_text="n/a",
                mlflow_text="—",
                target=f"no slower than on {beside}: {table.millis(last['fresh_' + key])}, "
                f"so {ratio:.2f}x",
                met=ratio <= READ_SLACK,
                notes=[f"medians at each checkpoint: {per_checkpoint(key, table.millis)}"],
            )
        )
    rss, fresh_rss = last["rss_kb"], last["fresh_rss_kb"]
    rows.append(
        Row(
            f"8. growth: service RSS at {n} stored points",
            table.mebibytes,
            rss,
            noop_text="n/a",
            mlflow_text="—",
            target=f"flat: vs {table.mebibytes(fresh_rss)} on {beside}",
            met=rss <= RSS_SLACK * fresh_rss + RSS_SLACK_KB,
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
            target=f"flat (vs {table.mebibytes(wide[0]['rss_kb'])} before the wide run)",
            met=wide[-1]["rss_kb"] <= RSS_SLACK * wide[0]["rss_kb"] + RSS_SLACK_KB,
            notes=[
                "after each count of series: "
                + "; ".join(f"{w['series']:,}: {table.mebibytes(w['rss_kb'])}" for w in wide)
            ],
        )
    )
    return rows


def plot(result: dict[str, Any], png: Path) -> None:
    """Ingest rate, read times and RSS against stored points (the fresh store's, measured
    alternately, beside them), and RSS against distinct series in one run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cps = result["checkpoints"]
    xs = [c["stored"] for c in cps]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    axes[0].plot(xs, [c["rate"] / 1e6 for c in cps], "o-", label="grown store")
    axes[0].plot(xs, [c["fresh_rate"] / 1e6 for c in cps], "x--", c="gray", label="fresh store")
    axes[0].set_ylabel("ingest, M points/s")
    axes[1].plot(xs, [c["tail"] * 1e3 for c in cps], "o-", label="last 10,000 steps")
    axes[1].plot(xs, [c["fresh_tail"] * 1e3 for c in cps], "x--", c="C0", alpha=0.5,
                 label="(fresh store)")  # fmt: skip
    axes[1].plot(xs, [c["down"] * 1e3 for c in cps], "s-", c="C1", label="whole, downsampled")
    axes[1].plot(xs, [c["fresh_down"] * 1e3 for c in cps], "x--", c="C1", alpha=0.5,
                 label="(fresh store)")  # fmt: skip
    axes[1].set_ylabel("read one series, ms")
    axes[2].plot(xs, [c["rss_kb"] / 1024 for c in cps], "o-", label="grown store")
    axes[2].plot(xs, [c["fresh_rss_kb"] / 1024 for c in cps], "x--", c="gray", label="fresh store")
    axes[2].set_ylabel("service RSS, MiB")
    for ax in axes[:3]:
        ax.set_xscale("log")
        ax.set_xlabel("points stored in the grown store")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    wide = [w for w in result["wide"] if w["series"] > 0]
    axes[3].plot([w["series"] for w in wide], [w["rss_kb"] / 1024 for w in wide], "o-")
    axes[3].axhline(result["wide"][0]["rss_kb"] / 1024, ls="--", c="gray", label="before")
    axes[3].set_xscale("log")
    axes[3].set_xlabel("distinct series in one run")
    axes[3].set_ylabel("service RSS, MiB")
    axes[3].set_ylim(bottom=0)
    axes[3].grid(alpha=0.3)
    axes[3].legend(fontsize=7)
    fig.suptitle(
        f"stepstream (SQLite): cost as the store grows; fresh store measured alternately "
        f"({result['machine']})",
        fontsize=10,
    )
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


class Target:
    """One service the driver writes to: the grown store, or the fresh one beside it."""

    def __init__(self, channel: Any, pid: int, plan: Plan) -> None:
        from stepstream.v1 import runs_pb2_grpc

        self.runs = runs_pb2_grpc.RunServiceStub(channel)
        self.filler = Filler(channel, self.runs, plan)
        self.pid = pid
        self.probes = 0

    async def probe(self, plan: Plan, tag: str = "probe") -> float:
        """Two fresh runs side by side; points/s."""
        names = [f"layer{k:03d}/metric" for k in range(plan.series)]
        t = time.perf_counter()
        self.probes += 2
        written = await asyncio.gather(
            *(
                self.filler.write_run(
                    f"{tag}-{self.probes - k:04d}", names, plan.probe_steps, plan.rows
                )
                for k in range(2)
            )
        )
        return sum(written) / (time.perf_counter() - t)


async def measure(grown: Target, fresh: Target, plan: Plan) -> dict[str, Any]:
    """Probes and reads on both services, alternately, so that the load of this shared machine
    falls on both alike; medians of each."""
    entry: dict[str, Any] = {"stored": grown.filler.stored, "fresh_stored": fresh.filler.stored}
    rates: dict[str, list[float]] = {"rate": [], "fresh_rate": []}
    for _ in range(plan.probes):
        rates["rate"].append(await grown.probe(plan))
        rates["fresh_rate"].append(await fresh.probe(plan))
    for key, kw in (
        ("tail", {"step_min": float(plan.reference - plan.tail)}),
        ("down", {"max_points": plan.max_points}),
    ):
        times: dict[str, list[float]] = {key: [], f"fresh_{key}": []}
        for target in (grown, fresh):  # untimed first reads
            await timed_read(target.runs, "reference", "train/loss", **kw)
        for _ in range(plan.reads):
            for label, target in ((key, grown), (f"fresh_{key}", fresh)):
                seconds, n = await timed_read(target.runs, "reference", "train/loss", **kw)
                expected = plan.tail if key == "tail" else plan.max_points
                if not 0 < n <= expected or (key == "tail" and n != expected):
                    raise RuntimeError(f"a reference read ({key}) returned {n} points")
                times[label].append(seconds)
        entry.update({k: statistics.median(v) for k, v in times.items()})
    entry.update({k: statistics.median(v) for k, v in rates.items()})
    entry.update(rss_kb=rss_kb(grown.pid), fresh_rss_kb=rss_kb(fresh.pid))
    return entry


async def drive(address: str, pid: int, fresh_address: str, fresh_pid: int, plan: Plan) -> Any:
    import grpc.aio

    from bench.table import machine
    from bench.wire import CHANNEL_OPTIONS

    out: dict[str, Any] = {"plan": asdict(plan), "checkpoints": [], "wide": []}
    out["machine"] = machine().split(";")[0].removeprefix("machine: ")
    async with (
        grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel,
        grpc.aio.insecure_channel(fresh_address, options=CHANNEL_OPTIONS) as fresh_channel,
    ):
        grown, fresh = Target(channel, pid, plan), Target(fresh_channel, fresh_pid, plan)
        for target in (grown, fresh):  # the reference series, then one unmeasured warm-up
            await target.filler.write_run(
                "reference", ["train/loss"], plan.reference, plan.rows * plan.series
            )
            await target.probe(plan, "warmup")
        fill_seconds = 0.0
        for checkpoint in plan.checkpoints:
            t = time.perf_counter()
            while grown.filler.stored < checkpoint:
                await asyncio.gather(grown.filler.fill_run(), grown.filler.fill_run())
            fill_seconds += time.perf_counter() - t
            entry = await measure(grown, fresh, plan)
            entry["points"] = checkpoint
            out["checkpoints"].append(entry)
            print(f"growth: {json.dumps(entry)}", file=sys.stderr, flush=True)
        out["fill_seconds"] = fill_seconds
        out["stored"] = grown.filler.stored
        out["wide"] = await wide_run(channel, grown.runs, pid, plan)
    return out


async def wide_run(channel: Any, runs: Any, pid: int, plan: Plan) -> list[dict[str, int]]:
    """Distinct series in one run, one point each; the service's RSS after each count."""
    from stepstream.v1 import runs_pb2

    from bench.wire import open_stream

    found = [{"series": 0, "rss_kb": rss_kb(pid)}]
    await runs.CreateRun(runs_pb2.CreateRunRequest(run_id="wide"))
    call = await open_stream(channel, "wide", "growth")
    done = sequence = 0
    for target in plan.wide:
        while done < target:
            width = min(plan.wide_batch, target - done)
            names = [f"wide/s{done + k:07d}" for k in range(width)]
            sequence += 1
            values = np.arange(width, dtype=float)
            await call.write(encode_block(sequence, encode_names(names), np.zeros(1), values))
            answer: Any = await call.read()
            if answer.WhichOneof("result") != "appended" or (
                answer.appended.accepted_count != width
            ):
                raise RuntimeError(f"wide run: batch {sequence} failed: {answer}")
            done += width
        found.append({"series": done, "rss_kb": rss_kb(pid)})
    await call.done_writing()
    return found


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.case_growth")
    parser.add_argument("--address", required=True)
    parser.add_argument("--pid", type=int, required=True, help="the service's PID (for RSS)")
    parser.add_argument("--fresh-address", required=True, help="the fresh service beside it")
    parser.add_argument("--fresh-pid", type=int, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    plan = Plan.make(args.quick)
    result = asyncio.run(drive(args.address, args.pid, args.fresh_address, args.fresh_pid, plan))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
