"""Service and writer processes for the tests that need real process boundaries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class ServiceProcess:
    """`stepstream serve` in a child process; ended only by its own PID."""

    def __init__(
        self, data_dir: Path, redis_url: str | None, port: int, *, extra: Sequence[str] = ()
    ) -> None:
        self.data_dir = data_dir
        self.redis_url = redis_url
        self.port = port
        self.extra = list(extra)  # e.g. --store URL, --lease SECONDS, --redis-cluster
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        log = open(self.data_dir.parent / f"service-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stepstream_server.cli",
                "serve",
                "--address",
                self.address,
                "--data-dir",
                str(self.data_dir),
                "--grace",
                "1",
                *(["--redis-url", self.redis_url] if self.redis_url else []),
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_serving(self.address, timeout, self.proc)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def children(self) -> list[int]:
        assert self.proc is not None
        found = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
        return found

    def terminate(self) -> int:
        if self.proc is None:
            return 0
        os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        self.proc = None
        return code


def wait_serving(address: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"service exited with {proc.returncode}")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"service at {address} did not become SERVING")
            time.sleep(0.05)


def run_writers(addresses: Sequence[str], run_id: str, mode: str, n: int) -> list[int]:
    """One tests/writer_proc.py process per address (writer w-i on addresses[i]), all at
    once; returns how many points each had accepted."""
    here = Path(__file__).parent
    procs = [
        subprocess.Popen(
            [sys.executable, str(here / "writer_proc.py"), address, run_id, f"w-{i}", mode, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i, address in enumerate(addresses)
    ]
    counts = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        counts.append(int(out.decode().split()[-1]))
    return counts
