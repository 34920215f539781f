"""`stepstream`: the command line, a package of subcommands, each module one job.

    stepstream runs list [--project P] [--experiment E] [--state S] [--json]
    stepstream runs show RUN [--json]
    stepstream runs export RUN PATH [--series] [--format F]
    stepstream series RUN NAME [--max-points N] [--csv | --json]
    stepstream sync [PATH ...] [--timeout S]   upload runs from the local spool
    stepstream serve ...        the service's own CLI, when stepstream-server is installed
    stepstream tokens ...       access tokens, on the store (also the service's CLI)

A new subcommand is a module with `register(commands)` that adds its parser and sets
`handler`, listed in COMMANDS. Exit codes are in `_output` (0 ok, 1 failed, 2 usage,
3 service unreachable, 4 not found).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import runs, series, serve, sync, tokens
from ._output import run_handler

COMMANDS = (runs, series, serve, sync, tokens)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="stepstream",
        description="Look at stepstream runs from a terminal, and serve them.",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage error, 3 service unreachable, 4 not found.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return top


def main(argv: Sequence[str] | None = None) -> None:
    """The `stepstream` console script; exits with the command's exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in ([serve.NAME], [tokens.NAME]):  # the service parses its own options
        raise SystemExit(serve.dispatch(args[1:], args[0]))
    parsed = parser().parse_args(args)
    raise SystemExit(run_handler(parsed))
