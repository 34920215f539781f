"""Waiting on the sender from the trainer's thread: progress on stderr, timeouts, and errors
raised afresh each time."""

from __future__ import annotations

import concurrent.futures
import sys
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

from ._exceptions import RPCError, StepstreamError, WaitTimeoutError
from ._types import SenderStats

_T = TypeVar("_T")


def copy_error(error: StepstreamError) -> StepstreamError:
    """A fresh exception equal to `error`, so that raising it again and again (one failure
    seen by many calls) does not grow one traceback forever."""
    if isinstance(error, RPCError):
        return RPCError(
            error.code,
            error.message,
            reason=error.reason,
            domain=error.domain,
            metadata=error.metadata,
        )
    return type(error)(*error.args)


def await_result(
    future: concurrent.futures.Future[_T],
    timeout: float | None,
    verbose: bool,
    action: str,
    stats: Callable[[], SenderStats],
) -> _T:
    """`future`'s result, showing progress after a second (when `verbose`); WaitTimeoutError
    after `timeout` seconds, naming `action` and the points not yet acknowledged."""
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    progress = Progress(sys.stderr) if verbose else None
    try:
        while True:
            now = time.monotonic()
            step = 0.25 if deadline is None else min(0.25, max(deadline - now, 0.0))
            try:
                return future.result(timeout=step)
            except concurrent.futures.TimeoutError:
                pass
            except StepstreamError as exc:
                raise copy_error(exc) from None
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                pending = stats().pending_points
                raise WaitTimeoutError(
                    f"{action} timed out after {timeout:g} s with {pending:,} points "
                    "not yet acknowledged"
                )
            if progress is not None and now - start >= 1.0:
                progress.show(stats())
    finally:
        if progress is not None:
            progress.end()


class Progress:
    """Progress of a long wait on stderr: one updating line on a terminal, else a line every
    five seconds."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._tty = stream.isatty()
        except Exception:  # a replaced stderr without isatty
            self._tty = False
        self._width = 0
        self._last = 0.0

    def show(self, stats: SenderStats) -> None:
        now = time.monotonic()
        if not self._tty and now - self._last < 5.0:
            return
        self._last = now
        done = stats.logged_points - stats.pending_points
        text = f"stepstream: {done:,} of {stats.logged_points:,} points acknowledged"
        if not stats.connected:
            text += " (reconnecting)"
        try:
            if self._tty:
                self._stream.write("\r" + text.ljust(self._width))
                self._width = len(text)
            else:
                self._stream.write(text + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed: progress is best effort
            pass

    def end(self) -> None:
        if self._tty and self._width:
            try:
                self._stream.write("\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass
