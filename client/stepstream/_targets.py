"""Where what the user gives as `address` becomes gRPC targets and channel options
(`resolve_target`), for every channel the client builds: one host:port, a gRPC target, or a
list of replicas (round robin, or rotation when the list names hosts); and how those channels
authenticate (TLS, client certificates, a token: `_security.py`)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from ._exceptions import InvalidArgumentError
from ._security import Connection, Security, Unpack, resolve_security

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "STEPSTREAM_ADDRESS"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

ChannelOption = tuple[str, int | str]

# Shared by every channel: the synchronous ones here and the sender's asyncio ones. Keepalive
# pings every 20 s, also on a connection without calls, find a dead or stalled (SIGSTOPped)
# replica within 30 s even with nothing to send: the connection is dropped, the calls on it
# fail with UNAVAILABLE and a round-robin channel stops picking that replica (the service
# permits pings every 10 s, with or without calls; a server must permit pings that often).
# The reconnect backoff matches the sender's own (50 ms doubling to 2 s), so a service that
# comes back is found within about two seconds.
#
# How long one connection attempt may take (TCP, TLS, HTTP/2 SETTINGS): gRPC Core gives an
# attempt until max(its backoff delay, grpc.min_reconnect_backoff_ms), each clamped to at
# least 100 ms (subchannel.cc, ParseArgsForBackoffValues / StartConnectingLocked; the default
# minimum is 20 s). The backoff starts again at its initial 100 ms whenever a connection that
# was up drops, so this minimum is what the first attempts after a failover get. 1 s:
# - a reachable but slow service (a loaded host, TLS) has ten times the 100 ms that 50 ms
#   amounted to: a handshake slower than 100 ms made the service look unreachable;
# - a stopped replica (SIGSTOP: the kernel takes the connection, nothing answers) still fails
#   its attempt within 1 s, so its channel reports TRANSIENT_FAILURE and calls move on well
#   inside the client's own waits: a rotating target waits connect_timeout / entries per
#   entry (10 s by default; 2 s with the tests' 4 s over two entries), a stream's open waits
#   connect_timeout. With the 20 s default an attempt on a stopped entry outlives those
#   waits and a rotating client could keep returning to it (test_client_targets's stalled
#   entry, host-name form, then times out).
CHANNEL_OPTIONS: list[ChannelOption] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 1_000),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]

# Reads change nothing: one that fails with UNAVAILABLE (its replica died under it) is tried
# again, on another replica.
RETRIED_METHODS = ("GetRun", "ListRuns", "ListSeries", "ReadSeries")
RUN_SERVICE = "stepstream.v1.RunService"
# Targets that may name several replicas balance over them: every new call (a new stream
# after a failure, too) goes to the next replica that is connected.
ROUND_ROBIN: ChannelOption = (
    "grpc.service_config",
    json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": RUN_SERVICE, "method": m} for m in RETRIED_METHODS],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    ),
)
# gRPC's own name resolvers: an address that starts with "<scheme>:" is a gRPC target.
GRPC_SCHEMES = frozenset({"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds"})
_BALANCED_SCHEMES = frozenset({"dns", "ipv4", "ipv6"})
_IP_FAMILIES = {"ipv4": "IPv4", "ipv6": "IPv6"}
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")
_PORT = re.compile(r"[0-9]{1,5}")
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_HOST_PORT_EXAMPLE = "e.g. 'metrics:50051', '10.0.0.1:50051' or '[::1]:50051'"

Address = str | Sequence[str]


@dataclass(frozen=True)
class Target:
    """Where the client connects: what `resolve_target` made of the user's address.

    `grpc_targets` is one gRPC target, or one per entry of a list that names a host by name
    (gRPC's ipv4:/ipv6: lists take IP literals only): the client then keeps a channel per
    entry and moves on to the next entry whenever a call or the stream fails on the current
    one.
    """

    address: str  # as messages show it
    grpc_targets: tuple[str, ...]
    options: tuple[ChannelOption, ...]
    security: Security = dataclasses.field(default_factory=Security)

    @property
    def rotating(self) -> bool:
        return len(self.grpc_targets) > 1

    def channel(self, index: int = 0) -> grpc.Channel:
        return self.security.channel(self.grpc_targets[index], self.options)

    def aio_channel(self, index: int = 0) -> grpc.aio.Channel:
        return self.security.aio_channel(self.grpc_targets[index], self.options)

    def __str__(self) -> str:
        return self.address


def resolve_target(address: Address | Target | None, **connection: Unpack[Connection]) -> Target:
    """The gRPC target(s), channel options and credentials for `address` and `connection`
    (tls, root_certificates, client_certificate, client_key, token: see _security.py; each
    falls back on its environment variable).

    `address` is, else $STEPSTREAM_ADDRESS is, else 127.0.0.1:50051:

    - "host:port" (an IPv6 literal in brackets: "[::1]:50051"): that one service;
    - a gRPC target ("dns:///metrics:50051", "ipv4:10.0.0.1:50051,10.0.0.2:50051",
      "ipv6:[fd00::1]:50051,[fd00::2]:50051", "unix:/run/stepstream.sock", ...); dns:, ipv4:
      and ipv6: targets balance round-robin over every address they name;
    - several "host:port" replicas: a list or tuple, or one string separated by commas (also in
      $STEPSTREAM_ADDRESS). IP literals become one round-robin ipv4:/ipv6: target; a list that
      names a host by name gets a channel per entry, and the client moves to the next one
      when a call or the stream fails.

    Raises InvalidArgumentError (a ValueError) naming the entry that is not host:port.
    """
    if isinstance(address, Target):
        if connection:
            return dataclasses.replace(address, security=resolve_security(**connection))
        return address
    target = _resolve(address)
    return dataclasses.replace(target, security=resolve_security(**connection))


def _resolve(address: Address | None) -> Target:
    what = "address"
    if address is None:
        address = os.environ.get(ADDRESS_ENV, "").strip() or DEFAULT_ADDRESS
        what = f"${ADDRESS_ENV}"
    if isinstance(address, str):
        text = address.strip()
        if not text:
            raise InvalidArgumentError(f"{what} must not be empty")
        scheme, colon, rest = text.partition(":")
        if colon and scheme in GRPC_SCHEMES:
            return _grpc_target(what, text, scheme, rest)
        if "," not in text:
            _host_port(what, text)
            return Target(text, (text,), tuple(CHANNEL_OPTIONS))
        entries = [entry.strip() for entry in text.split(",")]
    elif isinstance(address, (list, tuple)):
        if not address:
            raise InvalidArgumentError(f"{what} list must not be empty")
        entries = list(address)
    else:
        raise InvalidArgumentError(
            f"{what} must be a str or a list of 'host:port' strings, got {type(address).__name__}"
        )
    kinds = [_host_port(f"{what} entry", entry) for entry in entries]
    shown = ",".join(entries)
    if len(entries) == 1:
        return Target(shown, (shown,), tuple(CHANNEL_OPTIONS))
    if "name" in kinds:
        return Target(shown, tuple(entries), tuple(CHANNEL_OPTIONS))
    if "ipv6" in kinds:  # one ipv6: target, IPv4 entries included (see _as_ipv6)
        grpc_target = "ipv6:" + ",".join(map(_as_ipv6, entries, kinds))
    else:
        grpc_target = "ipv4:" + shown
    return Target(shown, (grpc_target,), (*CHANNEL_OPTIONS, ROUND_ROBIN))


def resolve_address(address: Address | None) -> str:
    """The address as messages show it: `address`, else $STEPSTREAM_ADDRESS, else
    127.0.0.1:50051 (checked; see resolve_target)."""
    return resolve_target(address).address


def _grpc_target(what: str, text: str, scheme: str, rest: str) -> Target:
    if not rest.strip("/"):
        raise InvalidArgumentError(f"{what} {text!r} names no address after {scheme}:")
    if scheme == "dns" and "," in rest:
        raise InvalidArgumentError(
            f"{what} {text!r}: a dns: target names one host; give several replicas as a list "
            "of host:port"
        )
    if scheme in _IP_FAMILIES:
        for entry in rest.split(","):
            kind = _host_port(f"{what} {text!r}: entry", entry, ip_only=True)
            if kind != scheme:
                raise InvalidArgumentError(
                    f"{what} {text!r}: entry {entry!r} is not an {_IP_FAMILIES[scheme]} address"
                )
    options = tuple(CHANNEL_OPTIONS)
    if scheme in _BALANCED_SCHEMES:
        options = (*options, ROUND_ROBIN)
    return Target(text, (text,), options)


def _as_ipv6(entry: str, kind: str) -> str:
    """An ipv6: target entry: IPv4 as an IPv4-mapped IPv6 address (gRPC connects to those
    over IPv4)."""
    if kind == "ipv6":
        return entry
    host, _, port = entry.rpartition(":")
    return f"[::ffff:{host}]:{port}"


def _host_port(what: str, entry: object, *, ip_only: bool = False) -> str:
    """Check that `entry` is host:port; return "ipv4", "ipv6" or "name" (a host name)."""

    def invalid(why: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{what} {entry!r} is not host:port: {why}")

    if not isinstance(entry, str):
        raise invalid(f"a str is needed, got {type(entry).__name__}")
    if not entry:
        raise invalid("it is empty")
    if entry.partition(":")[0] in GRPC_SCHEMES and not ip_only:
        raise invalid("a gRPC target names every replica itself; give it alone as the address")
    scheme = _URL_SCHEME.match(entry)
    if scheme:
        raise invalid(
            f"{scheme.group(1)}: is not a gRPC target scheme "
            f"({', '.join(sorted(s + ':' for s in GRPC_SCHEMES))})"
        )
    host, colon, port = entry.rpartition(":")
    if not colon:
        raise invalid(f"no port ({_HOST_PORT_EXAMPLE})")
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise invalid(f"the port must be a number from 1 to 65535, got {port!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise invalid(f"{host[1:-1]!r} is not an IPv6 address") from None
        return "ipv6"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise invalid(f"{host!r} is not a host name") from None
        raise invalid("an IPv6 address needs brackets, e.g. '[::1]:50051'")
    if not host:
        raise invalid(f"no host ({_HOST_PORT_EXAMPLE})")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return "ipv4"
    if ip_only:
        raise invalid(f"{host!r} is not an IP address")
    if not _HOST_NAME.fullmatch(host):
        raise invalid(f"{host!r} is not a host name")
    return "name"
