"""Every ```python block of both READMEs (the top one and client/README.md) runs, as pasted,
against a running service."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
from procs import ServiceProcess
from stepstream_server.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
READMES = {"README.md": 5, "client/README.md": 4}  # at least this many examples each


def blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(), flags=re.S)


@pytest.mark.parametrize("name", READMES)
def test_readme_has_examples(name: str) -> None:
    assert len(blocks(name)) >= READMES[name]


@pytest.fixture
def address(tmp_path: Path, redis_server: EmbeddedRedis):  # type: ignore[no-untyped-def]
    svc = ServiceProcess(tmp_path / "data", redis_server.url, free_port()).start()
    try:
        yield svc.address
    finally:
        svc.terminate()


@pytest.mark.parametrize("name", READMES)
def test_readme_blocks_run_in_order(address: str, tmp_path: Path, name: str) -> None:
    env = {**os.environ, "STEPSTREAM_ADDRESS": address}
    for i, block in enumerate(blocks(name)):
        result = subprocess.run(
            [sys.executable, "-c", block],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{name} block {i} failed:\n{block}\n{result.stderr}"
        expected = re.findall(r"^# (\[.*\])$", block, flags=re.M)
        for line in expected:  # "# [...]" comments show output the block must print
            assert line in result.stdout, f"block {i}: {line!r} not in {result.stdout!r}"
