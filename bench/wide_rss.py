"""Service memory of a wide run: RSS after writing N one-point series (blocks of 100,000
names, as tests/test_wide_runs.py builds them), then after idling, and after a restart and
one write (issue 8: "service RSS per idle series is bounded and measured").

    python -m bench.wide_rss [--series 1000000] [--service-path DIR]   # prints JSON

`--service-path` puts another checkout's `service/` first on the service's PYTHONPATH, to
compare two versions on one machine in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import grpc
from stepstream.v1 import ingest_pb2, ingest_pb2_grpc, runs_pb2, runs_pb2_grpc

from bench.procs import (
    ServerProcess,
    bench_env,
    free_port,
    proc_status_kb,
    python_module,
    wait_until_serving,
)

BLOCK = 100_000


def rss_mb(pid: int) -> float:
    return round((proc_status_kb(pid, "VmRSS") or 0) / 1024, 1)


def start(data_dir: Path, service_path: str | None) -> tuple[ServerProcess, str]:
    address = f"127.0.0.1:{free_port()}"
    extra = {"PYTHONPATH": service_path} if service_path else None
    env = bench_env(extra)
    if service_path:  # bench_env put the repository first; the other service goes first
        env["PYTHONPATH"] = service_path + ":" + bench_env()["PYTHONPATH"]
    server = ServerProcess(
        "stepstream serve",
        python_module(
            "stepstream_server.cli",
            "serve",
            "--address",
            address,
            "--data-dir",
            data_dir,
            "--log-level",
            "WARNING",
        ),
        data_dir.with_suffix(".log"),
        env=env,
    )
    wait_until_serving(server, address)
    return server, address


async def write_wide(address: str, n: int) -> float:
    start_time = time.perf_counter()
    async with grpc.aio.insecure_channel(address) as ch:
        runs = runs_pb2_grpc.RunServiceStub(ch)
        await runs.CreateRun(runs_pb2.CreateRunRequest(run_id="wide", get_if_exists=True))
        call = ingest_pb2_grpc.IngestServiceStub(ch).AppendPoints()
        await call.write(
            ingest_pb2.AppendPointsRequest(
                open=ingest_pb2.OpenStream(run_id="wide", writer_id="builder")
            )
        )
        await call.read()
        for seq, first in enumerate(range(0, n, BLOCK), start=1):
            names = [f"layer/{i:07d}" for i in range(first, min(n, first + BLOCK))]
            batch = ingest_pb2.PointBatch(sequence=seq)
            batch.float_blocks.add(names=names, steps=[1.0], values=[1.0] * len(names))
            await call.write(ingest_pb2.AppendPointsRequest(batch=batch))
            resp = await call.read()
            assert resp.appended.accepted_count == len(names), resp
        await call.done_writing()
    return time.perf_counter() - start_time


async def one_write(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        call = ingest_pb2_grpc.IngestServiceStub(ch).AppendPoints()
        await call.write(
            ingest_pb2.AppendPointsRequest(
                open=ingest_pb2.OpenStream(run_id="wide", writer_id="after")
            )
        )
        await call.read()
        batch = ingest_pb2.PointBatch(sequence=1)
        batch.float_series.add(name="layer/0000000", steps=[2.0], values=[1.0])
        await call.write(ingest_pb2.AppendPointsRequest(batch=batch))
        await call.read()
        await call.done_writing()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=1_000_000)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--service-path", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wide-rss-") as tmp:
        data = Path(tmp) / "data"
        server, address = start(data, args.service_path)
        try:
            started = rss_mb(server.pid)
            seconds = asyncio.run(write_wide(address, args.series))
            written = rss_mb(server.pid)
            time.sleep(args.idle)
            idle = rss_mb(server.pid)
        finally:
            server.stop()
        server, address = start(data, args.service_path)
        try:
            asyncio.run(one_write(address))
            restarted = rss_mb(server.pid)
        finally:
            server.stop()
    print(
        json.dumps(
            {
                "series": args.series,
                "write_seconds": round(seconds, 1),
                "service_rss_mb": {
                    "started": started,
                    "after_writing": written,
                    f"after_{args.idle:g}s_idle": idle,
                    "after_restart_and_one_write": restarted,
                },
                "service_path": args.service_path or "this checkout",
            }
        )
    )


if __name__ == "__main__":
    main()
