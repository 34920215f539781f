"""An MLflow writer process (runs in bench/.venv-mlflow): `python -m bench.mlflow_driver`.

Speaks `bench.protocol`. `prepare` names the tracking URI, the mode and the writers (threads)
of this process; each writer logs to its own run unless `run_ids` names the runs to share.
`go` runs every writer until `seconds` have passed (a call in flight then completes and counts)
and answers with the points logged and the monotonic clock at start and end.

Modes:

- `batch`: `MlflowClient.log_batch` with `series` keys x `steps_per_call` steps per call
  (MLflow accepts at most 1,000 metrics per call).
- `single`: one `MlflowClient.log_metric` call per point.
- `cost`: like `batch` for a fixed number of calls, answering with the CPU time of the calling
  thread (`time.thread_time()`) per point: what the trainer's thread pays, since MLflow logs
  synchronously.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bench.protocol import Message, serve

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient


class Writer:
    def __init__(self, command: Message, index: int) -> None:
        self.client = MlflowClient(tracking_uri=command["uri"])
        run_ids = command.get("run_ids")
        self.run_id = run_ids[index % len(run_ids)] if run_ids else self.create_run()
        prefix = command.get("prefixes", [""] * (index + 1))[index]
        self.keys = [f"{prefix}m{k:04d}" for k in range(int(command["series"]))]
        self.steps_per_call = int(command.get("steps_per_call", 1))
        self.mode = command["mode"]
        self.points = 0
        self.calls = 0
        self.errors = 0
        self.last_error = ""
        self.t0 = 0.0
        self.t1 = 0.0
        self.cpu = 0.0

    def create_run(self, attempts: int = 5) -> str:
        """A new run; retried a few times, since a busy server may run out of database
        connections (SQLAlchemy's QueuePool) while other writers are still being answered."""
        for attempt in range(attempts):
            try:
                return str(self.client.create_run(experiment_id="0").info.run_id)
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")

    def batch(self, step: int) -> list[Metric]:
        now = int(time.time() * 1000)
        return [
            Metric(key, 0.5 + k, now, step + s)
            for s in range(self.steps_per_call)
            for k, key in enumerate(self.keys)
        ]

    def run(self, deadline: float, max_calls: int | None) -> None:
        self.t0 = time.monotonic()
        cpu0 = time.thread_time()
        step = 0
        while time.monotonic() < deadline and (max_calls is None or self.calls < max_calls):
            try:
                if self.mode == "single":
                    key = self.keys[self.calls % len(self.keys)]
                    self.client.log_metric(self.run_id, key, 0.5, step=step)
                    step += 1 if key == self.keys[-1] else 0
                    self.points += 1
                else:
                    self.client.log_batch(self.run_id, metrics=self.batch(step))
                    step += self.steps_per_call
                    self.points += self.steps_per_call * len(self.keys)
            except Exception as exc:  # e.g. "database is locked" under concurrent writers
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            self.calls += 1
        self.cpu = time.thread_time() - cpu0
        self.t1 = time.monotonic()


class Driver:
    def __init__(self) -> None:
        self.writers: list[Writer] = []
        self.seconds = 0.0
        self.max_calls: int | None = None

    def __call__(self, command: Message) -> Message:
        if command["cmd"] == "prepare":
            self.writers = [Writer(command, i) for i in range(int(command.get("threads", 1)))]
            self.seconds = float(command["seconds"])
            self.max_calls = command.get("max_calls")
            return {"ok": True}
        if command["cmd"] == "go":
            return self.go()
        self.writers = []
        return {"ok": True}

    def go(self) -> Message:
        deadline = time.monotonic() + self.seconds
        threads = [
            threading.Thread(target=w.run, args=(deadline, self.max_calls)) for w in self.writers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        points = sum(w.points for w in self.writers)
        result: dict[str, Any] = {
            "points": points,
            "acked": points,
            "calls": sum(w.calls for w in self.writers),
            "errors": sum(w.errors for w in self.writers),
            "last_error": next((w.last_error for w in self.writers if w.last_error), ""),
            "t0": min(w.t0 for w in self.writers),
            "t1": max(w.t1 for w in self.writers),
        }
        if points:
            result["cpu_per_point"] = sum(w.cpu for w in self.writers) / points
        return result


def main() -> None:
    serve(Driver())


if __name__ == "__main__":
    main()
