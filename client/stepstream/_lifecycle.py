"""How an open Run ends when its program does (SPEC §5: a run ends truthfully).

- A normal interpreter exit closes every Run still open: FINISHED (`atexit`).
- An uncaught exception in the main thread ends them FAILED with "<type>: <message>": a
  `sys.excepthook` wrapper (installed at the first Run, calling the hook it replaced) records
  the exception, and the exit handler fails the runs with it. If something replaced our hook
  later, the exception Python keeps in `sys.last_value` is used instead. Exceptions at an
  interactive prompt do not count (the session goes on).
- Ctrl-C (an uncaught KeyboardInterrupt) is such an exception: "KeyboardInterrupt (SIGINT)".
- SIGTERM: Python's default is to die at once, running nothing, so at the first Run created
  in the main thread a handler is installed, but only when SIGTERM still has its default
  disposition (a program or framework with its own handler keeps it, and one that ignores
  SIGTERM goes on ignoring it). The handler fails every open run with "SIGTERM (signal 15)"
  (each flush bounded by the run's connect_timeout, done on a helper thread; a run the helper
  could not end, e.g. because the signal interrupted the trainer inside the client, is failed
  by a direct FailRun), then restores the default disposition and sends itself SIGTERM again:
  the signal is never swallowed and the process ends as if it had been killed by it.
- A process forked from the trainer (a DataLoader worker) inherits none of this: its copy of
  the open runs is emptied, and the SIGTERM handler only re-sends the signal there.

`sys.exit(n)` outside a `with` block cannot be told from a normal exit (Python does not tell
exit handlers the status): the run ends FINISHED; inside `with`, a non-zero exit fails it.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import weakref
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._run import Run

logger = logging.getLogger("stepstream")

SIGTERM_REASON = "SIGTERM (signal 15): the process was terminated"
# A direct FailRun, when the orderly end could not run, waits at most this long.
DIRECT_FAIL_TIMEOUT = 5.0

_open_runs: weakref.WeakSet[Run] = weakref.WeakSet()
_lock = threading.Lock()
_pid = os.getpid()
_uncaught: BaseException | None = None
_previous_excepthook: Any = None
_sigterm_installed = False


def failure_reason(exc: BaseException) -> str:
    """What a run that ended with `exc` says it failed of: "<type>: <message>"."""
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt (SIGINT)"
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not hide the failure itself
        text = ""
    return f"{name}: {text}" if text else name


def track(run: Run) -> None:
    """`run` is open: end it when the program ends (installs the hooks on first use)."""
    _open_runs.add(run)
    _install()


def untrack(run: Run) -> None:
    _open_runs.discard(run)


def _interactive() -> bool:
    return hasattr(sys, "ps1")


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    global _uncaught
    if not _interactive():
        _uncaught = value
    previous = _previous_excepthook or sys.__excepthook__
    previous(kind, value, tb)


def _install() -> None:
    global _previous_excepthook, _sigterm_installed
    with _lock:
        if _previous_excepthook is None:
            _previous_excepthook = sys.excepthook
            sys.excepthook = _excepthook
        if _sigterm_installed or threading.current_thread() is not threading.main_thread():
            return
        _sigterm_installed = True  # decided once: a handler installed later is the user's
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)


def _uncaught_reason() -> str | None:
    if _uncaught is not None:
        return failure_reason(_uncaught)
    if sys.excepthook is _excepthook or _interactive():
        return None  # our hook saw every uncaught exception: there was none
    last = getattr(sys, "last_value", None)
    if isinstance(last, BaseException) and not isinstance(last, SystemExit):
        return failure_reason(last)
    return None


def _at_exit() -> None:
    """atexit: end the runs the program left open, each bounded by its reconnect window."""
    if os.getpid() != _pid:
        return
    reason = _uncaught_reason()
    for run in list(_open_runs):
        timeout = run._reconnect_timeout + run._connect_timeout
        try:
            if reason is None:
                run.close(timeout=timeout)
            else:
                run.fail(reason, timeout=timeout)
        except BaseException as exc:
            logger.warning("stepstream: ending run %r at exit failed: %s", run.run_id, exc)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if os.getpid() == _pid:
        _fail_all(SIGTERM_REASON)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _fail_all(reason: str) -> None:
    """Fail every open run from a helper thread (the signal may have interrupted this thread
    inside the client, holding its locks); a run it did not end in time is failed directly."""
    runs = list(_open_runs)
    ended: set[int] = set()

    def work() -> None:
        for run in runs:
            try:
                run.fail(reason, timeout=run._connect_timeout)
            except BaseException as exc:
                logger.warning("stepstream: failing run %r on SIGTERM: %s", run.run_id, exc)
            ended.add(id(run))

    helper = threading.Thread(target=work, name="stepstream-sigterm", daemon=True)
    helper.start()
    helper.join(sum(run._connect_timeout for run in runs) + 1.0)
    for run in runs:
        if id(run) not in ended:
            try:
                run._fail_directly(reason, DIRECT_FAIL_TIMEOUT)
            except BaseException as exc:
                logger.warning("stepstream: failing run %r on SIGTERM: %s", run.run_id, exc)


def _forget_in_child() -> None:
    global _pid, _uncaught
    _pid = os.getpid()
    _open_runs.clear()
    _uncaught = None


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_forget_in_child)
