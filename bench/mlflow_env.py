"""MLflow, the baseline: its own virtual environment and a tracking server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.procs import REPO_ROOT, ServerProcess, bench_env, free_port

VENV = REPO_ROOT / "bench" / ".venv-mlflow"
INSTALL_TIMEOUT = 1200.0
# MLflow must never wait long on retries, nor phone home.
MLFLOW_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


class MlflowUnavailable(RuntimeError):
    """MLflow could not be installed or started; the table says "n/a" and why."""


def python() -> Path:
    return VENV / "bin" / "python"


def installed_version() -> str | None:
    if not python().exists():
        return None
    probe = subprocess.run(
        [str(python()), "-c", "import mlflow; print(mlflow.__version__)"],
        capture_output=True,
        text=True,
        env=bench_env(MLFLOW_ENV),
        timeout=120,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_installed(log: Path) -> str:
    """The MLflow version in bench/.venv-mlflow, creating it and `pip install mlflow` if
    needed. Raises MlflowUnavailable with the reason."""
    version = installed_version()
    if version:
        return version
    print(f"bench: installing mlflow into {VENV} (once; log in {log})", file=sys.stderr)
    steps = []
    if not python().exists():
        steps.append([sys.executable, "-m", "venv", str(VENV)])
    steps.append([str(python()), "-m", "pip", "install", "--quiet", "mlflow"])
    with open(log, "ab") as out:
        for step in steps:
            try:
                done = subprocess.run(
                    step, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise MlflowUnavailable(f"`{' '.join(step)}` failed: {exc}") from None
            if done.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                raise MlflowUnavailable(
                    f"`{' '.join(step[:4])} ...` exited with {done.returncode}: {' '.join(tail)}"
                )
    version = installed_version()
    if not version:
        raise MlflowUnavailable("mlflow was installed but cannot be imported")
    return version


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
                str(VENV / "bin" / "mlflow"),
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
            self._wait(120.0)
        except BaseException:
            self.server.stop()
            raise

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.server.alive():
                raise MlflowUnavailable(f"mlflow server exited:\n{self.server.log_tail()}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise MlflowUnavailable(f"mlflow server did not answer in {timeout:g} s")
            time.sleep(0.2)

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
