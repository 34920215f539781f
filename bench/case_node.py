"""Case 1n: shape (b) through the TypeScript client (client-node/), durable, against the same
`stepstream serve` as the Python client, the two measured alternately, repetition by
repetition; the row gives the Node figure and its ratio to Python's."""

from __future__ import annotations

import json
import subprocess

from bench import table
from bench.case_ingest import ingest_rep
from bench.cases import SHAPE_B_MIN_RATE, Context, Shape
from bench.nodejs import PACKAGE, node_env, npm_ci
from bench.nodejs import run as npm_run
from bench.procs import BenchError, DriverPool, python_module
from bench.table import Row, median
from bench.targets import start_stepstream


def node_rep(env: dict[str, str], address: str, run_id: str, shape: Shape) -> float:
    """One repetition of `shape` (one process, one run) through client-node: points/s."""
    argv = ["node", "bench/ingest.mjs", address, run_id, str(shape.series), str(shape.steps)]
    done = subprocess.run(
        argv, cwd=PACKAGE, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"client-node bench failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["acked"] != result["points"]:
        raise BenchError(f"node: {result['acked']:,} of {result['points']:,} points acknowledged")
    return float(result["rate"])


def node_ingest(ctx: Context, shape: Shape) -> list[Row]:
    env = node_env()
    if env is None:
        raise BenchError("no Node.js >= 20 (`make node` installs one into .venv)")
    npm_ci(env)
    npm_run(["npx", "tsc", "-p", "tsconfig.json"], env)
    rates: dict[str, list[float]] = {"node": [], "python": []}
    target = start_stepstream(ctx.work_dir)
    try:
        with DriverPool("node-b", [python_module("bench.driver", "ingest")], ctx.work_dir) as pool:
            for rep in range(ctx.reps):
                rates["node"].append(node_rep(env, target.address, f"node-b-{rep}", shape))
                python, _ = ingest_rep(pool, target, shape, f"python-b-{rep}")
                rates["python"].append(python)
                ctx.progress(
                    f"{shape.title} rep {rep + 1}: node {rates['node'][-1]:,.0f} pts/s, "
                    f"python {python:,.0f} pts/s"
                )
    finally:
        target.stop()
    node, python = median(rates["node"]), median(rates["python"])
    assert node is not None and python is not None
    row = Row(
        f"1n. ingest {shape.title}, durable, via the Node client (client-node Run)",
        table.rate,
        node,
        target=f"≥ {SHAPE_B_MIN_RATE:,} pts/s",
        met=node >= SHAPE_B_MIN_RATE,
    )
    row.notes.append(
        f"Node / Python (stepstream.Run, same service, alternating): {node / python:.2f}x; "
        "per-repetition pts/s: node "
        + ", ".join(f"{r:,.0f}" for r in rates["node"])
        + "; python "
        + ", ".join(f"{r:,.0f}" for r in rates["python"])
    )
    return [row]
