"""Service settings: every field has a working default (zero configuration on one machine)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """How to run the service. `Settings()` is `stepstream serve` with no flags."""

    address: str = "127.0.0.1:50051"
    data_dir: Path = Path(os.environ.get("STEPSTREAM_DATA_DIR", ".stepstream"))
    # None: start the embedded redis-server on a private socket under data_dir.
    redis_url: str | None = None
    # SQLite synchronous mode: FULL fsyncs every group commit (durable across power loss).
    sqlite_synchronous: str = "FULL"
    grace_seconds: float = 5.0
    max_queued_points: int = 2_000_000
    read_threads: int = 2
    # HOST:PORT for the read-only web view (HTTP); None: no web view, and runs carry no URLs.
    web_address: str | None = None

    @property
    def store_path(self) -> Path:
        return self.data_dir / "stepstream.sqlite3"
