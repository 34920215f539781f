"""Raw wire-protocol drivers (grpc.aio stubs, no client library): `python -m bench.wire CMD`.

- `latency`: one AppendPoints stream paced at a fixed offered load, one PointBatch per tick;
  per batch, the time from its scheduled send time to its acknowledgement. (`stepstream.Run`
  has no per-batch acknowledgement hook, so this measures the service's ack latency without
  the client's queue; scheduled rather than actual send times are used so that a driver that
  falls behind still counts its delay: no coordinated omission.)
- `reads`: writes one series of N points in large batches into a run, a fork of it and a fork
  of the fork (two hops), then times ReadSeries of the whole series and downsampled to
  `max_points`, for the base run and for the grandchild.

Each prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
import numpy as np
from stepstream.v1 import ingest_pb2, runs_pb2, runs_pb2_grpc

APPEND_POINTS = "/stepstream.v1.IngestService/AppendPoints"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
WARMUP_TICKS = 20


# -- hand encoding of AppendPointsRequest{batch: PointBatch{...}} (packed doubles) -----------


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


def encode_batch(sequence: int, names: Sequence[bytes], steps: np.ndarray, values: bytes) -> bytes:
    """One request: every series in `names` gets the same `steps` and `values`."""
    tail = field(0x12, steps.astype("<f8").tobytes()) + field(0x1A, values)
    series = b"".join(field(0x12, field(0x0A, name) + tail) for name in names)
    return field(0x12, b"\x08" + varint(sequence) + series)


async def open_stream(channel: grpc.aio.Channel, run_id: str, writer_id: str) -> Any:
    """An AppendPoints call (requests are pre-encoded bytes), opened on `run_id`."""
    call: Any = channel.stream_stream(
        APPEND_POINTS,
        request_serializer=None,
        response_deserializer=ingest_pb2.AppendPointsResponse.FromString,
    )()
    opening = ingest_pb2.AppendPointsRequest(
        open=ingest_pb2.OpenStream(run_id=run_id, writer_id=writer_id)
    )
    await call.write(opening.SerializeToString())
    answer: Any = await call.read()
    if answer is grpc.aio.EOF or not answer.HasField("opened"):
        raise RuntimeError(f"could not open a stream to {run_id}: {answer}")
    return call


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# -- latency --------------------------------------------------------------------------------


async def latency(address: str, run_id: str, series: int, rate: float, seconds: float) -> Any:
    steps_per_tick = max(1, round(rate * 0.01 / series))
    tick = steps_per_tick * series / rate
    ticks = WARMUP_TICKS + max(1, int(seconds / tick))
    names = [f"layer{k:04d}/grad_norm".encode() for k in range(series)]
    values = np.linspace(0.0, 1.0, steps_per_tick).astype("<f8").tobytes()
    scheduled: dict[int, float] = {}
    latencies: list[float] = []
    accepted = 0
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        runs = runs_pb2_grpc.RunServiceStub(channel)
        await runs.CreateRun(runs_pb2.CreateRunRequest(run_id=run_id))
        call = await open_stream(channel, run_id, "latency")

        async def read_answers() -> None:
            nonlocal accepted
            for _ in range(ticks):
                answer: Any = await call.read()
                if answer is grpc.aio.EOF:
                    raise RuntimeError("the stream ended early")
                now = time.monotonic()
                if answer.WhichOneof("result") != "appended":
                    raise RuntimeError(f"batch {answer.sequence} failed: {answer}")
                accepted += answer.appended.accepted_count
                if answer.sequence > WARMUP_TICKS:
                    latencies.append(now - scheduled.pop(answer.sequence))

        reader = asyncio.create_task(read_answers())
        start = time.monotonic()
        behind = 0
        for index in range(ticks):
            due = start + index * tick
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                behind += 1
            sequence = index + 1
            steps = np.arange(index * steps_per_tick, (index + 1) * steps_per_tick, dtype="<f8")
            request = encode_batch(sequence, names, steps, values)
            scheduled[sequence] = due
            await call.write(request)
        await asyncio.wait_for(reader, 120)
        elapsed = time.monotonic() - start
        await call.done_writing()
    return {
        "offered_rate": rate,
        "achieved_rate": accepted / elapsed,
        "tick": tick,
        "points_per_batch": steps_per_tick * series,
        "batches": len(latencies),
        "late_sends": behind,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "accepted": accepted,
    }


# -- reads ----------------------------------------------------------------------------------


async def write_series(
    channel: grpc.aio.Channel, run_id: str, name: str, first: int, last: int, batch: int
) -> int:
    """Steps first..last-1 of `name` into `run_id`, `batch` points per request."""
    call = await open_stream(channel, run_id, "reads")
    accepted = 0
    for sequence, lo in enumerate(range(first, last, batch), start=1):
        steps = np.arange(lo, min(lo + batch, last), dtype="<f8")
        values = np.sin(steps / 1000.0).astype("<f8").tobytes()
        await call.write(encode_batch(sequence, [name.encode()], steps, values))
        answer: Any = await call.read()
        if answer is grpc.aio.EOF or answer.WhichOneof("result") != "appended":
            raise RuntimeError(f"writing {run_id} failed: {answer}")
        accepted += answer.appended.accepted_count
    await call.done_writing()
    return accepted


async def read_once(
    runs: runs_pb2_grpc.RunServiceStub, run_id: str, name: str, max_points: int | None
) -> tuple[float, int]:
    request = runs_pb2.ReadSeriesRequest(
        selector=runs_pb2.SeriesSelector(run_id=run_id), names=[name], max_points=max_points
    )
    start = time.perf_counter()
    points = 0
    parts: Any = runs.ReadSeries(request)
    async for part in parts:
        points += len(part.steps)
    return time.perf_counter() - start, points


async def reads(address: str, points: int, batch: int, max_points: int, reps: int) -> Any:
    name = "train/loss"
    cut1, cut2 = int(points * 0.6), int(points * 0.8)
    results: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        runs = runs_pb2_grpc.RunServiceStub(channel)
        await runs.CreateRun(runs_pb2.CreateRunRequest(run_id="read-flat"))
        t = time.perf_counter()
        written = await write_series(channel, "read-flat", name, 0, points, batch)
        results["write_seconds"] = time.perf_counter() - t
        results["written"] = written
        # Two hops: base 0..cut1-1, child cut1..cut2-1, grandchild cut2..points-1.
        await runs.CreateRun(runs_pb2.CreateRunRequest(run_id="read-base"))
        await write_series(channel, "read-base", name, 0, cut1, batch)
        await runs.CreateRun(
            runs_pb2.CreateRunRequest(
                run_id="read-child", fork_run_id="read-base", fork_step=float(cut1 - 1)
            )
        )
        await write_series(channel, "read-child", name, cut1, cut2, batch)
        await runs.CreateRun(
            runs_pb2.CreateRunRequest(
                run_id="read-grandchild", fork_run_id="read-child", fork_step=float(cut2 - 1)
            )
        )
        await write_series(channel, "read-grandchild", name, cut2, points, batch)
        for key, run_id, limit in (
            ("flat_whole", "read-flat", None),
            ("flat_down", "read-flat", max_points),
            ("fork_whole", "read-grandchild", None),
            ("fork_down", "read-grandchild", max_points),
        ):
            await read_once(runs, run_id, name, limit)  # warm the caches once, untimed
            times, counts = [], []
            for _ in range(reps):
                seconds, count = await read_once(runs, run_id, name, limit)
                times.append(seconds)
                counts.append(count)
            results[key] = {"seconds": times, "median": statistics.median(times), "points": counts}
    return results


def client_read(address: str, run_id: str, name: str, reps: int) -> Any:
    """The same whole read through the public client (`stepstream.read_series`: Python lists)."""
    import stepstream

    times = []
    count = 0
    for _ in range(reps):
        start = time.perf_counter()
        series = stepstream.read_series(run_id, name, address=address)
        times.append(time.perf_counter() - start)
        count = len(series)
    return {"seconds": times, "median": statistics.median(times), "points": count}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wire")
    sub = parser.add_subparsers(dest="cmd", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--address", required=True)
    lat.add_argument("--run-id", required=True)
    lat.add_argument("--series", type=int, default=1000)
    lat.add_argument("--rate", type=float, required=True, help="offered points per second")
    lat.add_argument("--seconds", type=float, default=5.0)
    rd = sub.add_parser("reads")
    rd.add_argument("--address", required=True)
    rd.add_argument("--points", type=int, default=1_000_000)
    rd.add_argument("--batch", type=int, default=50_000)
    rd.add_argument("--max-points", type=int, default=2000)
    rd.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    if args.cmd == "latency":
        result = asyncio.run(
            latency(args.address, args.run_id, args.series, args.rate, args.seconds)
        )
    else:
        result = asyncio.run(
            reads(args.address, args.points, args.batch, args.max_points, args.reps)
        )
        result["client_whole"] = client_read(args.address, "read-flat", "train/loss", args.reps)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
