"""`python -m bench [--quick] [--reps N] [--cases a,b,...] [--no-mlflow] [--no-trackio]
[--no-postgres]`: run the benchmark, print one markdown table and write it to
bench/results/latest.md."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import cases, mlflow_env, trackio_env
from bench.procs import REPO_ROOT, BenchError
from bench.table import Row, report
from bench.targets import probe_postgres

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "latest.md"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repetition")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    parser.add_argument(
        "--cases",
        default="all",
        help="comma-separated: a,b,c,d (ingest shapes; d includes memory), node (shape b via "
        "client-node), latency, cost, trackio (Trackio's workloads), stall, reads, web, hostile,"
        " security (TLS + tokens), spool; growth (fills a store to 100 M points; not part of"
        " all); default all",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="skip the MLflow baseline")
    parser.add_argument("--no-trackio", action="store_true", help="skip the Trackio baseline")
    parser.add_argument(
        "--no-postgres",
        action="store_true",
        help="skip the PostgreSQL targets of shapes a, b, c (1 and 2 replicas)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the table")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return parser.parse_args(argv)


def interpreter() -> str:
    """sys.executable, relative to the repository when it lives there (.venv/bin/python)."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(REPO_ROOT))
    except ValueError:
        return str(exe)


def code_version() -> str:
    """The commit measured, and whether service/, client/ or protos/ had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "service", "client", "protos"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown (no git)"
    return f"git {head or 'unknown'}" + (
        " with uncommitted changes in service/client/protos" if dirty else ""
    )


def load_text(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    reps = args.reps or (1 if args.quick else 3)
    shapes = cases.shapes(args.quick)
    available = cases.register(shapes)
    chosen = (
        [c for c in available if c not in cases.OPT_IN]
        if args.cases == "all"
        else [c.strip() for c in args.cases.split(",")]
    )
    unknown = [c for c in chosen if c not in available]
    if unknown:
        print(f"unknown case(s) {unknown}; choose from {list(available)}", file=sys.stderr)
        return 2
    chosen = [c for c in available if c in chosen]  # dependency order
    command = shlex.join([interpreter(), "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    code_at_start = code_version()
    work_dir = Path(tempfile.mkdtemp(prefix="stepstream-bench-"))
    started = time.monotonic()
    load_at_start = os.getloadavg()
    mlflow_server = None
    reason = ""
    version = ""
    needs_mlflow = any(c in chosen for c in ("a", "b", "c", "d", "cost"))
    if args.no_mlflow:
        reason = "skipped: --no-mlflow"
    elif not needs_mlflow:
        reason = "not used by the chosen cases"
    elif needs_mlflow:
        try:
            version = mlflow_env.ensure_installed(work_dir / "mlflow-install.log")
            mlflow_server = mlflow_env.MlflowServer(work_dir)
        except mlflow_env.MlflowUnavailable as exc:
            reason = f"MLflow unavailable: {exc}"
            print(f"bench: {reason}", file=sys.stderr)
    trackio_reason = trackio_version = ""
    if args.no_trackio:
        trackio_reason = "skipped: --no-trackio"
    elif "trackio" in chosen:
        try:
            trackio_version = trackio_env.ensure_installed(work_dir / "trackio-install.log")
        except trackio_env.TrackioUnavailable as exc:
            trackio_reason = f"Trackio unavailable: {exc}"
            print(f"bench: {trackio_reason}", file=sys.stderr)
    pg_reason = pg_text = ""
    if args.no_postgres:
        pg_reason = "skipped: --no-postgres"
    elif any(c in chosen for c in (*cases.PG_SHAPES, "trackio")):
        try:
            pg_text = probe_postgres()
        except BenchError as exc:
            pg_reason = f"PostgreSQL unavailable: {exc}"
            print(f"bench: {pg_reason}", file=sys.stderr)
    ctx = cases.Context(
        reps, args.quick, work_dir, mlflow_server, reason, pg_reason, trackio_reason=trackio_reason
    )
    ctx.out_dir = args.out.parent
    rows: list[Row] = []
    failed = False
    try:
        for name in chosen:
            ctx.progress(f"case {name} ...")
            try:
                rows += available[name](ctx)
            except Exception as exc:  # one broken case must not hide the others' figures
                failed = True
                ctx.progress(f"case {name} failed: {exc}")
                rows.append(cases.error_row(name, exc))
    finally:
        if mlflow_server is not None:
            mlflow_server.stop()
    header: list[str] = [
        f"{reps} repetition(s) per case{' (quick mode: tiny shapes)' if args.quick else ''}; "
        "values are medians, ratios compare medians measured in this run; "
        f"total {time.monotonic() - started:.0f} s; load average (1/5/15 min) "
        f"{load_text(load_at_start)} at the start, {load_text(os.getloadavg())} at the end "
        "(anything else running on these cores shares them with the benchmark)",
        "",
        "stepstream (SQLite), and every row that names no store: `stepstream serve` with "
        "defaults (embedded Redis, SQLite store, "
        "synchronous=FULL), fresh --data-dir per case; no-op sink: bench/noop_sink.py; "
        + (
            f"MLflow {version}: `mlflow server` with a SQLite backend store"
            if mlflow_server is not None
            else f"MLflow: n/a ({reason})"
        ),
    ]
    if "trackio" in chosen:
        header += [
            "",
            (
                f"Trackio {trackio_version}: `trackio show` (its self-hosted server, SQLite files "
                "in a fresh TRACKIO_DIR) on loopback, fed by trackio.init(server_url=...) / "
                "trackio.log / trackio.finish from bench/.trackio-venv; its rate counts the "
                "points its database holds after finish() returned"
                if not trackio_reason
                else f"Trackio: n/a ({trackio_reason})"
            ),
        ]
    if pg_text:
        header += [
            "",
            f"stepstream (PostgreSQL, N replicas), shapes {', '.join(cases.PG_SHAPES)}: N x "
            "`stepstream serve --store postgresql://… --redis-url redis://…` (own --data-dir "
            f"and port each) on one fresh database of the local {pg_text} and one private "
            "redis-server (persistence off), per case; writer process i logs to replica "
            "i % N, so a one-process shape through 2 replicas loads the first replica only. "
            "Every target of a shape (SQLite, PostgreSQL x1, x2, no-op) is measured in turn, "
            "repetition by repetition, all running throughout (the idle ones too), on the same "
            "cores as the PostgreSQL server itself.",
        ]
    elif pg_reason and any(c in chosen for c in cases.PG_SHAPES):
        header += ["", f"stepstream (PostgreSQL): n/a ({pg_reason})"]
    code_at_end = code_version()
    header.insert(
        0,
        f"code: {code_at_start}"
        if code_at_end == code_at_start
        # Drivers and servers import the editable installs when they start: a commit landing
        # mid-run means later cases measured other code.
        else f"code: CHANGED DURING THE RUN: {code_at_start} at the start, {code_at_end} at the end",
    )
    text = report(command, header, rows, [])
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"bench: table written to {args.out}", file=sys.stderr)
    if args.keep:
        print(f"bench: logs kept in {work_dir}", file=sys.stderr)
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
