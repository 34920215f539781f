"""`make cluster`: a local 3-replica stepstream on this machine's PostgreSQL and a Redis Cluster
of three masters started from the embedded redis-server binary. Ctrl-C stops everything.

Usage: python scripts/cluster_demo.py [--store postgresql://postgres@127.0.0.1:5432/stepstream_demo]
                                      [--base-port 50061] [--dir .stepstream-cluster]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql
from redis_cluster import RedisCluster

REPLICAS = 3


def ensure_database(url: str) -> None:
    """Create the database named in `url` if it does not exist (connecting to `postgres`)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"cluster: created database {name}")


def wait_serving(address: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"cluster: the replica on {address} exited with {proc.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise SystemExit(f"cluster: the replica on {address} did not become SERVING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/stepstream_demo")
    parser.add_argument("--base-port", type=int, default=50061)
    parser.add_argument("--dir", type=Path, default=Path(".stepstream-cluster"))
    args = parser.parse_args()
    ensure_database(args.store)
    redis = RedisCluster(args.dir / "redis").start()
    print(f"cluster: Redis Cluster of 3 masters on ports {redis.ports}")
    replicas: list[subprocess.Popen[bytes]] = []
    addresses = [f"127.0.0.1:{args.base_port + i}" for i in range(REPLICAS)]
    try:
        for i, address in enumerate(addresses):
            web = ["--web-address", f"127.0.0.1:{args.base_port + 100}"] if i == 0 else []
            replicas.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "stepstream_server.cli",
                        "serve",
                        "--address",
                        address,
                        "--data-dir",
                        str(args.dir / f"replica{i}"),
                        "--store",
                        args.store,
                        "--redis-url",
                        redis.url,
                        "--redis-cluster",
                        *web,
                    ],
                    stdin=subprocess.DEVNULL,
                )
            )
        for address, proc in zip(addresses, replicas, strict=True):
            wait_serving(address, proc)
        target = "ipv4:" + ",".join(addresses)
        print(f"cluster: {REPLICAS} replicas serving; clients use address={target!r}")
        print(f"cluster: web view on http://127.0.0.1:{args.base_port + 100}; Ctrl-C stops all")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while all(p.poll() is None for p in replicas):
            time.sleep(0.5)
        print("cluster: a replica exited; stopping the others", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in replicas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in replicas:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.stop()
        print("cluster: stopped")


if __name__ == "__main__":
    main()
