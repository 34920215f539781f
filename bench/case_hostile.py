"""Case 7: a light stream next to hostile and heavy ones (issue 8).

(a) stall: a light stream sends 100-point batches one at a time; meanwhile another stream sends
a request of 10,000,000 empty entries and a legal batch of 100,000 one-point series. The figure
is the light stream's worst round trip against its median alone (target: < ~50 ms added).
(b) fairness: the light stream's points/s alone and next to a writer of 100,000-point batches
(target: >= 50% of alone).

    python -m bench.case_hostile --address 127.0.0.1:PORT    # prints JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

import grpc
from stepstream.v1 import ingest_pb2, ingest_pb2_grpc, runs_pb2, runs_pb2_grpc

from bench.cases import Context, run_json
from bench.procs import python_module
from bench.table import Row
from bench.targets import start_stepstream

LIGHT = 100


class Stream:
    def __init__(self, ingest: ingest_pb2_grpc.IngestServiceStub) -> None:
        self.call = ingest.AppendPoints()
        self.seq = 0
        self.step = 0

    async def open(self, run_id: str) -> None:
        await self.call.write(
            ingest_pb2.AppendPointsRequest(
                open=ingest_pb2.OpenStream(run_id=run_id, writer_id=uuid.uuid4().hex)
            )
        )
        await self.call.read()

    def batch(self, points: int) -> ingest_pb2.AppendPointsRequest:
        self.seq += 1
        steps = list(range(self.step, self.step + points))
        self.step += points
        batch = ingest_pb2.PointBatch(sequence=self.seq)
        batch.float_series.add(name="m", steps=steps, values=[1.0] * points)
        return ingest_pb2.AppendPointsRequest(batch=batch)

    async def round_trip(self, request: ingest_pb2.AppendPointsRequest) -> float:
        start = time.perf_counter()
        await self.call.write(request)
        await self.call.read()
        return time.perf_counter() - start


async def stall(address: str) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as ch:
        runs = runs_pb2_grpc.RunServiceStub(ch)
        ingest = ingest_pb2_grpc.IngestServiceStub(ch)
        for run_id in ("light", "hostile"):
            await runs.CreateRun(runs_pb2.CreateRunRequest(run_id=run_id, get_if_exists=True))
        light, hostile = Stream(ingest), Stream(ingest)
        await light.open("light")
        alone = [await light.round_trip(light.batch(LIGHT)) for _ in range(200)]
        empty = ingest_pb2.PointBatch(sequence=1)
        empty.float_series.extend([ingest_pb2.FloatSeries()] * 10_000_000)
        wide = ingest_pb2.PointBatch(sequence=2)
        for i in range(100_000):
            wide.float_series.add(name=f"s{i}", steps=[1.0], values=[1.0])
        raw = [
            ingest_pb2.AppendPointsRequest(batch=empty).SerializeToString(),
            ingest_pb2.AppendPointsRequest(batch=wide).SerializeToString(),
        ]
        # The hostile bytes go out as they are: parsing them here would stall this process.
        hostile.call = ch.stream_stream(
            "/stepstream.v1.IngestService/AppendPoints",
            request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            response_deserializer=ingest_pb2.AppendPointsResponse.FromString,
        )()
        await hostile.open("hostile")
        done = asyncio.Event()

        async def attack() -> None:
            for data in raw:
                await hostile.call.write(data)
                await hostile.call.read()
            done.set()

        task = asyncio.create_task(attack())
        beside = []
        while not done.is_set():
            beside.append(await light.round_trip(light.batch(LIGHT)))
        await task
        return {
            "alone_median": statistics.median(alone),
            "alone_max": max(alone),
            "beside_max": max(beside),
            "beside_median": statistics.median(beside),
        }


async def fairness(address: str, seconds: float) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as ch:
        runs = runs_pb2_grpc.RunServiceStub(ch)
        ingest = ingest_pb2_grpc.IngestServiceStub(ch)
        for run_id in ("fair-light", "fair-heavy"):
            await runs.CreateRun(runs_pb2.CreateRunRequest(run_id=run_id, get_if_exists=True))

        async def pump(run_id: str, points: int, window: int, stop: asyncio.Event) -> int:
            s = Stream(ingest)
            await s.open(run_id)
            sent = acked = 0

            async def reader() -> None:
                nonlocal acked
                while acked < sent or not stop.is_set():
                    await s.call.read()
                    acked += 1

            r = asyncio.create_task(reader())
            while not stop.is_set():
                while sent - acked >= window:
                    await asyncio.sleep(0.001)
                await s.call.write(s.batch(points))
                sent += 1
            await r
            return acked * points

        async def rate(with_heavy: bool) -> float:
            stop = asyncio.Event()
            light = asyncio.create_task(pump("fair-light", 1000, 16, stop))
            heavy = (
                asyncio.create_task(pump("fair-heavy", 100_000, 8, stop)) if with_heavy else None
            )
            await asyncio.sleep(seconds)
            stop.set()
            points = await light
            if heavy is not None:
                await heavy
            return points / seconds

        alone = await rate(False)
        beside = await rate(True)
        return {"light_alone": alone, "light_beside_heavy": beside, "ratio": beside / alone}


def hostile(ctx: Context) -> list[Row]:
    stepstream = start_stepstream(ctx.work_dir)
    try:
        result = run_json(
            python_module("bench.case_hostile", "--address", stepstream.address), timeout=600
        )
    finally:
        stepstream.stop()
    s, f = result["stall"], result["fairness"]
    added = s["beside_max"] - s["alone_median"]
    return [
        Row(
            "7a. light stream's worst round trip beside hostile batches (added)",
            lambda v: f"{v * 1000:.0f} ms",
            added,
            noop_text="n/a",
            mlflow_text="—",
            target="< ~50 ms",
            met=added < 0.05,
            notes=[f"alone median {s['alone_median'] * 1000:.1f} ms; {json.dumps(s)}"],
        ),
        Row(
            "7b. light stream beside a 100,000-point-batch writer, share of its solo rate",
            lambda v: f"{v:.0%}",
            f["ratio"],
            noop_text="n/a",
            mlflow_text="—",
            target=">= 50%",
            met=f["ratio"] >= 0.5,
            notes=[json.dumps(f)],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    async def both() -> dict[str, object]:
        return {
            "stall": await stall(args.address),
            "fairness": await fairness(args.address, args.seconds),
        }

    print(json.dumps(asyncio.run(both())))


if __name__ == "__main__":
    main()
