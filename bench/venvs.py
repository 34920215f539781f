"""The baselines' own virtual environments (bench/.venv-mlflow, bench/.trackio-venv): created
and filled by pip once, probed for the installed version, and the wait for their HTTP servers.

One rule for every baseline: a failure to install or start raises the baseline's own
"unavailable" error with the reason (the table then says "n/a" and why), never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.procs import ServerProcess, bench_env

INSTALL_TIMEOUT = 1200.0


@dataclass(frozen=True)
class Venv:
    """A baseline's virtual environment: `requirement` installed by pip into `path`, whose
    `module` tells its version (`module.__version__`), probed and run with `env` set."""

    path: Path
    module: str
    requirement: str
    env: Mapping[str, str]
    unavailable: type[RuntimeError]

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name

    def installed_version(self) -> str | None:
        if not self.python.exists():
            return None
        probe = subprocess.run(
            [str(self.python), "-c", f"import {self.module}; print({self.module}.__version__)"],
            capture_output=True,
            text=True,
            env=bench_env(dict(self.env)),
            timeout=120,
        )
        return probe.stdout.strip() if probe.returncode == 0 else None

    def ensure_installed(self, log: Path) -> str:
        """The installed version, creating the venv and `pip install`ing the requirement first
        if needed (pip's output appended to `log`). Raises `unavailable` with the reason: the
        step that failed and the log's last line."""
        version = self.installed_version()
        if version:
            return version
        print(
            f"bench: installing {self.module} into {self.path} (once; log in {log})",
            file=sys.stderr,
        )
        steps = []
        if not self.python.exists():
            steps.append([sys.executable, "-m", "venv", str(self.path)])
        steps.append([str(self.python), "-m", "pip", "install", "--quiet", self.requirement])
        with open(log, "ab") as out:
            for step in steps:
                try:
                    done = subprocess.run(
                        step, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT
                    )
                except (OSError, subprocess.TimeoutExpired) as exc:
                    raise self.unavailable(f"`{' '.join(step)}` failed: {exc}") from None
                if done.returncode != 0:
                    tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                    raise self.unavailable(
                        f"`{' '.join(step[:4])} ...` exited with {done.returncode}: "
                        f"{' '.join(tail)}"
                    )
        version = self.installed_version()
        if not version:
            raise self.unavailable(f"{self.module} was installed but cannot be imported")
        return version


def wait_http(
    server: ServerProcess, url: str, timeout: float, unavailable: type[RuntimeError]
) -> None:
    """Wait until `url` answers 200; raise `unavailable` if the server exits or stays silent
    for `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise unavailable(f"{server.name} exited:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise unavailable(f"{server.name} did not answer in {timeout:g} s")
        time.sleep(0.2)
