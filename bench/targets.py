"""Starting the servers under test: `stepstream serve` and the no-op sink, on loopback."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.procs import ServerProcess, free_port, python_module, wait_until_serving


class Target:
    """A server under test: its process, its address and a label for the table."""

    def __init__(self, label: str, server: ServerProcess, address: str) -> None:
        self.label = label
        self.server = server
        self.address = address

    def stop(self) -> None:
        self.server.stop()


def stepstream_command() -> list[str]:
    """`stepstream serve` from the project's virtual environment."""
    script = Path(sys.executable).parent / "stepstream"
    if script.exists():
        return [str(script)]
    return python_module("stepstream_server.cli")


def start_stepstream(work_dir: Path) -> Target:
    """`stepstream serve` with a fresh --data-dir (embedded Redis, SQLite store, defaults)."""
    data_dir = Path(tempfile.mkdtemp(prefix="stepstream-", dir=work_dir))
    address = f"127.0.0.1:{free_port()}"
    server = ServerProcess(
        "stepstream serve",
        [
            *stepstream_command(),
            "serve",
            "--address",
            address,
            "--data-dir",
            str(data_dir),
            "--log-level",
            "WARNING",
        ],
        data_dir.with_suffix(".log"),
        env=None,
    )
    try:
        wait_until_serving(server, address)
    except BaseException:
        server.stop()
        raise
    return Target("stepstream", server, address)


def start_noop_sink(work_dir: Path, delay_ms: float = 0.0) -> Target:
    address = f"127.0.0.1:{free_port()}"
    server = ServerProcess(
        "no-op sink",
        python_module("bench.noop_sink", "--address", address, "--delay-ms", delay_ms),
        Path(tempfile.mkstemp(prefix="noop-", suffix=".log", dir=work_dir)[1]),
        env=None,
    )
    try:
        wait_until_serving(server, address)
    except BaseException:
        server.stop()
        raise
    return Target("no-op", server, address)
