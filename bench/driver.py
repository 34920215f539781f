"""A trainer process driven by the harness: `python -m bench.driver MODE` (see bench.protocol).

Modes:

- `ingest`: `prepare` opens the Run objects named in the command; `go` logs `steps` steps of a
  `series`-key dict to each of them (`log_metrics(dict, step=i)`), then `wait()`s until every
  point is acknowledged, and answers with the points acknowledged and the monotonic clock at
  the first log call and after the last `wait()` returned.
- `cost`: like `ingest` with one Run, answering with the CPU time the trainer's thread spent
  inside `log_metrics` (`time.thread_time()`), per point.
- `latency`: logs a `keys`-key dict at a fixed offered load (`rate` points/s, in bursts of the
  calls due every millisecond) and reports, per burst, the time from the first call's scheduled
  time to the moment the sender thread received the acknowledgement covering it. The sender's
  `_on_answer` (a client internal) is wrapped to timestamp acknowledgements exactly; if it is
  gone, the public `acknowledged_points` counter is polled every 0.2 ms instead.
- `stall`: `prepare` opens a Run with a small `max_queued_points`; after the harness has
  SIGSTOPped the service, `go` logs for `seconds` and reports how long log calls kept
  returning before the first one blocked (the client's full-queue policy is to block), the
  longest call, and the process RSS; then it waits for every point to be acknowledged after the
  harness resumed the service.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import stepstream

from bench.procs import proc_status_kb
from bench.protocol import Message, serve

# A log call slower than this counts as blocked on the full queue.
BLOCKED_CALL_SECONDS = 0.05
CONNECT_TIMEOUT = 60.0


def metrics(prefix: str, count: int) -> dict[str, float]:
    return {f"{prefix}m{k:04d}": 0.5 + k for k in range(count)}


def wait_connected(runs: list[stepstream.Run], timeout: float = CONNECT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    for run in runs:
        while not run.stats.connected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run.run_id} did not connect within {timeout:g} s")
            time.sleep(0.005)


class Ingest:
    def __init__(self) -> None:
        self.runs: list[stepstream.Run] = []
        self.data: dict[str, float] = {}
        self.steps = 0

    def __call__(self, command: Message) -> Message:
        cmd = command["cmd"]
        if cmd == "prepare":
            return self.prepare(command)
        if cmd == "go":
            return self.go()
        if cmd == "finish":
            for run in self.runs:
                run.close(timeout=120)
            self.runs = []
            return {"ok": True}
        raise ValueError(f"unknown command {cmd!r}")

    def prepare(self, command: Message) -> Message:
        self.data = metrics(command.get("series_prefix", ""), int(command["series"]))
        self.steps = int(command["steps"])
        self.runs = [
            stepstream.Run(
                run_id,
                address=command["address"],
                resume=bool(command.get("resume", False)),
                **command.get("run_options", {}),
            )
            for run_id in command["run_ids"]
        ]
        wait_connected(self.runs)
        return {"ok": True}

    def go(self) -> Message:
        runs, data = self.runs, self.data
        cpu0 = time.thread_time()
        t0 = time.monotonic()
        for step in range(self.steps):
            for run in runs:
                run.log_metrics(data, step=step)
        logged = time.monotonic()
        cpu = time.thread_time() - cpu0
        for run in runs:
            run.wait(timeout=600, verbose=False)
        t1 = time.monotonic()
        stats = [run.stats for run in runs]
        return {
            "points": self.steps * len(data) * len(runs),
            "acked": sum(s.acknowledged_points for s in stats),
            "rejected": sum(s.rejected_points for s in stats),
            "t0": t0,
            "t_logged": logged,
            "t1": t1,
            "log_cpu": cpu,
        }


def cost(command: Message, state: dict[str, Any]) -> Message:
    """The CPU the trainer's thread spends inside log_metrics for a `keys`-key dict."""
    if command["cmd"] == "prepare":
        run = stepstream.Run(command["run_id"], address=command["address"])
        wait_connected([run])
        state.update(run=run, data=metrics("", int(command["keys"])), calls=int(command["calls"]))
        return {"ok": True}
    run, data, calls = state["run"], state["data"], state["calls"]
    if command["cmd"] == "go":
        log = run.log_metrics
        cpu0 = time.thread_time()
        wall0 = time.perf_counter()
        for step in range(calls):
            log(data, step=step)
        wall = time.perf_counter() - wall0
        cpu = time.thread_time() - cpu0
        run.wait(timeout=600, verbose=False)
        points = calls * len(data)
        return {
            "points": points,
            "acked": run.acknowledged_points,
            "cpu_per_point": cpu / points,
            "wall_per_point": wall / points,
        }
    run.close(timeout=120)
    return {"ok": True}


def latency(command: Message, state: dict[str, Any]) -> Message:
    if command["cmd"] == "prepare":
        run = stepstream.Run(
            command["run_id"], address=command["address"], **command.get("run_options", {})
        )
        wait_connected([run])
        state.update(
            run=run,
            data=metrics("", int(command["keys"])),
            rate=float(command["rate"]),
            seconds=float(command["seconds"]),
            warmup=float(command.get("warmup", 0.5)),
        )
        return {"ok": True}
    run = state["run"]
    if command["cmd"] != "go":
        run.close(timeout=120)
        return {"ok": True}
    data, rate, seconds, warmup = state["data"], state["rate"], state["seconds"], state["warmup"]
    acks: list[tuple[float, int]] = []  # (monotonic time, acknowledged points so far)
    method = hook_acks(run, acks)
    stop_polling = threading.Event()
    if method == "poll":
        threading.Thread(target=poll_acks, args=(run, acks, stop_polling), daemon=True).start()
    calls_per_second = rate / len(data)
    total_calls = max(1, int((seconds + warmup) * calls_per_second))
    bursts: list[tuple[float, int]] = []  # (first call's scheduled time, points after burst)
    start = time.monotonic()
    done = 0
    step = 0
    while done < total_calls:
        now = time.monotonic()
        due = min(total_calls, int((now - start) * calls_per_second) + 1)
        if due > done:
            scheduled = start + done / calls_per_second
            for _ in range(due - done):
                run.log_metrics(data, step=step)
                step += 1
            done = due
            bursts.append((scheduled, done * len(data)))
        time.sleep(0.001)
    offered_seconds = time.monotonic() - start
    run.wait(timeout=600, verbose=False)
    stop_polling.set()
    latencies = []
    cursor = 0
    for scheduled, points in bursts:
        while cursor < len(acks) and acks[cursor][1] < points:
            cursor += 1
        if cursor == len(acks):
            break
        if scheduled - start >= warmup:
            latencies.append(acks[cursor][0] - scheduled)
    latencies.sort()
    stats = run.stats
    return {
        "method": method,
        "points_per_batch": stats.logged_points / max(1, stats.batches_sent),
        "offered_rate": rate,
        "achieved_rate": done * len(data) / offered_seconds,
        "bursts": len(latencies),
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "max": latencies[-1],
    }


PAIRED_WARMUP = 20  # call pairs before the timed ones (connections and caches warm up)


class _OneAck:
    """Times one log call of a run until its acknowledgement (the sender's answer hook, as
    hook_acks uses it), with nothing else in flight on that run."""

    def __init__(self, run: stepstream.Run) -> None:
        self.run = run
        self.sender = run._sender
        self.on_answer = self.sender._on_answer
        self.wanted = 0
        self.arrived = threading.Event()
        self.sender._on_answer = self._answered
        self.step = 0

    def _answered(self, response: Any) -> None:
        self.on_answer(response)
        if self.sender.acknowledged_points >= self.wanted:
            self.arrived.set()

    def call(self, data: dict[str, float]) -> float:
        self.arrived.clear()
        self.wanted = self.run.acknowledged_points + len(data)
        start = time.perf_counter()
        self.run.log_metrics(data, step=self.step)
        if not self.arrived.wait(120):
            raise RuntimeError(f"call {self.step} was not acknowledged within 120 s")
        self.step += 1
        return time.perf_counter() - start


def paired(command: Message, state: dict[str, Any]) -> Message:
    """A closed loop over two runs (e.g. on a plain and a secured service): one log call on
    each in turn (the order flipped every pair), each waiting for its acknowledgement, so
    both sides' samples come from the same moments of the machine's load and nothing queues.
    Answers each side's p50 and the median of the per-pair differences (second - first)."""
    if command["cmd"] == "prepare":
        runs = [
            stepstream.Run(side["run_id"], address=side["address"], **side.get("run_options", {}))
            for side in command["sides"]
        ]
        wait_connected(runs)
        state.update(runs=runs, data=metrics("", int(command["keys"])))
        return {"ok": True}
    runs = state["runs"]
    if command["cmd"] != "go":
        for run in runs:
            run.close(timeout=120)
        return {"ok": True}
    timers = [_OneAck(run) for run in runs]
    data = state["data"]
    samples: list[list[float]] = [[], []]
    for i in range(PAIRED_WARMUP + int(command["samples"])):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        took = {side: timers[side].call(data) for side in order}
        if i >= PAIRED_WARMUP:
            for side in (0, 1):
                samples[side].append(took[side])
    diffs = sorted(b - a for a, b in zip(samples[0], samples[1], strict=True))
    return {
        "samples": len(diffs),
        "p50": [sorted(side)[len(side) // 2] for side in samples],
        "diff_p50": diffs[len(diffs) // 2],
    }


def hook_acks(run: stepstream.Run, acks: list[tuple[float, int]]) -> str:
    """Timestamp every acknowledgement in the sender thread, if the client still has the
    internal `_sender._on_answer`; returns "hook", or "poll" when it does not."""
    sender = getattr(run, "_sender", None)
    on_answer = getattr(sender, "_on_answer", None)
    if sender is None or on_answer is None:
        return "poll"

    def timed(response: Any) -> None:
        on_answer(response)
        acks.append((time.monotonic(), sender.acknowledged_points))

    sender._on_answer = timed
    return "hook"


def poll_acks(run: stepstream.Run, acks: list[tuple[float, int]], stop: threading.Event) -> None:
    last = -1
    while not stop.is_set():
        acked = run.acknowledged_points
        if acked != last:
            acks.append((time.monotonic(), acked))
            last = acked
        time.sleep(0.0002)


class RssSampler(threading.Thread):
    """Samples this process's VmRSS every 20 ms; `peak_kb` is the largest seen."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb = self_rss_kb()
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.02):
            self.peak_kb = max(self.peak_kb, self_rss_kb())


def self_rss_kb() -> int:
    return proc_status_kb(os.getpid(), "VmRSS") or 0


def stall(command: Message, state: dict[str, Any]) -> Message:
    """Log against a stopped service until `seconds` pass; see the module docstring."""
    if command["cmd"] == "prepare":
        max_queued = int(command["max_queued_points"])
        run = stepstream.Run(
            command["run_id"], address=command["address"], max_queued_points=max_queued
        )
        data = metrics("", int(command["keys"]))
        run.log_metrics(data, step=0)
        run.wait(timeout=60, verbose=False)
        state.update(run=run, data=data, seconds=float(command["seconds"]))
        return {"ok": True, "rss_kb": self_rss_kb()}
    run, data, seconds = state["run"], state["data"], state["seconds"]
    if command["cmd"] == "go":
        sampler = RssSampler()
        rss_before = sampler.peak_kb
        sampler.start()
        calls = 0
        blocked_after: float | None = None
        calls_before_block = 0
        longest = 0.0
        start = time.perf_counter()
        deadline = start + seconds
        step = 1
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            run.log_metrics(data, step=step)
            took = time.perf_counter() - t
            step += 1
            calls += 1
            longest = max(longest, took)
            if took > BLOCKED_CALL_SECONDS and blocked_after is None:
                blocked_after = t - start
                calls_before_block = calls - 1
        sampler.stop_event.set()
        sampler.join()
        run.wait(timeout=300, verbose=False)
        return {
            "calls": calls,
            "points": calls * len(data),
            "acked": run.acknowledged_points - len(data),
            "blocked_after": blocked_after,
            "points_before_block": calls_before_block * len(data),
            "longest_call": longest,
            "rss_before_kb": rss_before,
            "rss_peak_kb": sampler.peak_kb,
        }
    run.close(timeout=120)
    return {"ok": True}


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "ingest":
        serve(Ingest())
        return
    state: dict[str, Any] = {}
    if mode == "cost":
        serve(lambda command: cost(command, state))
    elif mode == "latency":
        serve(lambda command: latency(command, state))
    elif mode == "paired":
        serve(lambda command: paired(command, state))
    elif mode == "stall":
        serve(lambda command: stall(command, state))
    else:
        raise SystemExit(f"unknown mode {mode!r}; use ingest, cost, latency, paired or stall")


if __name__ == "__main__":
    main(sys.argv[1:])
