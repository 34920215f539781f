"""Case 10: what TLS and `--auth required` cost. Shapes (a) and (b) and the acknowledgement
latency of one call in a closed loop over a plain and a secured run in turn (log, wait for
its acknowledgement, the other side, repeat: nothing queues, and each pair shares the
machine's load of its moment, so the per-pair difference is what TLS and the token check add
to one acknowledgement); the rates alternate, repetition by repetition, between plain
`stepstream serve` and one with `--tls-cert/--tls-key --auth required` (certificates made by
trustme, a write token from `stepstream tokens create`), so both are measured under the same
load. The order flips every repetition (plain first, then secured first, ...), so a load that
rises or falls through the run, or whatever the first of a pair leaves behind, is not charged
to one side. Beside the rates, the CPU the service and the driver spend per point (from
/proc, around the timed part) shows the cost with less of the machine's other load in it."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench import table
from bench.cases import Context, Shape, aggregate_rate
from bench.procs import BenchError, DriverPool, ServerProcess, bench_env, free_port, python_module
from bench.table import Row, median
from bench.targets import Target, start_stepstream, stepstream_command

MAX_RATE_COST = 0.10  # secured throughput at least 90% of plain
MAX_P50_ADDED = 0.001  # seconds added to the p50 acknowledgement latency
SERIES_OF = {"a": 10, "b": 1000}
# Closed-loop call pairs per repetition: one (b) call costs the service ~25 ms of CPU.
SAMPLES = {"a": 600, "b": 150}
QUICK_SAMPLES = {"a": 100, "b": 30}


def start_secured(work_dir: Path) -> tuple[Target, dict[str, Any]]:
    """`stepstream serve` with TLS and --auth required; the Run options that reach it."""
    import trustme

    data_dir = Path(tempfile.mkdtemp(prefix="stepstream-secured-", dir=work_dir))
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {
        name: data_dir.with_name(f"{data_dir.name}-{name}.pem") for name in ("ca", "crt", "key")
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["crt"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    made = subprocess.run(
        [*stepstream_command(), "tokens", "create", "--project", "*", "--role", "write",
         "--name", "bench", "--data-dir", str(data_dir)],
        capture_output=True, text=True, env=bench_env(), timeout=120,
    )  # fmt: skip
    if made.returncode != 0:
        raise BenchError(f"stepstream tokens create failed: {made.stderr[-1000:]}")
    options = {"root_certificates": str(paths["ca"]), "token": made.stdout.strip()}
    address = f"127.0.0.1:{free_port()}"
    server = ServerProcess(
        "stepstream serve (TLS, --auth required)",
        [*stepstream_command(), "serve", "--address", address, "--data-dir", str(data_dir),
         "--log-level", "WARNING", "--tls-cert", str(paths["crt"]), "--tls-key",
         str(paths["key"]), "--auth", "required"],
        data_dir.with_suffix(".log"),
        env=None,
    )  # fmt: skip
    try:
        wait_secured(server, address, options)
    except BaseException:
        server.stop()
        raise
    return Target("secured", server, address, title="stepstream (TLS + --auth required)"), options


def wait_secured(server: ServerProcess, address: str, options: dict[str, Any]) -> None:
    import stepstream

    deadline = time.monotonic() + 60
    while True:
        if not server.alive():
            raise BenchError(f"{server.name} exited early:\n{server.log_tail()}")
        try:
            stepstream.list_runs(address=address, **options)
            return
        except stepstream.RPCError:
            if time.monotonic() > deadline:
                raise BenchError(f"{server.name} at {address} did not answer") from None
            time.sleep(0.1)


@contextmanager
def plain_and_secured(ctx: Context) -> Iterator[list[tuple[Target, dict[str, Any]]]]:
    with ExitStack() as stack:
        plain = start_stepstream(ctx.work_dir)
        stack.callback(plain.stop)
        secured, options = start_secured(ctx.work_dir)
        stack.callback(secured.stop)
        yield [(plain, {}), (secured, options)]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (all their threads) so far, from /proc."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def in_pairs(targets: list[Any], rep: int) -> list[Any]:
    """The targets in the order of repetition `rep`: flipped every other one."""
    return targets if rep % 2 == 0 else targets[::-1]


def ingest_rate(
    pool: DriverPool, target: Target, options: dict[str, Any], shape: Shape, tag: str
) -> tuple[float, float, float]:
    """Points per second, and the service's and the driver's CPU microseconds per point."""
    pool.send(
        {
            "cmd": "prepare",
            "address": target.address,
            "series": shape.series,
            "steps": shape.steps,
            "run_ids": [f"{tag}-{j}" for j in range(shape.runs_per_proc)],
            "run_options": options,
        }
    )
    pool.collect()
    server, drivers = [target.server.pid], [proc.pid for proc in pool.procs]
    server0, drivers0 = cpu_seconds(server), cpu_seconds(drivers)
    results = pool.command({"cmd": "go"})
    server_cpu, driver_cpu = cpu_seconds(server) - server0, cpu_seconds(drivers) - drivers0
    pool.command({"cmd": "finish"})
    rate, acked, logged = aggregate_rate(results)
    if acked != logged:
        raise BenchError(f"{target.label} {tag}: {acked:,} of {logged:,} points acknowledged")
    return rate, server_cpu * 1e6 / logged, driver_cpu * 1e6 / logged


def security(ctx: Context, shapes: dict[str, Shape]) -> list[Row]:
    rows: list[Row] = []
    with plain_and_secured(ctx) as targets:
        for key in ("a", "b"):
            rows += security_rows(ctx, shapes[key], targets)
    return rows


def security_rows(
    ctx: Context, shape: Shape, targets: list[tuple[Target, dict[str, Any]]]
) -> list[Row]:
    rows: list[Row] = []
    key = shape.key
    rates: dict[str, list[float]] = {"stepstream": [], "secured": []}
    cpus: dict[str, list[tuple[float, float]]] = {"stepstream": [], "secured": []}
    p50s: dict[str, list[float]] = {"stepstream": [], "secured": []}
    with DriverPool(
        f"security-{key}", [python_module("bench.driver", "ingest")], ctx.work_dir
    ) as pool:
        for rep in range(ctx.reps):
            for target, options in in_pairs(targets, rep):
                tag = f"sec-{key}-{target.label}-{rep}"
                rate, server_us, driver_us = ingest_rate(pool, target, options, shape, tag)
                rates[target.label].append(rate)
                cpus[target.label].append((server_us, driver_us))
                ctx.progress(
                    f"security {shape.title} {target.label} rep {rep + 1}: {rate:,.0f} pts/s;"
                    f" CPU per point: service {server_us:.3f} µs, driver {driver_us:.3f} µs"
                )
    samples = (QUICK_SAMPLES if ctx.quick else SAMPLES)[key]
    diffs: list[float] = []  # per repetition: the median of secured - plain over call pairs
    with DriverPool(
        f"security-lat-{key}", [python_module("bench.driver", "paired")], ctx.work_dir
    ) as pool:
        for rep in range(ctx.reps):
            sides = [
                {
                    "address": target.address,
                    "run_id": f"sec-lat-{key}-{target.label}-{rep}",
                    "run_options": options,
                }
                for target, options in targets
            ]
            pool.command({"cmd": "prepare", "sides": sides, "keys": SERIES_OF[key]})
            result = pool.command({"cmd": "go", "samples": samples})[0]
            pool.command({"cmd": "finish"})
            for (target, _), p50 in zip(targets, result["p50"], strict=True):
                p50s[target.label].append(float(p50))
            diffs.append(float(result["diff_p50"]))
            ctx.progress(
                f"security latency ({key}) rep {rep + 1}: closed-loop p50 plain"
                f" {result['p50'][0] * 1000:.2f} ms, secured {result['p50'][1] * 1000:.2f} ms;"
                f" per-pair difference p50 {result['diff_p50'] * 1000:+.3f} ms over"
                f" {result['samples']} pairs"
            )
    plain_rate, secured_rate = median(rates["stepstream"]), median(rates["secured"])
    plain_p50, secured_p50 = median(p50s["stepstream"]), median(p50s["secured"])
    assert plain_rate and secured_rate and plain_p50 is not None and secured_p50 is not None
    paired = median(diffs)
    assert paired is not None
    same_run = (
        "measured alternately with plain stepstream in this run, order flipped every repetition"
    )

    def cpu_note(which: int, what: str) -> str:
        secured = median([c[which] for c in cpus["secured"]])
        plain = median([c[which] for c in cpus["stepstream"]])
        assert secured is not None and plain is not None
        ratio = f"ratio {secured / plain:.2f}" if plain > 0 else "too short to count"
        return f"{what} CPU per point secured {secured:.3f} µs, plain {plain:.3f} µs ({ratio})"

    rows.append(
        Row(
            f"10. ingest {shape.title} with TLS + --auth required (no-op column: plain stepstream)",
            table.rate,
            secured_rate,
            plain_rate,
            target=f"≥ {1 - MAX_RATE_COST:.0%} of plain",
            met=secured_rate >= (1 - MAX_RATE_COST) * plain_rate,
            notes=[
                f"{same_run}; per-repetition pts/s: secured "
                + ", ".join(f"{r:,.0f}" for r in rates["secured"])
                + "; plain "
                + ", ".join(f"{r:,.0f}" for r in rates["stepstream"]),
                "medians: " + cpu_note(0, "service") + "; " + cpu_note(1, "driver"),
            ],
        )
    )
    rows.append(
        Row(
            f"10. ack latency p50, shape ({key}), TLS + --auth required (no-op column: plain)",
            table.millis,
            secured_p50,
            plain_p50,
            target=f"< {MAX_P50_ADDED * 1000:g} ms above plain (paired)",
            met=paired < MAX_P50_ADDED,
            notes=[
                f"closed loop over two runs, one on each service: one call of {SERIES_OF[key]}"
                " series on each in turn (order flipped every pair), each waiting for its"
                f" acknowledgement; {samples} pairs per repetition; met is judged on the median"
                " over repetitions of the per-pair difference (secured minus plain), which both"
                " sides' samples share the load of; per-repetition p50 ms: secured "
                + ", ".join(f"{p * 1000:.2f}" for p in p50s["secured"])
                + "; plain "
                + ", ".join(f"{p * 1000:.2f}" for p in p50s["stepstream"]),
                "per-pair difference p50 per repetition (ms): "
                + ", ".join(f"{d * 1000:+.3f}" for d in diffs)
                + f"; median {paired * 1000:+.3f} ms",
            ],
        )
    )
    return rows
