"""What `stepstream serve` is told about security, and the rules on where it may listen.

`Settings.security` (config.py) holds a `SecuritySettings`; the default is plain text without
tokens, which is allowed on loopback addresses only; `/metrics`, which takes no token, is
served beyond loopback only when told `--metrics-public` (or `--insecure`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

AUTH_MODES = ("off", "required")


@dataclass(frozen=True)
class SecuritySettings:
    # PEM files: the service's certificate chain and key (TLS on when both are given), and
    # the CA that client certificates must chain to (mTLS: a client without one is refused).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # "required": every RPC (but gRPC health) and web request needs a token.
    auth: str = "off"
    # Listen on a non-loopback address without tokens, on purpose.
    insecure: bool = False
    # Serve /metrics (no token, whatever `auth` says) on a non-loopback address, on purpose.
    metrics_public: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def auth_required(self) -> bool:
        return self.auth == "required"

    def check(self) -> None:
        """Raise ValueError for settings that cannot work together."""
        if self.auth not in AUTH_MODES:
            raise ValueError(f"--auth must be one of {', '.join(AUTH_MODES)}, got {self.auth!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca is not None and not self.tls:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS)")


def is_loopback(host: str) -> bool:
    """Whether binding `host` reaches this machine only ("localhost", 127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or "" (every interface)


def check_binding(
    security: SecuritySettings, addresses: dict[str, str], metrics_address: str | None = None
) -> None:
    """Refuse to listen beyond loopback with no tokens unless told `--insecure`: anyone who can
    reach the port could then write, rewind and read every run. `addresses` maps a flag name to
    the HOST:PORT it binds (the gRPC address, the web view's). `metrics_address` (/metrics,
    which never asks for a token) beyond loopback needs `--metrics-public` or `--insecure`,
    with or without `--auth required`; one that is not HOST:PORT is left to the endpoint to
    refuse, with its own message."""
    security.check()
    if metrics_address is not None and not (security.metrics_public or security.insecure):
        host, sep, port = metrics_address.rpartition(":")
        if sep and port.isdigit() and not is_loopback(host):
            raise ValueError(
                f"--metrics-address {metrics_address} is not a loopback address, and /metrics "
                "answers anyone who can reach it without a token (--auth required does not "
                "cover it). Add --metrics-public to serve it there on purpose (e.g. for a "
                "Prometheus on another host), or bind it to 127.0.0.1"
            )
    if security.auth_required or security.insecure:
        return
    for flag, address in addresses.items():
        host = address.rpartition(":")[0]
        if address.startswith("unix:"):
            continue
        if not is_loopback(host):
            raise ValueError(
                f"{flag} {address} is not a loopback address, and without --auth required "
                "anyone who can reach it can write, rewind and read every run. Create a token "
                "(stepstream tokens create --project P --role admin) and add --auth required "
                "(with --tls-cert/--tls-key across a network), or add --insecure to serve "
                "without tokens anyway"
            )
