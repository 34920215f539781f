"""Truthful run states (SPEC §5): real trainer child processes end by an uncaught exception,
Ctrl-C (SIGINT), SIGTERM, sys.exit or a normal exit, with and without `with`; the state and
the reason are read back from a real service process, with every point logged before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import stepstream
from served import address
from stepstream._lifecycle import SIGTERM_REASON

__all__ = ["address"]

STEPS = 50

TRAINER = textwrap.dedent(
    """
    import faulthandler, os, signal, sys, time
    import stepstream

    # A trainer that does not end is asked for every thread's stack (finish() below).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Ctrl-C as in a terminal: a test runner started in the background without job control
    # (nohup, some CI runners) hands its children SIGINT ignored, and Python then never
    # raises KeyboardInterrupt (the ctrl_c tests waited 60 s for a trainer that ignored it).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    address, run_id, how, ending = sys.argv[1:5]
    STEPS = int(sys.argv[5])

    def idle(seconds):
        # Short sleeps: a signal landing between the last check for signals and the start of
        # one long sleep() would wait for the sleep's end before its handler runs.
        for _ in range(int(seconds / 0.05)):
            time.sleep(0.05)

    def preempted(signum, frame):
        print("user handler", flush=True)
        raise RuntimeError("preempted by the scheduler")

    if ending == "user-sigterm":
        signal.signal(signal.SIGTERM, preempted)

    def train(run):
        for step in range(STEPS):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        if ending == "user-sigterm":
            print("kept" if signal.getsignal(signal.SIGTERM) is preempted else "replaced")
        if ending == "raise":
            raise ValueError("loss is NaN at step 50")
        if ending == "hook-replaced":
            sys.excepthook = lambda *info: print("a hook of its own", flush=True)
            raise ValueError("loss is NaN at step 50")
        if ending == "caught":
            try:
                raise ValueError("handled")
            except ValueError:
                pass
        if ending.startswith("exit"):
            sys.exit(int(ending[4:]))
        if ending == "fork":
            ready, tell = os.pipe()
            child = os.fork()
            if child == 0:
                os.write(tell, b"x")  # a signal before this would be lost in fork() itself
                idle(60)
                os._exit(0)
            os.read(ready, 1)
            os.kill(child, signal.SIGTERM)
            _, status = os.waitpid(child, 0)
            print("child", os.WTERMSIG(status) if os.WIFSIGNALED(status) else "exited")
        if ending in ("sigint", "sigterm", "user-sigterm"):
            run.wait()
            print("ready", flush=True)
            idle(120)

    if how == "with":
        with stepstream.Run(run_id, address=address) as run:
            train(run)
    else:
        run = stepstream.Run(run_id, address=address)
        train(run)  # and never close()
    """
)


def trainer(address: str, run_id: str, how: str, ending: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", TRAINER, address, run_id, how, ending, str(STEPS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=60)  # below the test timeout: its output is shown
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # its threads' stacks, to stderr (faulthandler)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"trainer did not end: {out} {err}") from None
    return proc.returncode, out, err


def signalled(proc: subprocess.Popen[str], signum: int) -> tuple[int, str, str]:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # bounded: the trainer sleeps 120 s at most after "ready"
        lines.append(line)
        if line.strip() == "ready":
            break
    else:
        code, out, err = finish(proc)
        raise AssertionError(f"trainer ended before it was ready ({code}): {lines} {err}")
    os.kill(proc.pid, signum)
    code, out, err = finish(proc)
    return code, "".join(lines) + out, err


def stored(address: str, run_id: str) -> tuple[str, str | None, int]:
    info = stepstream.get_run(run_id, address=address)
    points = len(info.read_series("loss"))
    return info.state, info.failure_reason, points


HOWS = ["with", "plain"]


@pytest.fixture(params=HOWS)
def how(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


def test_an_uncaught_exception_fails_the_run(address: str, how: str) -> None:
    code, _, err = finish(trainer(address, f"raise-{how}", how, "raise"))
    assert code == 1 and "ValueError: loss is NaN at step 50" in err  # the traceback still
    assert stored(address, f"raise-{how}") == ("FAILED", "ValueError: loss is NaN at step 50", 50)


def test_ctrl_c_fails_the_run(address: str, how: str) -> None:
    code, _, err = signalled(trainer(address, f"sigint-{how}", how, "sigint"), signal.SIGINT)
    assert code == -signal.SIGINT and "KeyboardInterrupt" in err
    assert stored(address, f"sigint-{how}") == ("FAILED", "KeyboardInterrupt (SIGINT)", 50)


def test_sigterm_fails_the_run_and_still_ends_the_process(address: str, how: str) -> None:
    code, _, _ = signalled(trainer(address, f"sigterm-{how}", how, "sigterm"), signal.SIGTERM)
    assert code == -signal.SIGTERM  # killed by the signal, as without stepstream
    assert stored(address, f"sigterm-{how}") == ("FAILED", SIGTERM_REASON, 50)


def test_a_normal_exit_finishes_the_run(address: str, how: str) -> None:
    code, _, err = finish(trainer(address, f"normal-{how}", how, "normal"))
    assert code == 0, err
    assert stored(address, f"normal-{how}") == ("FINISHED", None, 50)


def test_a_handled_exception_is_no_failure(address: str, how: str) -> None:
    code, _, err = finish(trainer(address, f"caught-{how}", how, "caught"))
    assert code == 0, err
    assert stored(address, f"caught-{how}") == ("FINISHED", None, 50)


def test_sys_exit_inside_with(address: str) -> None:
    code, _, err = finish(trainer(address, "exit0", "with", "exit0"))
    assert code == 0, err
    assert stored(address, "exit0") == ("FINISHED", None, 50)
    code, _, err = finish(trainer(address, "exit3", "with", "exit3"))
    assert code == 3, err
    assert stored(address, "exit3") == ("FAILED", "SystemExit: 3", 50)


def test_sys_exit_without_with_cannot_be_told_from_a_normal_exit(address: str) -> None:
    """Python tells exit handlers no status: documented in the README's run states."""
    code, _, err = finish(trainer(address, "exit3-plain", "plain", "exit3"))
    assert code == 3, err
    assert stored(address, "exit3-plain") == ("FINISHED", None, 50)


def test_an_excepthook_installed_later_still_fails_the_run(address: str) -> None:
    code, out, _ = finish(trainer(address, "hooked", "plain", "hook-replaced"))
    assert code == 1 and "a hook of its own" in out
    assert stored(address, "hooked") == ("FAILED", "ValueError: loss is NaN at step 50", 50)


def test_the_users_sigterm_handler_is_kept(address: str, how: str) -> None:
    run_id = f"user-sigterm-{how}"
    code, out, err = signalled(trainer(address, run_id, how, "user-sigterm"), signal.SIGTERM)
    assert "kept" in out and "user handler" in out  # never replaced, and it ran
    assert code == 1 and "RuntimeError: preempted by the scheduler" in err
    assert stored(address, run_id) == ("FAILED", "RuntimeError: preempted by the scheduler", 50)


def test_a_forked_worker_killed_by_sigterm_leaves_the_run_alone(address: str) -> None:
    code, out, err = finish(trainer(address, "forked", "plain", "fork"))
    assert code == 0, err
    assert f"child {int(signal.SIGTERM)}" in out, err  # the worker died of the signal...
    assert stored(address, "forked") == ("FINISHED", None, 50)  # ...and failed nothing
