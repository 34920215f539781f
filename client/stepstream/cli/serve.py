"""`stepstream serve`: handed to the service's own CLI when stepstream-server is installed."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

NAME = "serve"
INSTALL_HINT = (
    "`stepstream serve` needs the service, which is not installed here:"
    " pip install stepstream-server (from a checkout: pip install . , or make run)"
)


def register(commands: Any) -> None:
    # Listed in `stepstream --help`; `main` hands `serve ...` over before parsing, so the
    # service's CLI parses (and documents, with `stepstream serve --help`) its own options.
    commands.add_parser(
        NAME, help="run the ingestion service (needs stepstream-server)", add_help=False
    ).set_defaults(handler=lambda args: dispatch([]))


def dispatch(argv: Sequence[str], name: str = NAME) -> int:
    """Hand `stepstream <name> ...` (serve, tokens) to the service's own CLI."""
    try:
        service = importlib.import_module("stepstream_server.cli")
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("stepstream_server"):
            raise
        print(f"stepstream: {INSTALL_HINT}", file=sys.stderr)
        return 1
    try:
        service.main([name, *argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
