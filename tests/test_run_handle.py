"""Read-only handles (SPEC §5: reading or exporting a run never changes its state):
`stepstream.get_run()` reads, lists, exports and shows history without writing; only
`Run(..., resume=True)` resumes a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import stepstream
import test_seeds
from stepstream._handle import RunHandle

address = test_seeds.address  # the real service, on its own event loop thread


def _failed_run(address: str) -> None:
    run = stepstream.Run("crashed", address=address, config={"epochs": 3}, tags=["t"])
    run.log_metrics({"loss": 1.0}, step=0)
    run.log_metrics({"loss": 0.5}, step=1)
    run.log_strings({"console": "epoch 1"}, step=1)
    run.log_metric("best", 0.5, single_value=True)
    run.fail("RuntimeError: loss diverged")


def _unchanged(address: str, update_time: object) -> None:
    info = stepstream.get_run("crashed", address=address).info
    assert (info.state, info.failure_reason) == ("FAILED", "RuntimeError: loss diverged")
    assert info.update_time == update_time and len(info.incarnations) == 1


def test_every_read_and_export_leaves_a_failed_run_failed(address: str, tmp_path: Path) -> None:
    _failed_run(address)
    handle = stepstream.get_run("crashed", address=address)
    assert isinstance(handle, RunHandle) and not isinstance(handle, stepstream.Run)
    before = handle.update_time
    assert (handle.state, handle.failure_reason) == ("FAILED", "RuntimeError: loss diverged")
    assert (handle.config, handle.tags, handle.values) == ({"epochs": 3}, ["t"], {"best": 0.5})
    assert handle.read_series("loss").values == [1.0, 0.5]
    assert [s.name for s in handle.list_series()] == ["console", "loss"]
    assert handle.summary()["loss"].last == 0.5
    assert handle.logs() == {"console": [(1.0, "epoch 1")]}
    assert [i.origin for i in handle.history()] == ["CREATED"]
    assert [i.incarnation_id for i in handle.lineage()] == [handle.incarnation_id]
    assert handle.get_run().state == "FAILED" and handle.refresh() is handle
    assert (handle.get_run_url(), handle.get_experiment_url()) == (None, None)
    for name in ("crashed.json", "crashed.yaml"):
        document = stepstream.load_export(handle.export(tmp_path / name, include_series=True))
        assert (document["state"], document["failure_reason"]) == (
            "FAILED",
            "RuntimeError: loss diverged",
        )
        assert document["series"][1]["values"] == [1.0, 0.5]
    stepstream.export_run("crashed", tmp_path / "again.json", address=address)
    _unchanged(address, before)
    handle.close()
    assert handle.read_series("loss").values == [1.0, 0.5]  # a closed handle reopens
    _unchanged(address, before)


def test_the_handle_is_a_snapshot_and_its_copies_change_nothing(address: str) -> None:
    config = {"lr": 0.1, "optim": {"b": [1]}}
    with (
        stepstream.Run("live", address=address, config=config) as run,
        stepstream.get_run("live", address=address) as handle,
    ):
        handle.config["lr"] = 9.0
        handle.config["optim"]["b"].append(2)
        handle.tags.append("x")
        assert handle.config == {"lr": 0.1, "optim": {"b": [1]}} and handle.tags == []
        run.log_configs({"epochs": 3})
        run.wait()
        assert "epochs" not in handle.config  # as of the read...
        assert handle.refresh().config == {"lr": 0.1, "optim": {"b": [1]}, "epochs": 3}
        assert handle.state == "RUNNING"
    assert stepstream.get_run("live", address=address).state == "FINISHED"


def test_a_missing_run_and_bad_arguments(address: str) -> None:
    with pytest.raises(stepstream.RPCError) as err:
        stepstream.get_run("nothing", address=address)
    assert err.value.reason == "RUN_NOT_FOUND"
    with pytest.raises(stepstream.InvalidArgumentError, match="run_id"):
        stepstream.get_run("bad id", address=address)
    with pytest.raises(stepstream.InvalidArgumentError, match=r"^project must be a str, got int$"):
        stepstream.get_run("r", project=3, address=address)  # type: ignore[arg-type]


def test_only_resume_true_writes(address: str) -> None:
    _failed_run(address)
    with stepstream.Run("crashed", address=address, resume=True) as run:
        assert isinstance(run, RunHandle)
        assert run.state == "RUNNING"  # resuming is what writes
        run.log_metrics({"loss": 0.25}, step=2)
        run.wait()
        assert run.read_series("loss").values == [1.0, 0.5, 0.25]
        assert run.refresh() is run and run.failure_reason is None
    info = stepstream.get_run("crashed", address=address)
    assert (info.state, info.failure_reason) == ("FINISHED", None)
