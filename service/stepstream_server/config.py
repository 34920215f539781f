"""Service settings: every field has a working default (zero configuration on one machine)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .auth.settings import SecuritySettings


@dataclass(frozen=True)
class Settings:
    """How to run the service. `Settings()` is `stepstream serve` with no flags."""

    address: str = "127.0.0.1:50051"
    data_dir: Path = Path(os.environ.get("STEPSTREAM_DATA_DIR", ".stepstream"))
    # None: start the embedded redis-server on a private socket under data_dir.
    redis_url: str | None = None
    # redis_url names one node of a Redis Cluster (redis-py's cluster client).
    redis_cluster: bool = False
    # sqlite:///path or postgresql://user@host:port/db; None: SQLite under data_dir.
    store: str | None = os.environ.get("STEPSTREAM_STORE") or None
    # How long a replica's judgment may stay uncommitted before others fence it (seconds).
    lease_seconds: float = 10.0
    # SQLite synchronous mode: FULL fsyncs every group commit (durable across power loss).
    sqlite_synchronous: str = "FULL"
    grace_seconds: float = 5.0
    max_queued_points: int = 2_000_000
    read_threads: int = 2
    # HOST:PORT for the read-only web view (HTTP); None: no web view, and runs carry no URLs.
    web_address: str | None = None
    # Metrics and mesh behaviour (docs/drain.md). HOST:PORT for Prometheus' /metrics; None: off.
    metrics_address: str | None = None
    keepalive_seconds: float = 30.0
    keepalive_timeout_seconds: float = 10.0
    # gRPC sends GOAWAY to a connection this old (0: never), then ends its calls after the grace.
    max_connection_age_seconds: float = 1800.0
    max_connection_age_grace_seconds: float = 30.0
    # TLS, tokens and --insecure (auth/settings.py).
    security: SecuritySettings = field(default_factory=SecuritySettings)

    @property
    def store_path(self) -> Path:
        return self.data_dir / "stepstream.sqlite3"

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite://{self.store_path.resolve()}"
