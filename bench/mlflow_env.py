"""MLflow, the baseline: its own virtual environment and a tracking server on loopback."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from bench.procs import REPO_ROOT, ServerProcess, bench_env, free_port
from bench.venvs import Venv, wait_http

# MLflow must never wait long on retries, nor phone home.
MLFLOW_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


class MlflowUnavailable(RuntimeError):
    """MLflow could not be installed or started; the table says "n/a" and why."""


VENV = Venv(REPO_ROOT / "bench" / ".venv-mlflow", "mlflow", "mlflow", MLFLOW_ENV, MlflowUnavailable)


def python() -> Path:
    return VENV.python


def ensure_installed(log: Path) -> str:
    """The MLflow version in bench/.venv-mlflow, creating it and `pip install mlflow` if
    needed. Raises MlflowUnavailable with the reason."""
    return VENV.ensure_installed(log)


class MlflowServer:
    """`mlflow server` with a fresh SQLite backend store, on a free loopback port."""

    def __init__(self, work_dir: Path) -> None:
        store = work_dir / "mlflow"
        store.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.uri = f"http://127.0.0.1:{port}"
        self.server = ServerProcess(
            "mlflow server",
            [
                str(VENV.bin("mlflow")),
                "server",
                "--backend-store-uri",
                f"sqlite:///{store / 'mlflow.db'}",
                "--default-artifact-root",
                str(store / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            store / "server.log",
            env=bench_env(MLFLOW_ENV),
        )
        try:
            wait_http(self.server, self.uri + "/health", 120.0, MlflowUnavailable)
        except BaseException:
            self.server.stop()
            raise

    def create_run(self) -> str:
        """A run in the default experiment, through the REST API (for shared-run writers)."""
        request = urllib.request.Request(
            self.uri + "/api/2.0/mlflow/runs/create",
            data=json.dumps({"experiment_id": "0", "start_time": int(time.time() * 1000)}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return str(json.loads(response.read())["run"]["info"]["run_id"])

    def stop(self) -> None:
        self.server.stop()
