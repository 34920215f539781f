"""`stepstream tokens create|list|revoke`: handed to the service's CLI, which works on the
store directly (tokens live in the store; the service need not be running)."""

from __future__ import annotations

from typing import Any

from . import serve

NAME = "tokens"


def register(commands: Any) -> None:
    commands.add_parser(
        NAME, help="create, list and revoke access tokens (needs stepstream-server)", add_help=False
    ).set_defaults(handler=lambda args: serve.dispatch([], NAME))
