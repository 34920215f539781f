"""The line protocol between the harness and its driver processes (standard library only).

The harness writes one JSON command per line to a driver's stdin; the driver answers each
command with exactly one JSON line on stdout. Commands:

- `{"cmd": "prepare", ...}`: create runs, connect; answer when ready to log (not timed).
- `{"cmd": "go"}`: log the workload now; answer with the measurement.
- `{"cmd": "finish"}`: close the runs (not timed); answer `{"ok": true}`.
- `{"cmd": "exit"}` or end of input: leave.

`prepare` and `go` are separate so that the harness can start every driver of a shape at once
(a barrier), after all of them paid for imports, run creation and connection set-up.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

Message = dict[str, Any]


def commands() -> Iterator[Message]:
    """The commands on stdin, until `exit` or end of input."""
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        message: Message = json.loads(line)
        if message.get("cmd") == "exit":
            return
        yield message


def answer(message: Message) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve(handle: Callable[[Message], Message]) -> None:
    """Answer every command with `handle(command)`; an exception becomes `{"error": ...}`."""
    for command in commands():
        try:
            result = handle(command)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            result = {"error": f"{type(exc).__name__}: {exc}"}
        answer(result)
