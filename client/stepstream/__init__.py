"""stepstream: stream ML experiment metrics to a stepstream service.

    import stepstream

    with stepstream.Run("my-run", experiment_name="lr-sweep", config={"lr": 3e-4}) as run:
        for step in range(1000):
            run.log_metrics({"train/loss": loss, "train/acc": acc}, step=step)

Log calls never wait on the network; a background thread batches and streams the points,
reconnects and re-sends when the connection fails, and the service applies every batch exactly
once. Runs fork (`Run(fork_from="<run_id>?_step=N")`, `fork_run_id=`/`fork_step=`) and rewind
(`Run(resume_from="<run_id>?_step=N")`). `stepstream.get_run(run_id)` reads a run without
changing it (a `RunHandle`). See `Run` for the details and
`stepstream._exceptions` for the errors.
"""

from ._client import list_runs, list_series, read_series
from ._exceptions import (
    InvalidArgumentError,
    MissingExtraError,
    RPCError,
    RunClosedError,
    StepstreamError,
    WaitTimeoutError,
)
from ._export import export_run, load_export
from ._handle import RunHandle, get_run
from ._run import Run
from ._tokens import TokenInfo, create_token, list_tokens, revoke_token
from ._types import Incarnation, IngestError, RunInfo, SenderStats, Series, SeriesSummary

__version__ = "0.1.0"

__all__ = [
    "Incarnation",
    "IngestError",
    "InvalidArgumentError",
    "MissingExtraError",
    "RPCError",
    "Run",
    "RunClosedError",
    "RunHandle",
    "RunInfo",
    "SenderStats",
    "Series",
    "SeriesSummary",
    "StepstreamError",
    "TokenInfo",
    "WaitTimeoutError",
    "create_token",
    "export_run",
    "get_run",
    "list_runs",
    "list_series",
    "list_tokens",
    "load_export",
    "read_series",
    "revoke_token",
]
