"""What a command prints and how it ends: tables for a terminal, JSON for scripts, and one
place where errors become a message on stderr and an exit code.

Exit codes: 0 ok; 1 the command failed (an error answer from the service, a file that cannot
be written, a missing extra); 2 a usage error or an invalid argument (caught here or by the service); 3 the service cannot be
reached; 4 what was asked for does not exist (an unknown run or series).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from .._exceptions import InvalidArgumentError, MissingExtraError, RPCError
from . import _connection

OK, FAILED, USAGE, UNREACHABLE, NOT_FOUND = 0, 1, 2, 3, 4
_UNREACHABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

Handler = Callable[[argparse.Namespace], int | None]


class NotFound(Exception):
    """What a command was asked for does not exist (exit code 4)."""


def run_handler(args: argparse.Namespace) -> int:
    """Run the parsed command's handler; every error becomes a message and an exit code."""
    handler: Handler = args.handler
    try:
        return handler(args) or OK
    except NotFound as exc:
        return fail(str(exc), NOT_FOUND)
    except RPCError as exc:
        if exc.code in _UNREACHABLE_CODES:
            where = _connection.describe(args)
            return fail(
                f"cannot reach the stepstream service at {where} ({exc.code.name}: {exc.message})."
                " Is `stepstream serve` running there? Set --address or $STEPSTREAM_ADDRESS.",
                UNREACHABLE,
            )
        if exc.code is grpc.StatusCode.NOT_FOUND:
            return fail(exc.message, NOT_FOUND)
        if exc.code is grpc.StatusCode.INVALID_ARGUMENT:
            return fail(exc.message, USAGE)
        return fail(str(exc), FAILED)
    except InvalidArgumentError as exc:
        return fail(str(exc), USAGE)
    except BrokenPipeError:  # `stepstream ... | head`
        return OK
    except (MissingExtraError, OSError) as exc:
        return fail(str(exc), FAILED)


def fail(message: str, code: int) -> int:
    print(f"stepstream: {message}", file=sys.stderr)
    return code


def print_json(value: Any) -> None:
    """JSON for scripts; NaN and ±Inf as Python's json writes them (NaN, Infinity)."""
    print(json.dumps(value, indent=2, ensure_ascii=False, default=_plain))


def _plain(value: object) -> object:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def number(value: float | None) -> str:
    """A float for a table: short, with nan/inf spelled out; "" for None."""
    if value is None:
        return ""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def when(value: datetime.datetime | None) -> str:
    return (
        ""
        if value is None
        else value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    )


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns aligned to their widest cell, headers in capitals."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [[h.upper() for h in headers], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
