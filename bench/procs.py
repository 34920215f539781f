"""Processes the harness starts: servers and driver pools, each ended only by its own PID."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

Message = dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parent.parent

# Every driver command is answered within this many seconds, or the case fails.
ANSWER_TIMEOUT = 300.0


class BenchError(RuntimeError):
    """A case could not be measured (a process failed or did not answer in time)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """PIDs of every living descendant of `pid` (from /proc), children first."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        task_dir = Path(f"/proc/{parent}/task")
        try:
            tasks = list(task_dir.iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                found.append(int(child))
                stack.append(int(child))
    return found


def proc_status_kb(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmHWM, VmRSS), or None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _end(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM `pid`, then SIGKILL if it is still there after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        os.kill(pid, signal.SIGTERM)
    if proc is not None:
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            proc.wait()
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class ServerProcess:
    """A server the harness started: stopped by its PID (SIGTERM, then SIGKILL), and any
    descendant it leaves behind (e.g. a worker) is ended by that descendant's own PID."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path, env: dict[str, str] | None):
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=bench_env() if env is None else env,
            )
        self.pid = self.proc.pid
        self.paused = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            os.kill(self.pid, signal.SIGCONT)
            self.paused = False

    def peak_rss_kb(self) -> int | None:
        return proc_status_kb(self.pid, "VmHWM")

    def children_peak_rss_kb(self) -> dict[int, int]:
        peaks = {}
        for pid in descendants(self.pid):
            peak = proc_status_kb(pid, "VmHWM")
            if peak is not None:
                peaks[pid] = peak
        return peaks

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.returncode is not None:
            return
        self.resume()
        left_behind = descendants(self.pid)
        _end(self.pid, self.proc, timeout)
        for pid in left_behind:
            if Path(f"/proc/{pid}").exists():
                _end(pid, None, 5.0)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_until_serving(server: ServerProcess, address: str, timeout: float = 60.0) -> None:
    """Poll RunService.ListRuns until it answers (both stepstream and the no-op sink do)."""
    import grpc
    from stepstream.v1 import runs_pb2, runs_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = runs_pb2_grpc.RunServiceStub(channel)
        while True:
            if not server.alive():
                raise BenchError(f"{server.name} exited early:\n{server.log_tail()}")
            try:
                stub.ListRuns(runs_pb2.ListRunsRequest(), timeout=1.0)
                return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{server.name} at {address} did not answer in {timeout:g} s")
            time.sleep(0.05)


class DriverPool:
    """N driver processes speaking `bench.protocol`, started together and ended by PID."""

    def __init__(
        self,
        name: str,
        argvs: Sequence[Sequence[str]],
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self._answers: list[queue.Queue[bytes]] = []
        for index, argv in enumerate(argvs):
            log_path = log_dir / f"{name}-{index}.log"
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=bench_env() if env is None else env,
                    cwd=cwd or REPO_ROOT,
                )
            answers: queue.Queue[bytes] = queue.Queue()
            assert proc.stdout is not None
            threading.Thread(target=_pump, args=(proc.stdout, answers), daemon=True).start()
            self.procs.append(proc)
            self.logs.append(log_path)
            self._answers.append(answers)

    def __len__(self) -> int:
        return len(self.procs)

    def send(self, message: Message, only: int | None = None) -> None:
        line = (json.dumps(message) + "\n").encode()
        for index, proc in enumerate(self.procs):
            if only is not None and index != only:
                continue
            assert proc.stdin is not None
            try:
                proc.stdin.write(line)
                proc.stdin.flush()
            except BrokenPipeError:
                raise BenchError(f"{self.name}[{index}] has exited:\n{self._tail(index)}") from None

    def collect(self, timeout: float = ANSWER_TIMEOUT, only: int | None = None) -> list[Message]:
        """One answer from each driver (or from driver `only`); raises BenchError on an error
        answer, an early exit or a timeout."""
        deadline = time.monotonic() + timeout
        results = []
        for index, answers in enumerate(self._answers):
            if only is not None and index != only:
                continue
            while True:
                try:
                    line = answers.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
                    break
                except queue.Empty:
                    if self.procs[index].poll() is not None and answers.empty():
                        raise BenchError(
                            f"{self.name}[{index}] exited with {self.procs[index].returncode}:\n"
                            f"{self._tail(index)}"
                        ) from None
                    if time.monotonic() >= deadline:
                        raise BenchError(
                            f"{self.name}[{index}] did not answer within {timeout:g} s:\n"
                            f"{self._tail(index)}"
                        ) from None
            if not line:
                raise BenchError(f"{self.name}[{index}] closed its output:\n{self._tail(index)}")
            message: Message = json.loads(line)
            if "error" in message:
                raise BenchError(f"{self.name}[{index}]: {message['error']}\n{self._tail(index)}")
            results.append(message)
        return results

    def command(self, message: Message, timeout: float = ANSWER_TIMEOUT) -> list[Message]:
        self.send(message)
        return self.collect(timeout)

    def _tail(self, index: int, lines: int = 15) -> str:
        try:
            text = self.logs[index].read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self, timeout: float = 30.0) -> None:
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.write(b'{"cmd": "exit"}\n')
                    proc.stdin.close()
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _end(proc.pid, proc, 5.0)

    def __enter__(self) -> DriverPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _pump(stream: IO[bytes], answers: queue.Queue[bytes]) -> None:
    for line in stream:
        answers.put(line)
    answers.put(b"")


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every child: ours, with the repository root importable (`bench`)."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env.update(extra or {})
    return env


def python_module(module: str, *args: object, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", module, *(str(a) for a in args)]
