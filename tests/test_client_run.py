"""The Run's reads, single values and local metadata against the real service: what the seed
tests do not already pin down (downsampling, selectors, argument checks, local copies)."""

from __future__ import annotations

import math
import re

import pytest
import stepstream
import test_seeds

address = test_seeds.address  # the real service, on its own event loop thread


def _raises(message: str) -> pytest.RaisesContext[stepstream.InvalidArgumentError]:
    return pytest.raises(stepstream.InvalidArgumentError, match=f"^{re.escape(message)}$")


def test_reads_downsample_select_and_check_their_arguments(address: str) -> None:
    with stepstream.Run("r", address=address) as run:
        values = [math.sin(i / 100) for i in range(10_000)]
        values[1234] = 50.0
        values[4321] = -math.inf
        values[7777] = math.nan
        run.log_metric("m", values, step=0)
        run.log_strings({"m": "a string series of the same name"}, step=0)
        run.wait()
        small = run.read_series("m", max_points=100)
        assert 0 < len(small) <= 100
        assert {1234, 4321, 7777} <= set(small.steps)
        assert small.values[small.steps.index(1234)] == 50.0
        assert small.values[small.steps.index(4321)] == -math.inf
        assert math.isnan(small.values[small.steps.index(7777)])  # type: ignore[arg-type]
        # Float and string series are separate namespaces.
        assert run.read_series("m", string_series=True).values == [
            "a string series of the same name"
        ]
        assert len(run.read_series("m", string_series=False)) == 10_000
        assert len(run.read_series("m", step_min=10, step_max=19)) == 10
        assert run.read_series("missing").steps == []
        with pytest.raises(stepstream.RPCError) as caught:
            run.read_series("m", max_points=3)
        assert caught.value.reason == "INVALID_MAX_POINTS"
        with _raises("max_points must be a positive int, got 0"):
            run.read_series("m", max_points=0)
        with _raises("generation must be an int >= 0, got -1"):
            run.read_series("m", generation=-1)
        with _raises("step_min must be finite, got nan"):
            run.read_series("m", step_min=math.nan)
        with _raises(
            "incarnation_id 'a b' must be 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit"
        ):
            run.read_series("m", incarnation_id="a b")
        summaries = {(s.name, s.string_series): s for s in run.list_series()}
        assert summaries["m", False].count == 10_000
        assert summaries["m", True].last_string == "a string series of the same name"
        assert list(run.summary()) == ["m"]  # float series only

    by_incarnation = stepstream.read_series(
        name="m", incarnation_id=run.incarnation_id, address=address, step_max=2
    )
    assert by_incarnation.steps == [0, 1, 2]
    with _raises(
        "give exactly one of run_id, incarnation_id and experiment (got run_id, experiment)"
    ):
        stepstream.read_series("r", "m", experiment="e", address=address)
    with _raises("give exactly one of run_id, incarnation_id and experiment"):
        stepstream.list_series(address=address)
    with _raises("read_series needs the series name"):
        stepstream.read_series("r", address=address)
    with pytest.raises(stepstream.RPCError) as missing:
        stepstream.read_series(name="m", experiment="nothing", address=address)
    assert missing.value.reason == "EXPERIMENT_NOT_FOUND"


def test_single_values(address: str) -> None:
    with stepstream.Run(address=address) as run:
        run.log_metric("best", 0.5, single_value=True)
        run.log_metric("best", 0.75, single_value=True)  # replaces
        run.log_metric("epochs", 3, single_value=True, overwrite=True)
        assert run.values == {"best": 0.75, "epochs": 3}
        with _raises(
            "single_value=True stores one number, got a list for 'acc'; log a list without "
            "single_value to append it to the series"
        ):
            run.log_metric("acc", [0.8, 0.9], single_value=True)
        with _raises("single_value=True stores an attribute, which has no step (got step=3)"):
            run.log_metric("acc", 0.8, step=3, single_value=True)
        run.log_metric("diverged", math.nan, single_value=True)  # typed JSON carries NaN
        run.log_metric("worst", -math.inf, single_value=True)
        with _raises("single value 'acc' must be a real number, got bool: True"):
            run.log_metric("acc", True, single_value=True)
        with _raises("value name '' is empty"):
            run.log_metric("", 1.0, single_value=True)
        values = run.refresh().values
        assert math.isnan(values.pop("diverged"))
        assert values == {"best": 0.75, "epochs": 3, "worst": -math.inf}
        assert type(values["epochs"]) is int and type(values["best"]) is float
        assert run.list_series() == []  # no series was created
        assert run.errors == []


def test_local_metadata_follows_log_calls_and_guards_save(address: str) -> None:
    with stepstream.Run(address=address, config={"lr": 0.1}, tags=["a"]) as run:
        run.log_configs({"batch": 64, "sys/description": "from log_configs"})
        run.add_tags(["b", "c"])
        run.remove_tags("a")
        assert run.config == {"lr": 0.1, "batch": 64}
        assert (run.tags, run.description) == (["b", "c"], "from log_configs")
        run.save()  # nothing local to push; reads back what the queued updates did
        assert (run.config, run.tags, run.description) == (
            {"lr": 0.1, "batch": 64},
            ["b", "c"],
            "from log_configs",
        )
        run.config["sys/description"] = "x"
        with _raises("run.config has a 'sys/description' key; set run.description instead"):
            run.save()
        run.config = {"lr": 0.1, "batch": 64, "new": [1, 2]}
        run.tags = ("b", "d")
        run.save()
        assert run.get_run().config == {"lr": 0.1, "batch": 64, "new": [1, 2]}
        assert run.get_run().tags == ["b", "d"]
        with _raises("description must be a str, got int"):
            run.description = 3  # type: ignore[assignment]
        with _raises("tag in tags '' is empty"):
            run.tags = [""]
        with _raises("config must be a dict, got list"):
            run.config = []  # type: ignore[assignment]
        run.config["bad"] = {1, 2}
        with _raises(
            "run.config['bad'] has unsupported type set; use None, bool, int, float, str, "
            "list, tuple or dict"
        ):
            run.save()
        assert "bad" not in run.get_run().config  # nothing was sent
        assert (run.get_run_url(), run.get_experiment_url()) == (None, None)  # no web view
