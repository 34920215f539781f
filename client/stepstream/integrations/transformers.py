"""Hugging Face: `StepstreamCallback`, a `TrainerCallback` that streams a Trainer's logs.

    from transformers import Trainer, TrainingArguments
    from stepstream.integrations.transformers import StepstreamCallback

    trainer = Trainer(model, args, train_dataset=data, callbacks=[StepstreamCallback("my-run")])

or, after `stepstream.integrations.transformers.register()`, `TrainingArguments(report_to=
"stepstream")` (the run then comes from $STEPSTREAM_RUN_ID, $STEPSTREAM_EXPERIMENT and
$STEPSTREAM_PROJECT, all optional).

- The training arguments (and the model's config, when it has one) become the run's config;
  every `on_log` is logged at `state.global_step`, as W&B does: `eval_*` under `eval/`,
  `test_*` under `test/`, the rest under `train/`.
- `trainer.train(resume_from_checkpoint=...)` rewinds the run to the checkpoint's step (the
  lost stretch after it is archived), unless `fork_from`/`resume_from` say otherwise.
- The run ends FINISHED at `on_train_end`; an exception out of training (the Trainer has no
  hook for it: an uncaught one, through `sys.excepthook`, or `fail()`) ends it FAILED.
- Distributed: rank 0 creates the run and logs the Trainer's metrics; every rank may log its
  own series to `callback.run`.

Needs the `transformers` extra (`pip install 'stepstream[transformers]'`).
"""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from .._run import Run
from . import _common

_hf = _common.require("transformers", "transformers", "StepstreamCallback")
TrainerCallback: Any = _hf.TrainerCallback
NAME = "stepstream"
_PREFIXES = (("eval_", "eval/"), ("test_", "test/"))
_training: weakref.WeakSet[StepstreamCallback] = weakref.WeakSet()


class StepstreamCallback(TrainerCallback):  # type: ignore[misc]
    """Logs a Trainer to one stepstream run (see the module docstring).

    Args:
        run_id: the run (the same on every rank); default $STEPSTREAM_RUN_ID, else rank 0
            picks one.
        experiment_name, project, address, tags, description: as for `stepstream.Run`
            (experiment and project default to $STEPSTREAM_EXPERIMENT, $STEPSTREAM_PROJECT).
        fork_from, resume_from: "<run_id>?_step=<N>", as for `stepstream.Run`.
        run_options: any other `stepstream.Run` keyword.
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
        **run_options: Any,
    ) -> None:
        self._rank = _common.global_rank()
        run_id = run_id or os.environ.get(_common.RUN_ID_ENV)
        self._run_id = _common.shared_run_id(run_id, self._rank)
        self._fork_from = fork_from
        self._resume_from = resume_from
        self._options: dict[str, Any] = dict(run_options)
        for key, value in (
            ("experiment_name", experiment_name or os.environ.get("STEPSTREAM_EXPERIMENT")),
            ("project", project or os.environ.get("STEPSTREAM_PROJECT")),
            ("address", address),
            ("tags", tags),
            ("description", description),
        ):
            if value is not None:
                self._options[key] = value
        self.run: Run | None = None

    @property
    def run_id(self) -> str:
        return self._run_id

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.run is not None:  # a second train() on the same Trainer
            self.run.detach()
        config = {"args": _common.plain(args.to_dict())}
        model_config = getattr(kwargs.get("model"), "config", None)
        to_dict = getattr(model_config, "to_dict", None)
        if callable(to_dict):
            config["model"] = _common.plain(to_dict())
        # A Trainer resumed from a checkpoint starts at the checkpoint's global_step: the
        # points logged after it belong to the lost stretch.
        resumed = state.global_step > 0
        self.run = _common.open_run(
            self._run_id,
            self._rank,
            rewind_to=float(state.global_step) if resumed else None,
            fork_from=self._fork_from,
            resume_from=self._resume_from,
            config=config,
            **self._options,
        )
        _training.add(self)
        _install_excepthook()

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if self.run is None or not state.is_world_process_zero or not logs:
            return
        values = {}
        for name, value in logs.items():
            number = _common.scalar(value)
            if number is not None:
                values[_metric_name(name)] = number
        if values:
            self.run.log_metrics(values, step=state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        run, self.run = self.run, None
        _training.discard(self)
        if run is None:
            return
        if self._rank == 0:
            run.close()
        else:
            run.detach()

    def fail(self, reason: str) -> None:
        """End the run FAILED (training stopped with an exception the Trainer did not see
        through to on_train_end)."""
        run, self.run = self.run, None
        _training.discard(self)
        if run is None:
            return
        if self._rank == 0:
            run.fail(reason)
        else:
            run.detach()


def _metric_name(name: str) -> str:
    for prefix, namespace in _PREFIXES:
        if name.startswith(prefix):
            return namespace + name[len(prefix) :]
    return "train/" + name


_previous_hook = None


def _install_excepthook() -> None:
    """Chain sys.excepthook once: an uncaught exception fails the runs still training."""
    global _previous_hook
    if _previous_hook is not None:
        return
    _previous_hook = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        for callback in list(_training):
            try:
                callback.fail(repr(error))
            except Exception as exc:  # never hide the exception being reported
                print(f"stepstream: could not mark the run failed: {exc}", file=sys.stderr)
        assert _previous_hook is not None
        _previous_hook(kind, error, tb)

    sys.excepthook = hook


def register() -> None:
    """Make `TrainingArguments(report_to="stepstream")` add a StepstreamCallback."""
    integrations = _common.require(
        "transformers.integrations.integration_utils", "transformers", "report_to='stepstream'"
    )
    integrations.INTEGRATION_TO_CALLBACK[NAME] = StepstreamCallback


register()  # importing this module is enough for report_to="stepstream"
