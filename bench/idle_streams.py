"""How many idle AppendPoints streams one service holds (issue 8, part 6).

    .venv/bin/python -m bench.idle_streams --streams 10000 --channels 100

Starts `stepstream serve` on embedded defaults in a temporary data directory, opens
`--streams` streams spread round-robin over `--channels` client channels (all at once, or in
waves of `--wave`), each sending its `open` and reading the answer, then keeps them all open
and idle for `--hold` seconds and checks the service still answers a unary call. Prints one
table: streams opened, failures by status, the time to open them, the service's RSS and open
file descriptors, and the limit it runs with (it raises its soft RLIMIT_NOFILE to the hard one).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import resource
import tempfile
import time
from pathlib import Path

import grpc
from stepstream.v1 import ingest_pb2, ingest_pb2_grpc, runs_pb2, runs_pb2_grpc

from bench.procs import ServerProcess, free_port, proc_status_kb, python_module, wait_until_serving


async def open_stream(
    stub: ingest_pb2_grpc.IngestServiceStub, i: int, failures: collections.Counter[str]
) -> grpc.aio.StreamStreamCall | None:  # type: ignore[type-arg]
    call = stub.AppendPoints()
    try:
        await call.write(
            ingest_pb2.AppendPointsRequest(
                open=ingest_pb2.OpenStream(run_id="idle", writer_id=f"w{i}")
            )
        )
        answer = await call.read()
        if answer is grpc.aio.EOF or not answer.HasField("opened"):
            failures[f"unexpected answer {answer}"] += 1
            return None
        return call
    except grpc.aio.AioRpcError as exc:
        failures[f"{exc.code().name}: {exc.details()}"] += 1
        if os.environ.get("IDLE_DEBUG") and sum(failures.values()) < 3:
            print(exc.debug_error_string())
        call.cancel()
        return None


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return "/".join(line.split()[3:5])
    return "?"


async def measure(address: str, pid: int, streams: int, channels: int, wave: int, hold: float):
    channel_list = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    stubs = [ingest_pb2_grpc.IngestServiceStub(ch) for ch in channel_list]
    runs = runs_pb2_grpc.RunServiceStub(channel_list[0])
    await runs.CreateRun(runs_pb2.CreateRunRequest(run_id="idle", get_if_exists=True))
    failures: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    calls = []
    for first in range(0, streams, wave):
        batch = range(first, min(streams, first + wave))
        calls += await asyncio.gather(
            *(open_stream(stubs[i % channels], i, failures) for i in batch)
        )
    opened_in = time.monotonic() - started
    await asyncio.sleep(hold)
    alive = sum(1 for c in calls if c is not None and not c.done())
    try:
        await runs.ListRuns(runs_pb2.ListRunsRequest(), timeout=30)
        unary = "ok"
    except grpc.aio.AioRpcError as exc:
        unary = exc.code().name
    row = {
        "streams": streams,
        "channels": channels,
        "opened": sum(1 for c in calls if c is not None),
        "alive after hold": alive,
        "failed": sum(failures.values()),
        "open s": round(opened_in, 2),
        "unary": unary,
        "service RSS MB": round((proc_status_kb(pid, "VmRSS") or 0) / 1024),
        "service fds": fd_count(pid),
        "fd limit soft/hard": fd_limit(pid),
    }
    for c in calls:
        if c is not None:
            c.cancel()
    for ch in channel_list:
        await ch.close()
    return row, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--wave", type=int, default=1_000_000, help="streams opened at once")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds to keep them idle")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the client side needs them too
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        address = f"127.0.0.1:{port}"
        cmd = python_module(
            "stepstream_server.cli",
            "serve",
            "--address",
            address,
            "--data-dir",
            f"{tmp}/data",
            "--log-level",
            "WARNING",
        )
        with ServerProcess("stepstream", cmd, Path(tmp) / "service.log", None) as server:
            wait_until_serving(server, address)
            row, failures = asyncio.run(
                measure(address, server.pid, args.streams, args.channels, args.wave, args.hold)
            )
            log_tail = server.log_tail(5)
    print("| " + " | ".join(row) + " |")
    print("|" + " --- |" * len(row))
    print("| " + " | ".join(str(v) for v in row.values()) + " |")
    for what, n in failures.most_common(5):
        print(f"  {n} x {what}")
    if failures:
        print("service log tail:\n" + log_tail)


if __name__ == "__main__":
    main()
