"""`stepstream sync [PATH ...]`: upload runs from the local spool (offline runs, and what a
run could not deliver before it ended), exactly once, in log order.

Safe to run twice or to interrupt: a spool file is locked while it is uploaded (a second
sync, or the live trainer, makes it report the file busy), every batch keeps its writer ID
and sequence number, and entries are deleted only once the service answered them. The
protocol: docs/spool.md.
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from stepstream.v1 import runs_pb2

from .._client import RunClient
from .._exceptions import RPCError
from .._operations import Operation
from .._sender import Sender
from .._spool import SpoolBusy, SpoolError, SpoolFile, SpoolGone, find_spools, spool_root
from .._targets import resolve_target
from .._types import IngestError
from . import _connection
from ._output import FAILED, OK, UNREACHABLE

_PARENT_MISSING = frozenset({"RUN_NOT_FOUND", "INCARNATION_NOT_FOUND", "PARENT_NOT_FOUND"})


def register(commands: Any) -> None:
    sync = commands.add_parser(
        "sync", help="upload runs logged offline (the local spool), exactly once"
    )
    _connection.add_options(sync)
    sync.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="spool files, run directories or spool roots (default: $STEPSTREAM_DIR, else "
        "./.stepstream-client)",
    )
    sync.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to keep reconnecting before leaving a run for the next sync (default 60)",
    )
    sync.set_defaults(handler=sync_command)


@dataclass
class Outcome:
    path: Path
    run: str = ""
    status: str = "uploaded"  # uploaded, partial, gone, busy, error, unreachable
    sent: int = 0
    rejected: int = 0
    left: int = 0
    notes: list[str] = field(default_factory=list)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)

    def line(self) -> str:
        what = self.run or str(self.path)
        text = f"{what}: {self.status}; {self.sent:,} points sent, {self.rejected:,} rejected"
        if self.reasons:
            text += " (" + ", ".join(f"{r}: {n:,}" for r, n in sorted(self.reasons.items())) + ")"
        if self.left:
            text += f"; {self.left:,} entries left in {self.path}"
        elif self.status == "uploaded":
            text += "; spool removed"
        for note in self.notes:
            text += f"\n    {note}"
        return text


def sync_command(args: argparse.Namespace) -> int:
    roots = args.paths or [spool_root()]
    files = find_spools(roots)
    if not files:
        print(f"nothing to sync in {', '.join(map(str, roots))}")
        return OK
    outcomes: list[Outcome] = []
    for path in files:
        if outcomes and outcomes[-1].status == "unreachable":
            outcome = Outcome(path, status="unreachable", notes=["not tried: unreachable"])
        else:
            outcome = sync_file(path, args)
        outcomes.append(outcome)
        print(outcome.line(), flush=True)
    if any(o.status == "unreachable" for o in outcomes):
        return UNREACHABLE
    if any(o.status not in ("uploaded", "gone") or o.rejected for o in outcomes):
        return FAILED
    return OK


def sync_file(path: Path, args: argparse.Namespace) -> Outcome:
    outcome = Outcome(path)
    try:
        spool = SpoolFile(path)
    except SpoolGone as exc:
        outcome.status = "gone"
        outcome.notes.append(str(exc))
        return outcome
    except SpoolBusy as exc:
        outcome.status = "busy"
        outcome.notes.append(str(exc))
        return outcome
    except SpoolError as exc:
        outcome.status = "error"
        outcome.notes.append(str(exc))
        return outcome
    outcome.run = f"{spool.project or '(default project)'}/{spool.run_id}"
    try:
        if not _first_entries(spool, args, outcome):
            outcome.left = spool.counts()[0]
            spool.close(remove_if_empty=False)
            return outcome
    except BaseException:
        spool.close(remove_if_empty=False)
        raise
    return _drain(spool, args, outcome)


def _first_entries(spool: SpoolFile, args: argparse.Namespace, outcome: Outcome) -> bool:
    """Send a spooled CreateRun (or check a RewindRun's run exists); False to stop here."""
    head = spool.entries(limit=1)
    if not head or head[0].method not in ("CreateRun", "RewindRun"):
        return True
    entry = head[0]
    with RunClient(resolve_target(_connection.address(args))) as client:
        try:
            if entry.method == "RewindRun":
                client.get_run(spool.project, spool.run_id, timeout=args.timeout)
                return True
            request = runs_pb2.CreateRunRequest.FromString(entry.body)
            response = client.create_run(request, timeout=args.timeout)
            if response.parent_fallback:
                outcome.notes.append(
                    f"fork parent {request.fork_run_id!r} did not exist; the service forked "
                    "from the experiment's head run instead"
                )
        except RPCError as exc:
            if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                outcome.status = "unreachable"
                outcome.notes.append(f"the service did not answer: {exc.message}")
                return False
            if exc.reason == "RUN_ALREADY_EXISTS":
                outcome.notes.append("the run already existed (created by an earlier sync)")
            elif exc.reason in _PARENT_MISSING or exc.code is grpc.StatusCode.NOT_FOUND:
                outcome.status = "error"
                outcome.notes.append(_missing(entry.method, entry.body, exc))
                return False
            else:
                outcome.status = "error"
                outcome.notes.append(f"{entry.method} was rejected: {exc}")
                return False
    spool.delete(entry.pos)
    return True


def _missing(method: str, body: bytes, exc: RPCError) -> str:
    if method == "RewindRun":
        request = runs_pb2.RewindRunRequest.FromString(body)
        return (
            f"the run to rewind, {request.run_id!r}, does not exist on the service "
            f"({exc.reason or exc.code.name}); nothing was uploaded"
        )
    create = runs_pb2.CreateRunRequest.FromString(body)
    parent = create.fork_run_id or create.fork_incarnation_id
    if parent:
        return (
            f"the fork parent {parent!r} does not exist on the service "
            f"({exc.reason or exc.code.name}: {exc.message}); nothing was uploaded"
        )
    return f"CreateRun failed: {exc}; nothing was uploaded"


def _drain(spool: SpoolFile, args: argparse.Namespace, outcome: Outcome) -> Outcome:
    total = spool.counts()[1]
    lock = threading.Lock()
    first: dict[str, IngestError] = {}

    def report(error: IngestError) -> None:
        with lock:
            outcome.reasons[error.reason] += error.count or 1
            first.setdefault(error.reason, error)

    sender = Sender(
        address=resolve_target(_connection.address(args)),
        project=spool.project,
        run_id=spool.run_id,
        writer_id=spool.writer_id,
        report=report,
        max_queued_points=1,
        max_batch_points=100_000,
        max_inflight_batches=32,
        connect_timeout=min(args.timeout, 10.0),
        reconnect_timeout=args.timeout,
        on_full="spill",
        on_unavailable="offline",
        spool=spool,
        next_sequence=spool.last_sequence() + 1,
    )
    sender._stop_deadline = 0.0  # unreachable past --timeout: stop then, no second window
    sender.start()
    stop = sender.submit(Operation("stop", stop=True))
    shown = 0.0
    while not stop.done():
        time.sleep(0.1)
        now = time.monotonic()
        if now - shown >= 1.0 and sys.stderr.isatty():
            stats = sender.stats()
            done = stats.acknowledged_points + stats.rejected_points
            sys.stderr.write(f"\r{outcome.run}: {done:,} of {total:,} points answered")
            sys.stderr.flush()
            shown = now
    if shown:
        sys.stderr.write("\n")
    sender.join(30)
    stats = sender.stats()
    outcome.sent = stats.acknowledged_points
    outcome.rejected = stats.rejected_points
    outcome.reasons.pop("NOT_REPEATED", None)
    for reason, error in sorted(first.items()):
        outcome.notes.append(f"first {reason}: {error.message}")
    if sender.fatal is not None:
        outcome.status = "error"
        outcome.notes.append(f"stopped: {sender.fatal}")
    elif stats.offline:
        outcome.status = "unreachable"
    if spool_path_exists(spool.path):
        try:
            with SpoolFile(spool.path) as again:
                outcome.left = again.counts()[0]
        except SpoolError:
            outcome.left = 0
        if outcome.left and outcome.status == "uploaded":
            outcome.status = "partial"
    return outcome


def spool_path_exists(path: Path) -> bool:
    return path.is_file()
