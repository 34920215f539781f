"""`Run(address=...)` with any gRPC target and with several replicas.

- How an address becomes gRPC targets and channel options (`resolve_target`): every accepted
  form, every error message, $STEPSTREAM_ADDRESS, and that every channel the client builds
  comes from there.
- A dead replica in the list is skipped (the real service, in-process).
- Failover of the ingest stream when the replica it is on dies or stalls: through stand-in
  replicas (TCP proxies to the one real service, killed or stalled by the test), and with two
  real `stepstream serve` processes sharing one PostgreSQL store (kill -9 and SIGSTOP of the
  process the stream is on).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import stepstream
import stepstream._sender
import test_seeds
from conftest import free_port
from procs import ServiceProcess
from stepstream._targets import CHANNEL_OPTIONS, ROUND_ROBIN, resolve_address, resolve_target
from stepstream_server.embedded_redis import EmbeddedRedis

address = test_seeds.address  # the real service, on its own event loop thread

EXAMPLES = "e.g. 'metrics:50051', '10.0.0.1:50051' or '[::1]:50051'"


def _raises(message: str) -> contextlib.AbstractContextManager[Any]:
    """The message exactly; InvalidArgumentError is also a ValueError."""
    return pytest.raises(stepstream.InvalidArgumentError, match=f"^{re.escape(message)}$")


# ---- what an address becomes ---------------------------------------------------------------

ACCEPTED: list[tuple[object, str, tuple[str, ...], bool]] = [
    # (address, as messages show it, gRPC target of each channel, round-robin)
    ("127.0.0.1:50051", "127.0.0.1:50051", ("127.0.0.1:50051",), False),
    ("metrics:7000", "metrics:7000", ("metrics:7000",), False),
    (
        "  metrics.example.com.:7000 ",
        "metrics.example.com.:7000",
        ("metrics.example.com.:7000",),
        False,
    ),
    ("[::1]:50051", "[::1]:50051", ("[::1]:50051",), False),
    ("dns:///metrics:50051", "dns:///metrics:50051", ("dns:///metrics:50051",), True),
    (
        "dns://10.0.0.53/metrics:50051",
        "dns://10.0.0.53/metrics:50051",
        ("dns://10.0.0.53/metrics:50051",),
        True,
    ),
    ("dns:metrics:50051", "dns:metrics:50051", ("dns:metrics:50051",), True),
    (
        "ipv4:10.0.0.1:50051,10.0.0.2:50051",
        "ipv4:10.0.0.1:50051,10.0.0.2:50051",
        ("ipv4:10.0.0.1:50051,10.0.0.2:50051",),
        True,
    ),
    (
        "ipv6:[fd00::1]:50051,[fd00::2]:50051",
        "ipv6:[fd00::1]:50051,[fd00::2]:50051",
        ("ipv6:[fd00::1]:50051,[fd00::2]:50051",),
        True,
    ),
    (
        "unix:/run/stepstream.sock",
        "unix:/run/stepstream.sock",
        ("unix:/run/stepstream.sock",),
        False,
    ),
    (
        "unix:///run/stepstream.sock",
        "unix:///run/stepstream.sock",
        ("unix:///run/stepstream.sock",),
        False,
    ),
    ("unix-abstract:stepstream", "unix-abstract:stepstream", ("unix-abstract:stepstream",), False),
    # Several replicas given by IP: one round-robin ipv4:/ipv6: target.
    (
        ["10.0.0.1:50051", "10.0.0.2:50051"],
        "10.0.0.1:50051,10.0.0.2:50051",
        ("ipv4:10.0.0.1:50051,10.0.0.2:50051",),
        True,
    ),
    (
        ("10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50052"),
        "10.0.0.1:50051,10.0.0.2:50051,10.0.0.3:50052",
        ("ipv4:10.0.0.1:50051,10.0.0.2:50051,10.0.0.3:50052",),
        True,
    ),
    (
        "10.0.0.1:50051, 10.0.0.2:50051",
        "10.0.0.1:50051,10.0.0.2:50051",
        ("ipv4:10.0.0.1:50051,10.0.0.2:50051",),
        True,
    ),
    (
        ["[fd00::1]:50051", "[fd00::2]:50051"],
        "[fd00::1]:50051,[fd00::2]:50051",
        ("ipv6:[fd00::1]:50051,[fd00::2]:50051",),
        True,
    ),
    (  # mixed: IPv4 as IPv4-mapped IPv6, gRPC connects to those over IPv4
        ["10.0.0.1:50051", "[fd00::2]:50051"],
        "10.0.0.1:50051,[fd00::2]:50051",
        ("ipv6:[::ffff:10.0.0.1]:50051,[fd00::2]:50051",),
        True,
    ),
    # Several replicas, one given by name: a channel per entry, rotated through on failure.
    (
        ["metrics-0:50051", "metrics-1:50051"],
        "metrics-0:50051,metrics-1:50051",
        ("metrics-0:50051", "metrics-1:50051"),
        False,
    ),
    (
        "metrics-0:50051,10.0.0.2:50051",
        "metrics-0:50051,10.0.0.2:50051",
        ("metrics-0:50051", "10.0.0.2:50051"),
        False,
    ),
    # A list of one is that one address.
    (["metrics:50051"], "metrics:50051", ("metrics:50051",), False),
    (("10.0.0.1:50051",), "10.0.0.1:50051", ("10.0.0.1:50051",), False),
]


@pytest.mark.parametrize(("given", "shown", "targets", "round_robin"), ACCEPTED)
def test_accepted_addresses(
    given: Any, shown: str, targets: tuple[str, ...], round_robin: bool
) -> None:
    target = resolve_target(given)
    assert (target.address, target.grpc_targets) == (shown, targets)
    assert target.rotating is (len(targets) > 1)
    expected = [*CHANNEL_OPTIONS, ROUND_ROBIN] if round_robin else CHANNEL_OPTIONS
    assert list(target.options) == expected
    assert str(target) == shown
    assert resolve_address(given) == shown
    assert resolve_target(target) is target


def test_the_round_robin_service_config() -> None:
    name, config = ROUND_ROBIN
    assert name == "grpc.service_config"
    parsed = json.loads(str(config))
    assert parsed["loadBalancingConfig"] == [{"round_robin": {}}]
    (methods,) = parsed["methodConfig"]
    assert {n["method"] for n in methods["name"]} == {
        "GetRun",
        "ListRuns",
        "ListSeries",
        "ReadSeries",
    }  # reads only: retrying them twice changes nothing
    assert methods["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


REJECTED: list[tuple[object, str]] = [
    ("", "address must not be empty"),
    ("   ", "address must not be empty"),
    ([], "address list must not be empty"),
    ((), "address list must not be empty"),
    (5, "address must be a str or a list of 'host:port' strings, got int"),
    ({"a:1"}, "address must be a str or a list of 'host:port' strings, got set"),
    (b"a:1", "address must be a str or a list of 'host:port' strings, got bytes"),
    ("metrics", f"address 'metrics' is not host:port: no port ({EXAMPLES})"),
    (":50051", f"address ':50051' is not host:port: no host ({EXAMPLES})"),
    (
        "metrics:",
        "address 'metrics:' is not host:port: the port must be a number from 1 to 65535, got ''",
    ),
    (
        "metrics:0",
        "address 'metrics:0' is not host:port: the port must be a number from 1 to 65535, got '0'",
    ),
    (
        "metrics:65536",
        "address 'metrics:65536' is not host:port: the port must be a number from 1 to 65535, got '65536'",
    ),
    (
        "metrics:http",
        "address 'metrics:http' is not host:port: the port must be a number from 1 to 65535, got 'http'",
    ),
    (
        "::1:50051",
        "address '::1:50051' is not host:port: an IPv6 address needs brackets, e.g. '[::1]:50051'",
    ),
    ("[::g]:50051", "address '[::g]:50051' is not host:port: '::g' is not an IPv6 address"),
    (
        "my metrics:50051",
        "address 'my metrics:50051' is not host:port: 'my metrics' is not a host name",
    ),
    (
        "http://metrics:50051",
        "address 'http://metrics:50051' is not host:port: http: is not a gRPC target scheme "
        "(dns:, ipv4:, ipv6:, unix-abstract:, unix:, vsock:, xds:)",
    ),
    ("a:b:50051", "address 'a:b:50051' is not host:port: 'a:b' is not a host name"),
    # Lists, and strings separated by commas: the message names the entry.
    (
        ["10.0.0.1:50051", "metrics"],
        f"address entry 'metrics' is not host:port: no port ({EXAMPLES})",
    ),
    (["10.0.0.1:50051", ""], "address entry '' is not host:port: it is empty"),
    (
        ["10.0.0.1:50051", None],
        "address entry None is not host:port: a str is needed, got NoneType",
    ),
    (["10.0.0.1:50051", 50052], "address entry 50052 is not host:port: a str is needed, got int"),
    ("10.0.0.1:50051,,10.0.0.2:50051", "address entry '' is not host:port: it is empty"),
    ("10.0.0.1:50051,", "address entry '' is not host:port: it is empty"),
    ("10.0.0.1:50051,10.0.0.2", f"address entry '10.0.0.2' is not host:port: no port ({EXAMPLES})"),
    (
        ["10.0.0.1:50051", " 10.0.0.2:50051"],
        "address entry ' 10.0.0.2:50051' is not host:port: ' 10.0.0.2' is not a host name",
    ),
    (
        ["dns:///metrics:50051", "10.0.0.2:50051"],
        "address entry 'dns:///metrics:50051' is not host:port: a gRPC target names every "
        "replica itself; give it alone as the address",
    ),
    # gRPC targets.
    ("ipv4:", "address 'ipv4:' names no address after ipv4:"),
    ("dns:///", "address 'dns:///' names no address after dns:"),
    ("unix:", "address 'unix:' names no address after unix:"),
    (
        "dns:///a:50051,b:50051",
        "address 'dns:///a:50051,b:50051': a dns: target names one host; give several "
        "replicas as a list of host:port",
    ),
    (
        "ipv4:10.0.0.1:50051,metrics:50051",
        "address 'ipv4:10.0.0.1:50051,metrics:50051': entry 'metrics:50051' is not host:port: "
        "'metrics' is not an IP address",
    ),
    (
        "ipv4:10.0.0.1",
        f"address 'ipv4:10.0.0.1': entry '10.0.0.1' is not host:port: no port ({EXAMPLES})",
    ),
    (
        "ipv4:10.0.0.1:50051,[::1]:50051",
        "address 'ipv4:10.0.0.1:50051,[::1]:50051': entry '[::1]:50051' is not an IPv4 address",
    ),
    (
        "ipv6:10.0.0.1:50051",
        "address 'ipv6:10.0.0.1:50051': entry '10.0.0.1:50051' is not an IPv6 address",
    ),
]


@pytest.mark.parametrize(("given", "message"), REJECTED)
def test_rejected_addresses(given: Any, message: str) -> None:
    with _raises(message):
        resolve_target(given)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        resolve_target(given)


def test_a_bad_address_fails_before_anything_is_sent() -> None:
    with _raises(f"address entry 'metrics' is not host:port: no port ({EXAMPLES})"):
        stepstream.Run("r", address=["127.0.0.1:1", "metrics"])
    with _raises("address list must not be empty"):
        stepstream.get_run("r", address=[])
    with _raises("address must not be empty"):
        stepstream.read_series("r", "loss", address="")


def test_the_address_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEPSTREAM_ADDRESS", raising=False)
    assert resolve_target(None).grpc_targets == ("127.0.0.1:50051",)
    monkeypatch.setenv("STEPSTREAM_ADDRESS", "  ")
    assert resolve_target(None).grpc_targets == ("127.0.0.1:50051",)
    monkeypatch.setenv("STEPSTREAM_ADDRESS", "metrics:7000")
    assert resolve_target(None).grpc_targets == ("metrics:7000",)
    assert resolve_target("other:1").grpc_targets == ("other:1",)  # the argument wins
    monkeypatch.setenv("STEPSTREAM_ADDRESS", "10.0.0.1:50051, 10.0.0.2:50051")
    target = resolve_target(None)
    assert target.grpc_targets == ("ipv4:10.0.0.1:50051,10.0.0.2:50051",)
    assert ROUND_ROBIN in target.options
    monkeypatch.setenv("STEPSTREAM_ADDRESS", "metrics-0:50051,metrics-1:50051")
    assert resolve_target(None).grpc_targets == ("metrics-0:50051", "metrics-1:50051")
    monkeypatch.setenv("STEPSTREAM_ADDRESS", "ipv4:10.0.0.1:50051,10.0.0.2:50051")
    assert resolve_target(None).grpc_targets == ("ipv4:10.0.0.1:50051,10.0.0.2:50051",)
    for value, message in [
        ("metrics", f"$STEPSTREAM_ADDRESS 'metrics' is not host:port: no port ({EXAMPLES})"),
        ("a:1,b", f"$STEPSTREAM_ADDRESS entry 'b' is not host:port: no port ({EXAMPLES})"),
        ("ipv4:", "$STEPSTREAM_ADDRESS 'ipv4:' names no address after ipv4:"),
    ]:
        monkeypatch.setenv("STEPSTREAM_ADDRESS", value)
        with _raises(message):
            resolve_target(None)
        with _raises(message):
            stepstream.Run("r")


# ---- a dead replica in the list -------------------------------------------------------------

NAMES = [f"layer{i}/norm" for i in range(20)]


def _value(step: int, i: int) -> float:
    return step * 0.25 + i


def assert_stored_exactly_once(run_id: str, steps: int, address: Any) -> None:
    for i, name in enumerate(NAMES):
        series = stepstream.read_series(run_id, name, address=address)
        assert series.steps == [float(s) for s in range(steps)], name
        assert series.values == [_value(s, i) for s in range(steps)], name


def _record_channels(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, tuple[Any, ...]]]:
    """Every channel made from here on: (sync or aio, target, options)."""
    made: list[tuple[str, str, tuple[Any, ...]]] = []
    sync, aio = grpc.insecure_channel, grpc.aio.insecure_channel

    def sync_channel(target: str, options: Any = None, compression: Any = None) -> Any:
        made.append(("sync", target, tuple(options or ())))
        return sync(target, options, compression)

    def aio_channel(target: str, options: Any = None, *args: Any, **kwargs: Any) -> Any:
        made.append(("aio", target, tuple(options or ())))
        return aio(target, options, *args, **kwargs)

    monkeypatch.setattr(grpc, "insecure_channel", sync_channel)
    monkeypatch.setattr(grpc.aio, "insecure_channel", aio_channel)
    return made


@pytest.mark.parametrize("form", ["list", "comma-separated", "environment", "host names"])
def test_a_dead_replica_in_the_list_is_skipped(
    address: str, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead, live = free_port(), int(address.rpartition(":")[2])
    given: Any = [f"127.0.0.1:{dead}", address]
    if form == "comma-separated":
        given = f"127.0.0.1:{dead},{address}"
    elif form == "environment":
        monkeypatch.setenv("STEPSTREAM_ADDRESS", f"127.0.0.1:{dead},{address}")
        given = None
    elif form == "host names":  # rotated through by the client: localhost is not an IP
        given = [f"localhost:{dead}", f"localhost:{live}"]
    target = resolve_target(given)
    made = _record_channels(monkeypatch)

    steps = 500
    run = stepstream.Run("two-replicas", address=given, max_batch_points=2000)
    for step in range(steps):
        run.log_metrics({name: _value(step, i) for i, name in enumerate(NAMES)}, step=step)
    run.close(timeout=60)
    assert run.stats.acknowledged_points == steps * len(NAMES)
    assert run.errors == []
    assert run.read_series(NAMES[0]).steps == [float(s) for s in range(steps)]
    assert stepstream.get_run("two-replicas", address=given).state == "FINISHED"
    assert_stored_exactly_once("two-replicas", steps, given)

    # Every channel the client made (the Run's, the sender's, the reads') is one of the
    # target's, with its options: round-robin unless the client rotates itself.
    assert {kind for kind, _, _ in made} == {"sync", "aio"}
    assert {grpc_target for _, grpc_target, _ in made} <= set(target.grpc_targets)
    assert all(options == target.options for _, _, options in made)
    assert (ROUND_ROBIN in target.options) is (form != "host names")


@pytest.mark.parametrize("form", ["IPs", "host names"])
def test_a_stalled_replica_in_the_list_is_skipped(address: str, form: str) -> None:
    # A port that takes connections (the kernel's backlog) and never answers: a replica
    # stopped with SIGSTOP, as a client that connects anew sees it.
    with socket.create_server(("127.0.0.1", 0)) as stalled:
        ports = [stalled.getsockname()[1], int(address.rpartition(":")[2])]
        host = "127.0.0.1" if form == "IPs" else "localhost"
        given = [f"{host}:{port}" for port in ports]
        run = stepstream.Run("stalled-entry", address=given, connect_timeout=4.0)
        run.log_metrics({name: _value(0, i) for i, name in enumerate(NAMES)}, step=0)
        run.close(timeout=60)
        assert run.stats.acknowledged_points == len(NAMES)
        assert run.errors == []
        assert_stored_exactly_once("stalled-entry", 1, given)


def test_no_live_replica_is_an_rpc_error_naming_the_address() -> None:
    given = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    with pytest.raises(stepstream.RPCError) as caught:
        stepstream.Run("r", address=given, connect_timeout=0.5, on_unavailable="raise")
    assert caught.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    shown = ",".join(given)
    assert f"no answer from the stepstream service at {shown} within 0.5 s" in str(caught.value)
    names = [f"localhost:{free_port()}", f"localhost:{free_port()}"]
    with pytest.raises(stepstream.RPCError) as caught:
        stepstream.get_run("r", address=names)
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert f"every entry of {','.join(names)} failed" in caught.value.message


# ---- failover through stand-in replicas ---------------------------------------------------


class Replica:
    """A stand-in replica: a TCP proxy to the one real service. As the client sees it,
    `kill()` is kill -9 (every connection closed, the port refuses) and `stall()` is SIGSTOP
    (no byte moves either way, connections stay up, new ones are taken by the kernel and never
    served); `resume()` lets the bytes flow again."""

    def __init__(self, upstream: str, port: int = 0) -> None:
        host, _, upstream_port = upstream.rpartition(":")
        self._upstream = (host, int(upstream_port))
        self._listener = socket.create_server(("127.0.0.1", port))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._dead = False
        self.received = 0  # bytes from the client, forwarded to the service
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._flowing.wait()
            try:
                server = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._dead:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            for args in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                self._flowing.wait()
                if self._dead:
                    return
                sink.sendall(data)
                if from_client:
                    with self._lock:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def kill(self) -> None:
        with self._lock:
            self._dead = True
            sockets, self._sockets = self._sockets, []
        self._flowing.set()
        for sock in (self._listener, *sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def replicas() -> Iterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(upstream: str, port: int = 0) -> Replica:
        made.append(Replica(upstream, port))
        return made[-1]

    try:
        yield make
    finally:
        for replica in made:
            replica.kill()


class Trainer:
    """Logs STEPS steps of NAMES in a thread: the first half, then (once `go` is set) the rest,
    so that the test acts while the stream carries the second half."""

    STEPS = 3000

    def __init__(self, run: stepstream.Run) -> None:
        self.run = run
        self.half = threading.Event()
        self.go = threading.Event()
        self.thread = threading.Thread(target=self._train)
        self.thread.start()

    def _train(self) -> None:
        for step in range(self.STEPS):
            if step == self.STEPS // 2:
                self.half.set()
                self.go.wait(60)
            self.run.log_metrics({name: _value(step, i) for i, name in enumerate(NAMES)}, step=step)
            if step % 100 == 0:
                time.sleep(0.01)  # a training loop has other work; keep the stream spread out

    def second_half_in_flight(self) -> None:
        """Let the second half go; return once some of it is sent and not yet answered (or
        after a while: the test then acts anyway)."""
        self.go.set()
        give_up = time.monotonic() + 10
        while self.run.stats.inflight_batches == 0 and time.monotonic() < give_up:
            time.sleep(0.001)

    def join(self) -> None:
        self.thread.join(120)
        assert not self.thread.is_alive()


def stream_open(run: stepstream.Run) -> bool:
    """Whether the run's stream is open (waiting up to 30 s). A failover test checks it before
    it starts the second replica: only then is the stream surely on the first."""
    give_up = time.monotonic() + 30
    while not run.stats.connected:
        if time.monotonic() > give_up:
            return False
        time.sleep(0.01)
    return True


def test_the_stream_fails_over_when_its_replica_dies(
    address: str, replicas: Callable[..., Replica]
) -> None:
    first, second_port = replicas(address), free_port()
    # The second replica is down when the run starts, so the stream starts on the first.
    run = stepstream.Run(
        "killed", address=[first.address, f"127.0.0.1:{second_port}"], max_batch_points=2000
    )
    trainer = Trainer(run)
    assert trainer.half.wait(60)
    assert stream_open(run)
    second = replicas(address, second_port)
    trainer.second_half_in_flight()
    first.kill()
    trainer.join()
    run.wait(timeout=60, verbose=False)
    stats = run.stats
    assert stats.connections >= 2  # it did reconnect, necessarily through the second
    assert stats.acknowledged_points == Trainer.STEPS * len(NAMES)
    assert stats.rejected_points == 0 and not run.errors
    run.close(timeout=60)
    assert second.received > 0
    assert_stored_exactly_once("killed", Trainer.STEPS, address)
    assert stepstream.get_run("killed", address=address).state == "FINISHED"


def test_the_stream_fails_over_when_its_replica_stalls(
    address: str, replicas: Callable[..., Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stalled replica keeps its connection up: the watchdog cancels the stream once sent
    # batches got no answer for ack_timeout (1 s here instead of 30 s).
    monkeypatch.setattr(stepstream._sender, "ACK_TIMEOUT", 1.0)
    first, second_port = replicas(address), free_port()
    run = stepstream.Run(
        "stalled",
        address=[first.address, f"127.0.0.1:{second_port}"],
        max_batch_points=2000,
        connect_timeout=2.0,  # a new stream that lands on the stalled replica again
    )
    trainer = Trainer(run)
    assert trainer.half.wait(60)
    assert stream_open(run)
    second = replicas(address, second_port)
    trainer.second_half_in_flight()
    first.stall()
    trainer.join()
    run.wait(timeout=60, verbose=False)
    stats = run.stats
    assert stats.connections >= 2
    assert stats.acknowledged_points == Trainer.STEPS * len(NAMES)
    assert stats.rejected_points == 0 and not run.errors
    assert second.received > 0
    # What the stalled replica held back now reaches the service: applied once all the same.
    first.resume()
    run.close(timeout=60)
    first.kill()
    assert_stored_exactly_once("stalled", Trainer.STEPS, address)
    assert stepstream.get_run("stalled", address=address).state == "FINISHED"


# ---- two service processes sharing a PostgreSQL store -------------------------------------
# These need the PostgreSQL store: tests/pg.py (create_database, drop_database) and a
# PostgreSQL server; `stepstream serve` takes the store from $STEPSTREAM_STORE.


@pytest.fixture
def shared_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """One PostgreSQL database for every service process this test starts."""
    from pg import create_database, drop_database

    url = create_database()
    monkeypatch.setenv("STEPSTREAM_STORE", url)  # inherited by `stepstream serve` children
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def two_services(
    tmp_path: Path, redis_server: EmbeddedRedis, shared_store: str
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Two replicas on one store and one Redis; only the first is started."""
    first = ServiceProcess(tmp_path / "a", redis_server.url, free_port())
    second = ServiceProcess(tmp_path / "b", redis_server.url, free_port())
    first.start()
    try:
        yield first, second
    finally:
        for svc in (first, second):
            if svc.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(svc.proc.pid, signal.SIGCONT)
            svc.terminate()


@pytest.mark.timeout(300)
def test_kill_9_of_the_replica_the_stream_is_on(
    two_services: tuple[ServiceProcess, ServiceProcess],
) -> None:
    first, second = two_services
    both = [first.address, second.address]
    # The second is down when the run starts, so the stream starts on the first.
    run = stepstream.Run("replicas", address=both, max_batch_points=2000)
    trainer = Trainer(run)
    assert trainer.half.wait(60)
    second.start()
    trainer.second_half_in_flight()
    first.kill9()
    trainer.join()
    run.wait(timeout=120, verbose=False)
    stats = run.stats
    assert stats.connections >= 2
    assert stats.acknowledged_points == Trainer.STEPS * len(NAMES)
    assert stats.rejected_points == 0 and not run.errors
    run.close(timeout=60)
    assert_stored_exactly_once("replicas", Trainer.STEPS, second.address)
    assert_stored_exactly_once("replicas", Trainer.STEPS, both)
    assert stepstream.get_run("replicas", address=second.address).state == "FINISHED"


@pytest.mark.timeout(300)
def test_sigstop_of_the_replica_the_stream_is_on(
    two_services: tuple[ServiceProcess, ServiceProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Above the service's lease (10 s): the second replica may wait that long for what the
    # stalled one judged before it answers the re-sent batches.
    monkeypatch.setattr(stepstream._sender, "ACK_TIMEOUT", 12.0)
    first, second = two_services
    run = stepstream.Run(
        "replicas",
        address=[first.address, second.address],
        max_batch_points=2000,
        connect_timeout=5.0,
    )
    trainer = Trainer(run)
    assert trainer.half.wait(60)
    second.start()
    trainer.second_half_in_flight()
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGSTOP)
    trainer.join()
    run.wait(timeout=120, verbose=False)
    stats = run.stats
    assert stats.connections >= 2
    assert stats.acknowledged_points == Trainer.STEPS * len(NAMES)
    assert stats.rejected_points == 0 and not run.errors
    # The stalled replica comes back with what it had judged and the batches it never read.
    os.kill(first.proc.pid, signal.SIGCONT)
    run.close(timeout=60)
    for svc in (first, second):
        assert_stored_exactly_once("replicas", Trainer.STEPS, svc.address)
    assert stepstream.get_run("replicas", address=first.address).state == "FINISHED"
