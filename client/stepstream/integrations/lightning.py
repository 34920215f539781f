"""PyTorch Lightning: `StepstreamLogger`, a Lightning logger that streams to stepstream.

    from lightning.pytorch import Trainer
    from stepstream.integrations.lightning import StepstreamLogger

    trainer = Trainer(logger=StepstreamLogger("my-run", experiment_name="sweep"))

- Hyperparameters (`save_hyperparameters()`) become the run's config; metrics are logged at
  Lightning's step; `finalize` ends the run FINISHED, or FAILED when training failed.
- `fork_from` / `resume_from` ("<run_id>?_step=<N>") are passed to the Run. Resuming a fit
  from a checkpoint (`trainer.fit(model, ckpt_path=...)`) rewinds the run to the
  checkpoint's step, so the points the lost stretch logged after it are archived and the
  resumed training logs above the cut.
- Distributed (DDP): rank 0 creates the run; every rank gets the same Run as
  `logger.experiment` and may log its own series; Lightning's own metrics are logged by rank
  0, like every Lightning logger (see `stepstream.integrations._common` for the run ID).

Needs the `lightning` extra (`pip install 'stepstream[lightning]'`).
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Iterable, Mapping
from typing import Any

from .._run import Run
from . import _common

_pl = _common.require("lightning.pytorch", "lightning", "StepstreamLogger")
Logger: Any = _pl.loggers.Logger
Callback: Any = _pl.Callback


class StepstreamLogger(Logger):  # type: ignore[misc]
    """A Lightning logger writing one stepstream run (see the module docstring).

    Args:
        run_id: the run (the same on every rank); None: rank 0 picks one.
        experiment_name, project, address, tags, description: as for `stepstream.Run`.
        fork_from, resume_from: "<run_id>?_step=<N>", as for `stepstream.Run`.
        prefix: put before every metric name Lightning logs (e.g. "pl/").
        run_options: any other `stepstream.Run` keyword (on_error, max_queued_points, ...).
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        experiment_name: str | None = None,
        project: str | None = None,
        address: Any = None,
        tags: Iterable[str] | None = None,
        description: str | None = None,
        fork_from: str | None = None,
        resume_from: str | None = None,
        prefix: str = "",
        **run_options: Any,
    ) -> None:
        super().__init__()
        self._rank = _common.global_rank()
        self._run_id = _common.shared_run_id(run_id, self._rank)
        self._experiment_name = experiment_name
        self._fork_from = fork_from
        self._resume_from = resume_from
        self._prefix = prefix
        self._options: dict[str, Any] = dict(run_options)
        for key, value in (
            ("experiment_name", experiment_name),
            ("project", project),
            ("address", address),
            ("tags", tags),
            ("description", description),
        ):
            if value is not None:
                self._options[key] = value
        self._config: dict[str, Any] = {}
        self._run: Run | None = None
        self._rewind_to: float | None = None

    # ---- what Lightning asks of a logger ---------------------------------------------------

    @property
    def name(self) -> str:
        return self._experiment_name or "stepstream"

    @property
    def version(self) -> str:
        return self._run_id

    @property
    def experiment(self) -> Run:
        """The stepstream Run, on every rank (opened on first use)."""
        if self._run is None:
            self._run = _common.open_run(
                self._run_id,
                self._rank,
                rewind_to=self._rewind_to,
                fork_from=self._fork_from,
                resume_from=self._resume_from,
                config=self._config or None,
                **self._options,
            )
        return self._run

    def log_hyperparams(
        self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        if self._rank != 0:  # like every Lightning logger: rank 0 logs Lightning's own
            return
        if isinstance(params, Namespace):
            params = vars(params)
        config = _common.plain(dict(params))
        if self._run is None:
            self._config.update(config)  # sent when the run opens (maybe as a rewind)
        else:
            self._run.log_configs(config)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        # Called once per fit, before Lightning restores a checkpoint's loops: the moment to
        # learn that this fit resumes one, and to rewind the run once the step is restored.
        trainer = getattr(model, "_trainer", None)
        if self._rank != 0 or trainer is None:
            return
        if trainer.ckpt_path is not None and trainer.state.fn == "fit":
            trainer.callbacks.append(_RewindOnResume(self))
        else:
            self.experiment  # noqa: B018 - open it now: the other ranks wait for it

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self._rank != 0:
            return
        values = {}
        for name, value in metrics.items():
            number = _common.scalar(value)
            if number is not None:
                values[self._prefix + name] = number
        if values:
            self.experiment.log_metrics(values, step=step)

    def save(self) -> None:
        """Points stream continuously; nothing to save."""

    def finalize(self, status: str) -> None:
        """End the run: FINISHED on success, FAILED otherwise (rank 0; other ranks detach)."""
        run, self._run = self._run, None
        if run is None:
            return
        if self._rank != 0:
            run.detach()
            return
        if status == "success":
            run.close()
        else:
            run.fail(f"Lightning training ended with status {status!r}")

    # ---- resuming from a checkpoint ----------------------------------------------------------

    def _rewind(self, step: float) -> None:
        if self._fork_from is not None or self._resume_from is not None:
            return  # the user said where the run comes from
        if self._run is not None:  # opened before the checkpoint was restored
            self._run.detach()
            self._run = None
        self._rewind_to = step
        self.experiment  # noqa: B018 - open it now, rewound


class _RewindOnResume(Callback):  # type: ignore[misc]
    """Rewinds the logger's run to the step a resumed checkpoint restored (added by
    StepstreamLogger.log_graph only for a fit that resumes one)."""

    def __init__(self, logger: StepstreamLogger) -> None:
        self._logger = logger

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # The checkpoint was saved after `global_step` optimizer steps, whose batches logged at
        # steps 0 .. global_step - 1; the resumed fit logs from global_step on.
        self._logger._rewind(float(trainer.global_step - 1))
        trainer.callbacks.remove(self)
