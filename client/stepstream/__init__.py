"""stepstream: stream ML experiment metrics to a stepstream service.

    import stepstream

    with stepstream.Run("my-run", experiment_name="lr-sweep", config={"lr": 3e-4}) as run:
        for step in range(1000):
            run.log_metrics({"train/loss": loss, "train/acc": acc}, step=step)

Log calls never wait on the network; a background thread batches and streams the points,
reconnects and re-sends when the connection fails, and the service applies every batch exactly
once. See `Run` for the details and `stepstream._exceptions` for the errors.
"""

from __future__ import annotations

from ._client import RunClient, resolve_address
from ._exceptions import (
    InvalidArgumentError,
    RPCError,
    RunClosedError,
    StepstreamError,
    WaitTimeoutError,
)
from ._run import Run
from ._types import Incarnation, IngestError, RunInfo, SenderStats, Series, SeriesSummary
from ._validate import check_id, check_name, check_real

__version__ = "0.1.0"

__all__ = [
    "Incarnation",
    "IngestError",
    "InvalidArgumentError",
    "RPCError",
    "Run",
    "RunClosedError",
    "RunInfo",
    "SenderStats",
    "Series",
    "SeriesSummary",
    "StepstreamError",
    "WaitTimeoutError",
    "get_run",
    "list_series",
    "read_series",
]


def get_run(run_id: str, *, project: str | None = None, address: str | None = None) -> RunInfo:
    """Fetch a run's state, tags, config and lineage without opening it for writing."""
    check_id(run_id, "run_id")
    with RunClient(resolve_address(address)) as client:
        return client.get_run(project or "", run_id)


def list_series(
    run_id: str,
    *,
    project: str | None = None,
    address: str | None = None,
    own_points_only: bool = False,
) -> list[SeriesSummary]:
    """Summaries of every series visible in a run, sorted by name."""
    check_id(run_id, "run_id")
    with RunClient(resolve_address(address)) as client:
        return client.list_series(project or "", run_id, own_points_only=own_points_only)


def read_series(
    run_id: str,
    name: str,
    *,
    project: str | None = None,
    address: str | None = None,
    step_min: float | None = None,
    step_max: float | None = None,
    own_points_only: bool = False,
) -> Series:
    """Read one series of a run, in step order (inherited points included by default)."""
    check_id(run_id, "run_id")
    check_name(name, "series name")
    lo = None if step_min is None else check_real(step_min, "step_min")
    hi = None if step_max is None else check_real(step_max, "step_max")
    with RunClient(resolve_address(address)) as client:
        return client.read_series(
            project or "", run_id, name, step_min=lo, step_max=hi, own_points_only=own_points_only
        )
