"""Where a command connects: the client's address settings as command-line options.

`--address` takes what `Run(address=...)` takes (host:port, a gRPC target, or a comma-separated
list of replicas) and defaults to $STEPSTREAM_ADDRESS, else 127.0.0.1:50051; `--project`
defaults to the service's default project. Token and TLS settings belong here too: add their
options in `add_options` and hand them to the client in `open_client`, and every command has
them.
"""

from __future__ import annotations

import argparse

from .._client import RunClient
from .._exceptions import InvalidArgumentError
from .._targets import Address, resolve_target


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


def address(args: argparse.Namespace) -> Address | None:
    text: str | None = args.address
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return parts if len(parts) > 1 else text


def open_client(args: argparse.Namespace) -> RunClient:
    """A RunService client for the command's connection options."""
    return RunClient(resolve_target(address(args)))


def describe(args: argparse.Namespace) -> str:
    """The address a command used, as messages show it."""
    try:
        return resolve_target(address(args)).address
    except InvalidArgumentError:
        return str(args.address)
