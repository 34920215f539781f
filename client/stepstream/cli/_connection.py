"""Where a command connects: the client's address settings as command-line options.

`--address` takes what `Run(address=...)` takes (host:port, a gRPC target, or a comma-separated
list of replicas) and defaults to $STEPSTREAM_ADDRESS, else 127.0.0.1:50051; `--project`
defaults to the service's default project. `--token`, `--tls`, `--tls-ca`, `--tls-cert` and
`--tls-key` are Run's `token`, `tls`, `root_certificates`, `client_certificate` and `client_key`
(each defaulting to its environment variable); every command that connects has them, and gets
its client from `open_client` (or its Target from `target`).
"""

from __future__ import annotations

import argparse

from .._client import RunClient
from .._exceptions import InvalidArgumentError
from .._targets import Address, Target, resolve_target


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--address",
        default=None,
        metavar="ADDRESS",
        help="the service: host:port, a gRPC target, or replicas separated by commas"
        " (default $STEPSTREAM_ADDRESS, else 127.0.0.1:50051)",
    )
    group.add_argument(
        "--project", default="", metavar="P", help="the project (default: the service's default)"
    )
    group.add_argument(
        "--token",
        default=None,
        metavar="TOKEN",
        help="access token for a service with --auth required (default $STEPSTREAM_TOKEN)",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help="connect over TLS, trusting the system's roots (default $STEPSTREAM_TLS)",
    )
    group.add_argument(
        "--tls-ca",
        default=None,
        metavar="PEM",
        help="connect over TLS, trusting this CA (default $STEPSTREAM_TLS_CA)",
    )
    group.add_argument(
        "--tls-cert",
        default=None,
        metavar="PEM",
        help="client certificate for mTLS (default $STEPSTREAM_TLS_CERT)",
    )
    group.add_argument(
        "--tls-key", default=None, metavar="PEM", help="its key (default $STEPSTREAM_TLS_KEY)"
    )


def address(args: argparse.Namespace) -> Address | None:
    text: str | None = args.address
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return parts if len(parts) > 1 else text


def target(args: argparse.Namespace) -> Target:
    """Where and how the command connects (address, TLS, token)."""
    return resolve_target(
        address(args),
        tls=getattr(args, "tls", None),
        root_certificates=getattr(args, "tls_ca", None),
        client_certificate=getattr(args, "tls_cert", None),
        client_key=getattr(args, "tls_key", None),
        token=getattr(args, "token", None),
    )


def open_client(args: argparse.Namespace) -> RunClient:
    """A RunService client for the command's connection options."""
    return RunClient(target(args))


def describe(args: argparse.Namespace) -> str:
    """The address a command used, as messages show it."""
    try:
        return resolve_target(address(args)).address
    except InvalidArgumentError:
        return str(args.address)
