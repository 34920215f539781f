"""StepstreamCallback with the real Hugging Face Trainer on the CPU: a tiny model trains a few
steps and the run is read back (config, metrics at state.global_step, final state, the rewind
after resuming from a checkpoint, report_to="stepstream", a failure)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import stepstream

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from served import address  # noqa: E402, F401
from stepstream.integrations.transformers import StepstreamCallback  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning"
)


class Tiny(torch.nn.Module):  # type: ignore[misc]
    def __init__(self, fail_at: int = -1) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 1)
        self.calls = 0
        self.fail_at = fail_at

    def forward(self, x: Any, labels: Any) -> dict[str, Any]:
        if self.calls == self.fail_at:
            raise RuntimeError("diverged")
        self.calls += 1
        return {"loss": torch.nn.functional.mse_loss(self.net(x), labels)}


def data() -> list[dict[str, Any]]:
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    return [{"x": row, "labels": row.sum(dim=0, keepdim=True)} for row in x]


def train(root: Path, steps: int, callbacks: list[Any], model: Any = None, **options: Any) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(root),
        max_steps=steps,
        logging_steps=1,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="steps" if "save_steps" in options else "no",
        **options,
    )
    return transformers.Trainer(
        model=model or Tiny(), args=args, train_dataset=data(), callbacks=callbacks
    )


@pytest.fixture(autouse=True)
def _address(address: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("STEPSTREAM_ADDRESS", address)


def test_train_logs_arguments_and_metrics_at_the_global_step(tmp_path: Path) -> None:
    callback = StepstreamCallback("hf-train", experiment_name="hf")
    train(tmp_path, 4, [callback]).train()
    info = stepstream.get_run("hf-train")
    assert info.state == "FINISHED" and info.experiment == "hf"
    assert info.config["args"]["max_steps"] == 4
    assert info.config["args"]["learning_rate"] == 0.05
    loss = stepstream.read_series("hf-train", "train/loss")
    assert loss.steps == [1.0, 2.0, 3.0, 4.0]
    assert "train/train_runtime" in {s.name for s in stepstream.list_series("hf-train")}


def test_resuming_from_a_checkpoint_rewinds_the_run(tmp_path: Path) -> None:
    train(tmp_path, 6, [StepstreamCallback("hf-resume")], save_steps=3).train()
    first = stepstream.read_series("hf-resume", "train/loss")
    assert first.steps == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    trainer = train(tmp_path, 8, [StepstreamCallback("hf-resume")], save_steps=100)
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    info = stepstream.get_run("hf-resume")
    assert info.state == "FINISHED"
    archived, current = info.incarnations
    assert archived.archived and (current.origin, current.fork_step) == ("REWOUND", 3.0)
    loss = stepstream.read_series("hf-resume", "train/loss")
    assert loss.steps == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert loss.values[:3] == first.values[:3]


def test_report_to_stepstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPSTREAM_RUN_ID", "hf-report-to")
    trainer = train(tmp_path, 2, [], report_to="stepstream")
    assert any(isinstance(c, StepstreamCallback) for c in trainer.callback_handler.callbacks)
    trainer.train()
    assert stepstream.get_run("hf-report-to").state == "FINISHED"
    assert stepstream.read_series("hf-report-to", "train/loss").steps == [1.0, 2.0]


def test_an_uncaught_exception_marks_the_run_failed(tmp_path: Path) -> None:
    trainer = train(tmp_path, 5, [StepstreamCallback("hf-fail")], model=Tiny(fail_at=2))
    with pytest.raises(RuntimeError, match="diverged") as caught:
        trainer.train()
    assert stepstream.get_run("hf-fail").state == "RUNNING"
    # What the interpreter does with an exception nobody catches.
    sys.excepthook(caught.type, caught.value, caught.tb)
    info = stepstream.get_run("hf-fail")
    assert (info.state, info.failure_reason) == ("FAILED", "RuntimeError('diverged')")
    assert stepstream.read_series("hf-fail", "train/loss").steps == [1.0, 2.0]
