"""Trackio, the second baseline: its own virtual environment and its self-hosted server.

`trackio show` serves Trackio's dashboard and its logging API over HTTP; training scripts
send to it with `trackio.init(server_url=...)` and a write token (Trackio's "self-host the
Trackio server" setup). The harness installs Trackio from PyPI into bench/.trackio-venv once,
starts `trackio show` on a free loopback port with a fresh TRACKIO_DIR (its SQLite files) and
a write token of its own, and stops it by its PID.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

from bench.procs import REPO_ROOT, ServerProcess, bench_env, free_port
from bench.venvs import Venv, wait_http

# The release measured; pinned so that figures of two runs compare the same Trackio.
TRACKIO_REQUIREMENT = "trackio==0.43.0"
# Trackio must never try the Hub, open a browser, or phone home.
TRACKIO_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "DO_NOT_TRACK": "true",
    "BROWSER": "true",  # webbrowser.open runs `true`: nothing opens
}


class TrackioUnavailable(RuntimeError):
    """Trackio could not be installed or started; the table says "n/a" and why."""


VENV = Venv(
    REPO_ROOT / "bench" / ".trackio-venv",
    "trackio",
    TRACKIO_REQUIREMENT,
    TRACKIO_ENV,
    TrackioUnavailable,
)


def python() -> Path:
    return VENV.python


def ensure_installed(log: Path) -> str:
    """The Trackio version in bench/.trackio-venv, creating it and `pip install` of
    TRACKIO_REQUIREMENT if needed. Raises TrackioUnavailable with the reason."""
    return VENV.ensure_installed(log)


class TrackioServer:
    """`trackio show` on a free loopback port, with a fresh TRACKIO_DIR and write token."""

    def __init__(self, work_dir: Path) -> None:
        self.data_dir = work_dir / "trackio"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.client_dir = work_dir / "trackio-client"  # what a client buffers locally
        self.client_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.token = secrets.token_urlsafe(24)
        self.server = ServerProcess(
            "trackio show",
            [str(VENV.bin("trackio")), "show", "--host", "127.0.0.1"],
            self.data_dir / "server.log",
            env=bench_env(
                {
                    **TRACKIO_ENV,
                    "TRACKIO_DIR": str(self.data_dir),
                    "TRACKIO_WRITE_TOKEN": self.token,
                    "GRADIO_SERVER_PORT": str(port),
                }
            ),
        )
        try:
            wait_http(self.server, self.url + "/", 120.0, TrackioUnavailable)
        except BaseException:
            self.server.stop()
            raise

    def driver_env(self) -> dict[str, str]:
        """The environment of a Trackio writer process (bench.trackio_driver)."""
        return bench_env(
            {
                **TRACKIO_ENV,
                "TRACKIO_DIR": str(self.client_dir),
                "TRACKIO_WRITE_TOKEN": self.token,
            }
        )

    def stored_points(self, project: str, run_name: str) -> int:
        """Metric values the server stored for a run: one JSON object of metrics per row of
        the project's SQLite database (read after the writer's finish() returned)."""
        path = self.data_dir / f"{project}.db"
        if not path.exists():
            return 0
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60) as db:
            (count,) = db.execute(
                "SELECT COALESCE(SUM((SELECT COUNT(*) FROM json_each(CAST(metrics AS TEXT)))), 0)"
                " FROM metrics WHERE run_name = ?",
                (run_name,),
            ).fetchone()
        return int(count)

    def stop(self) -> None:
        self.server.stop()
