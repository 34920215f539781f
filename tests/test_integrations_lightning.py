"""StepstreamLogger with the real Lightning on the CPU: a tiny model trains a few steps and the
run is read back (config, metrics at Lightning's steps, final state, the rewind after resuming
from a checkpoint, a failed fit)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import stepstream

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
from served import address  # noqa: E402, F401
from stepstream.integrations.lightning import StepstreamLogger  # noqa: E402

# The frameworks' own deprecation notices and advice (e.g. "use more dataloader workers").
pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning"
)


class Tiny(pl.LightningModule):  # type: ignore[misc]
    def __init__(self, lr: float = 0.1, hidden: int = 4, fail_at: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Linear(hidden, 1))

    def training_step(self, batch: Any, index: int) -> Any:
        if self.global_step == self.hparams.fail_at:
            raise RuntimeError("diverged")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loader() -> Any:
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    return torch.utils.data.DataLoader(data, batch_size=8)


def trainer(root: Path, logger: StepstreamLogger, steps: int, **options: Any) -> Any:
    return pl.Trainer(
        max_steps=steps,
        logger=logger,
        log_every_n_steps=1,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **options,
    )


@pytest.fixture(autouse=True)
def _address(address: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("STEPSTREAM_ADDRESS", address)


def test_fit_logs_config_and_metrics_at_lightnings_steps(tmp_path: Path) -> None:
    logger = StepstreamLogger("pl-fit", experiment_name="pl", tags=["tiny"])
    trainer(tmp_path, logger, 5, enable_checkpointing=False).fit(Tiny(lr=0.05), loader())
    info = stepstream.get_run("pl-fit")
    assert info.state == "FINISHED"
    assert info.experiment == "pl" and info.tags == ["tiny"]
    assert info.config == {"lr": 0.05, "hidden": 4, "fail_at": -1}
    loss = stepstream.read_series("pl-fit", "train/loss")
    assert loss.steps == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert logger.version == "pl-fit" and logger.name == "pl"


def test_resuming_from_a_checkpoint_rewinds_the_run(tmp_path: Path) -> None:
    checkpoints = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1
    )
    logger = StepstreamLogger("pl-resume")
    trainer(tmp_path, logger, 6, callbacks=[checkpoints]).fit(Tiny(), loader())
    first = stepstream.read_series("pl-resume", "train/loss")
    assert first.steps == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    (at_3,) = [p for p in (tmp_path / "ckpt").iterdir() if "step=3" in p.name]

    logger = StepstreamLogger("pl-resume")
    trainer(tmp_path, logger, 8, enable_checkpointing=False).fit(
        Tiny(), loader(), ckpt_path=str(at_3)
    )
    info = stepstream.get_run("pl-resume")
    assert info.state == "FINISHED"
    archived, current = info.incarnations
    assert archived.archived and current.origin == "REWOUND"
    assert current.fork_step == 2.0  # the last step the checkpoint's stretch had logged
    loss = stepstream.read_series("pl-resume", "train/loss")
    assert loss.steps == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert loss.values[:3] == first.values[:3]
    old = stepstream.read_series(name="train/loss", incarnation_id=archived.incarnation_id)
    assert old.steps == first.steps  # the lost stretch stays readable


def test_a_failed_fit_marks_the_run_failed(tmp_path: Path) -> None:
    logger = StepstreamLogger("pl-fail")
    with pytest.raises(RuntimeError, match="diverged"):
        trainer(tmp_path, logger, 5, enable_checkpointing=False).fit(Tiny(fail_at=2), loader())
    info = stepstream.get_run("pl-fail")
    assert info.state == "FAILED"
    assert info.failure_reason == "Lightning training ended with status 'failed'"
    assert stepstream.read_series("pl-fail", "train/loss").steps == [0.0, 1.0]


def test_other_ranks_attach_to_rank_zeros_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPSTREAM_RUN_ID", "")  # restored (unset) after the test
    monkeypatch.delenv("STEPSTREAM_RUN_ID")
    zero = StepstreamLogger(experiment_name="pl-ddp")  # rank 0 picks the ID for every rank
    zero.log_hyperparams({"world": 2})
    zero.experiment  # noqa: B018 - what Lightning's log_graph call does on rank 0
    monkeypatch.setenv("RANK", "1")
    one = StepstreamLogger()
    assert one.version == zero.version
    one.log_metrics({"loss": 1.0}, step=0)  # Lightning's metrics: rank 0 only
    one.experiment.log_metrics({"rank1/throughput": 10.0}, step=0)  # its own series
    one.finalize("success")  # detaches, the run stays RUNNING for rank 0
    assert stepstream.get_run(zero.version).state == "RUNNING"
    zero.log_metrics({"loss": 0.5}, step=0)
    zero.finalize("success")
    info = stepstream.get_run(zero.version)
    assert (info.state, info.config, info.experiment) == ("FINISHED", {"world": 2}, "pl-ddp")
    names = {s.name: s.count for s in stepstream.list_series(zero.version)}
    assert names == {"loss": 1, "rank1/throughput": 1}


def test_a_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "stepstream.integrations.lightning")
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)  # import raises ImportError
    with pytest.raises(stepstream.MissingExtraError) as caught:
        importlib.import_module("stepstream.integrations.lightning")
    assert str(caught.value) == (
        "StepstreamLogger needs the 'lightning' extra (lightning.pytorch is not installed):"
        " pip install 'stepstream[lightning]'"
    )


def test_the_client_imports_nothing_heavy() -> None:
    code = (
        "import sys, stepstream, stepstream.cli, stepstream.integrations\n"
        "heavy = ('yaml', 'pyarrow', 'torch', 'lightning', 'transformers', 'stepstream_server')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
