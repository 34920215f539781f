"""What both integrations share: one run for every rank of a distributed job, configs made
plain, and the rewind a resumed checkpoint asks for.

Ranks: rank 0 creates the run (or forks or rewinds it); every other rank attaches to it once
it exists and may log its own series. A run ID reaches the other ranks through
$STEPSTREAM_RUN_ID: rank 0 sets it when it picks an ID itself, before a launcher (Lightning's
DDP, `accelerate launch` spawned from the script) starts the other ranks; with a launcher that
starts every rank on its own (torchrun), give `run_id` explicitly.
"""

from __future__ import annotations

import importlib
import math
import os
import time
import uuid
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from .._exceptions import MissingExtraError, RPCError
from .._run import Run

RUN_ID_ENV = "STEPSTREAM_RUN_ID"
# How long a rank other than 0 waits for rank 0 to create the run.
ATTACH_TIMEOUT = 120.0


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import an optional framework, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(feature, extra, module) from None


def global_rank() -> int:
    """This process's rank, from the variables every launcher sets (0 when there are none)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def shared_run_id(run_id: str | None, rank: int) -> str:
    """The run ID every rank uses: the one given, else rank 0's (see the module docstring)."""
    if run_id is None:
        if rank == 0:
            run_id = f"run-{uuid.uuid4().hex[:12]}"
            os.environ[RUN_ID_ENV] = run_id
        else:
            run_id = os.environ.get(RUN_ID_ENV)
            if run_id is None:
                raise RuntimeError(
                    f"rank {rank} cannot tell which run to log to: give run_id (the same on "
                    f"every rank) or set ${RUN_ID_ENV}"
                )
    return run_id


def plain(value: Any) -> Any:
    """A config value as JSON-like data: mappings and sequences recursively, numbers, strings,
    booleans and None as they are, anything else (a dtype, an enum, a path) as its str."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    item = getattr(value, "item", None)  # a numpy or torch scalar
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return plain(item())
    return str(value)


def scalar(value: Any) -> float | None:
    """A metric as a float (tensors and numpy scalars included); None if it is not a number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "numel", lambda: 1)() == 1:
        result = item()
        return float(result) if isinstance(result, (int, float)) else None
    return None


def open_run(
    run_id: str,
    rank: int,
    *,
    rewind_to: float | None = None,
    fork_from: str | None = None,
    resume_from: str | None = None,
    config: Mapping[str, Any] | None = None,
    **options: Any,
) -> Run:
    """Rank 0: create, fork, rewind or attach to `run_id`. Other ranks: attach once it exists.

    `rewind_to` (a resumed checkpoint's step) becomes `resume_from="<run_id>?_step=<N>"`.
    """
    if rewind_to is not None and resume_from is None and fork_from is None:
        resume_from = f"{run_id}?_step={rewind_to:g}"
    if rank != 0:
        _wait_exists(run_id, options.get("project"), options.get("address"))
        keep = {k: options[k] for k in ("project", "address") if k in options}
        return Run(run_id, resume=True, **keep)
    if resume_from is not None:
        run = Run(run_id, resume_from=resume_from, config=config, **options)
        if run.state != "RUNNING":  # a rewind keeps the state; a resumed trainer logs again
            run.resume()
        return run
    if fork_from is not None:
        return Run(run_id, fork_from=fork_from, config=config, **options)
    return Run(run_id, resume=True, config=config, **options)  # resumes a run not RUNNING


def _wait_exists(run_id: str, project: str | None, address: Any) -> None:
    from .._client import get_run  # a read: never creates the run

    deadline = time.monotonic() + ATTACH_TIMEOUT
    pause = 0.05
    while True:
        try:
            get_run(run_id, project=project, address=address)
            return
        except RPCError as exc:
            if exc.reason != "RUN_NOT_FOUND" or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
