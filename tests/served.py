"""One `stepstream serve` process (with its own embedded Redis) shared by a test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import free_port
from procs import ServiceProcess


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    svc = ServiceProcess(tmp_path_factory.mktemp("served") / "data", None, free_port()).start()
    try:
        yield svc.address
    finally:
        svc.terminate()
