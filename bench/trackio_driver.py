"""Trackio's workloads, one writer process: `python -m bench.trackio_driver`.

The same loop logs through `stepstream.Run` (run from the project's venv) or through Trackio's
Python API to its self-hosted server (run from bench/.trackio-venv), so both pay for the same
loop, dicts and calls. Speaks `bench.protocol`:

- `prepare`: `target` ("stepstream" with `address`, or "trackio" with `url`), `workload`,
  `series`, `steps`, `run`; opens the run (`stepstream.Run(...)` / `trackio.init(...)`), not
  timed.
- `go`: logs the workload, then closes the run (`run.close()` / `trackio.finish()`); answers
  with the monotonic clock at the first log call (`t0`), after the last one (`t_logged`) and
  when close returned (`t1`), the points logged and, for stepstream, acknowledged.

Workloads (`series` x `steps` points, explicit steps):

- `dict`: one `log(dict_of_series, step=s)` per step (the dict built once);
- `call`: one call per point, `log({name: value}, step=s)` for each name at each step, as W&B
  and Neptune users log loss here and learning rate there.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.protocol import Message, serve

WORKLOADS = ("dict", "call")


def loop(log: Callable[..., Any], workload: str, names: list[str], steps: int) -> None:
    if workload == "dict":
        data = {name: 0.5 + k for k, name in enumerate(names)}
        for step in range(steps):
            log(data, step=step)
    elif workload == "call":
        for step in range(steps):
            for name in names:
                log({name: 0.5}, step=step)
    else:
        raise ValueError(f"unknown workload {workload!r}; use one of {WORKLOADS}")


class Driver:
    def __init__(self) -> None:
        self.command: Message = {}
        self.log: Callable[..., Any] | None = None
        self.close: Callable[[], Any] = lambda: None
        self.acked: Callable[[], int] = lambda: 0

    def __call__(self, command: Message) -> Message:
        # stdout carries the protocol's answers: what the trackers print goes to the log.
        with contextlib.redirect_stdout(sys.stderr):
            if command["cmd"] == "prepare":
                return self.prepare(command)
            if command["cmd"] == "go":
                return self.go()
            return {"ok": True}

    def prepare(self, command: Message) -> Message:
        self.command = command
        if command["target"] == "stepstream":
            import stepstream

            run = stepstream.Run(command["run"], address=command["address"])
            deadline = time.monotonic() + 60
            while not run.stats.connected:
                if time.monotonic() > deadline:
                    raise RuntimeError("stepstream did not connect within 60 s")
                time.sleep(0.005)
            self.log = run.log_metrics
            self.close = lambda: run.close(timeout=600)
            self.acked = lambda: run.stats.acknowledged_points
        else:
            import trackio

            trackio.init(project=command["project"], name=command["run"], server_url=command["url"])
            self.log = trackio.log
            self.close = trackio.finish
        return {"ok": True}

    def go(self) -> Message:
        command, log = self.command, self.log
        assert log is not None
        names = [f"m{k:04d}" for k in range(int(command["series"]))]
        steps = int(command["steps"])
        t0 = time.monotonic()
        loop(log, command["workload"], names, steps)
        logged = time.monotonic()
        self.close()
        t1 = time.monotonic()
        return {
            "points": len(names) * steps,
            "calls": steps * (len(names) if command["workload"] == "call" else 1),
            "acked": self.acked(),
            "t0": t0,
            "t_logged": logged,
            "t1": t1,
        }


def main() -> None:
    serve(Driver())


if __name__ == "__main__":
    main()
