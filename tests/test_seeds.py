"""Every seed document's example, through the trainer client against the real service.

Same numbers, same meaning: W&B fork (seed 001) and rewind (seed 002, with the fork from the
rewound run), Neptune Scale forking (seed 000: the step-rule table, inherited attributes, parent
fallback), the DigitalHub Run object (seed 004: log_metric / log_metrics, save, refresh,
export), and W&B's `"<run_id>?_step=<N>"` strings with their error messages.

The client is synchronous and runs its own thread, so the service runs on an event loop in a
thread of its own (`address`), and the tests are plain functions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import stepstream
from stepstream_server.config import Settings
from stepstream_server.server import Service


@pytest.fixture
def address(settings: Settings) -> Iterator[str]:
    """The real service (embedded Redis, SQLite store) on a free port, served by an event
    loop in its own thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="service-loop", daemon=True)
    thread.start()
    try:
        service = asyncio.run_coroutine_threadsafe(Service.start(settings), loop).result(60)
        try:
            yield service.address
        finally:
            asyncio.run_coroutine_threadsafe(service.stop(), loop).result(60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def spiky(i: int) -> float:
    return i + (2 * math.sin(i / 3.0))


def points(series: stepstream.Series) -> list[tuple[float, Any]]:
    return list(zip(series.steps, series.values, strict=True))


# ---- W&B: fork (seed 001) -----------------------------------------------------------------


def test_wandb_fork_seed_001(address: str) -> None:
    with stepstream.Run(address=address) as run1:
        for i in range(300):
            run1.log_metrics({"metric": i}, step=i)

    errors: list[stepstream.IngestError] = []
    with stepstream.Run(
        address=address, fork_from=f"{run1.run_id}?_step=200", on_error=errors.append
    ) as run2:
        for i in range(200, 300):
            if i < 250:
                run2.log_metrics({"metric": i}, step=i)  # continue as run1, no spikes
            else:
                run2.log_metrics({"metric": spiky(i)}, step=i)
            run2.log_metrics({"additional_metric": i * 1.1}, step=i)
        run2.wait()
        # Step 200 re-sends the inherited point (same step, same value): a duplicate, not an
        # error, counted as acknowledged.
        assert errors == []
        assert (run2.stats.acknowledged_points, run2.stats.rejected_points) == (200, 0)
        assert run2.run_id != run1.run_id and not run2.parent_fallback

    metric = stepstream.read_series(run2.run_id, "metric", address=address)
    assert metric.steps == list(range(300))
    assert metric.values == [float(i) for i in range(250)] + [spiky(i) for i in range(250, 300)]
    assert points(run2.read_series("additional_metric")) == [(i, i * 1.1) for i in range(200, 300)]
    # Neptune's "show inherited metrics" off: only what run2 stored itself.
    assert run2.read_series("metric", own_points_only=True).steps == list(range(201, 300))
    # Forking never changes the parent.
    assert points(run1.read_series("metric")) == [(i, i) for i in range(300)]

    parent, child = run2.lineage()
    assert (parent.run_id, parent.origin, parent.incarnation_id) == (
        run1.run_id,
        "CREATED",
        run1.incarnation_id,
    )
    assert (child.run_id, child.origin, child.parent_run_id, child.fork_step) == (
        run2.run_id,
        "FORKED",
        run1.run_id,
        200,
    )
    assert run2.state == "FINISHED"


# ---- W&B: rewind (seed 002) ---------------------------------------------------------------


def test_wandb_rewind_seed_002_and_fork_from_the_rewound_run(address: str) -> None:
    with stepstream.Run(
        address=address, config={"lr": 0.1}, tags=["base"], description="baseline"
    ) as run1:
        for i in range(300):
            run1.log_metrics({"metric": i}, step=i)
            if i % 150 == 0:
                run1.log_strings({"console": f"epoch {i // 150}"}, step=i)
    original = run1.incarnation_id

    run2 = stepstream.Run(
        address=address, resume_from=f"{run1.run_id}?_step=200", config={"batch_size": 64}
    )
    try:
        # Same run, new current incarnation; config preserved and merged, tags and
        # description kept; history truncated and the summary recomputed at once.
        assert run2.run_id == run1.run_id
        assert run2.incarnation_id != original
        assert run2.state == "RUNNING"
        assert run2.config == {"lr": 0.1, "batch_size": 64}
        assert (run2.tags, run2.description) == (["base"], "baseline")
        cut = run2.summary()["metric"]
        assert (cut.count, cut.last_step, cut.last, cut.max) == (201, 200, 200, 200)
        # Console logs are rewound like any other series (W&B cannot do this).
        assert run2.logs() == {"console": [(0.0, "epoch 0"), (150.0, "epoch 1")]}

        for i in range(200, 300):
            if i < 250:
                run2.log_metrics({"metric": i}, step=i)
            else:
                run2.log_metrics({"metric": spiky(i)}, step=i)
            run2.log_metrics({"additional_metric": i * 1.1}, step=i)
        run2.wait()
        assert run2.errors == []

        metric = run2.read_series("metric")
        assert metric.steps == list(range(300))
        assert metric.values == [float(i) for i in range(250)] + [spiky(i) for i in range(250, 300)]
        summary = run2.summary()
        assert summary["metric"].count == 300
        assert summary["metric"].last == spiky(299)
        assert summary["metric"].max == max(metric.values)
        assert summary["additional_metric"].min == 200 * 1.1

        # The archived incarnation is intact, readable by its immutable ID.
        assert points(run2.read_series("metric", incarnation_id=original)) == [
            (i, i) for i in range(300)
        ]
        archived = stepstream.read_series(name="metric", incarnation_id=original, address=address)
        assert archived.values == list(range(300))

        # The rewind history (W&B's "Forked From").
        first, current = run2.history()
        assert (first.incarnation_id, first.archived, first.origin) == (original, True, "CREATED")
        assert (current.incarnation_id, current.archived, current.origin) == (
            run2.incarnation_id,
            False,
            "REWOUND",
        )
        assert (current.parent_incarnation_id, current.fork_step) == (original, 200)
        assert first.create_time is not None and current.create_time is not None
        assert first.create_time <= current.create_time
    finally:
        run2.close()
    assert stepstream.get_run(run1.run_id, address=address).state == "FINISHED"

    # Fork from the rewound run: only its current view is inherited.
    with stepstream.Run(address=address, fork_from=f"{run2.run_id}?_step=500") as forked:
        for i in range(500, 1000):
            forked.log_metrics({"metric": i * 3}, step=i)
    metric = forked.read_series("metric")
    assert metric.steps == list(range(300)) + list(range(500, 1000))
    assert metric.values[250:300] == [spiky(i) for i in range(250, 300)]
    assert metric.values[300:] == [i * 3 for i in range(500, 1000)]
    assert [(i.run_id, i.origin, i.fork_step) for i in forked.lineage()] == [
        (run1.run_id, "CREATED", None),
        (run1.run_id, "REWOUND", 200),
        (forked.run_id, "FORKED", 500),
    ]

    # Immutable run IDs: forking from the archived incarnation forks from exactly that state.
    with stepstream.Run(
        address=address, fork_incarnation_id=original, fork_step=250
    ) as from_archive:
        pass
    assert points(from_archive.read_series("metric")) == [(i, i) for i in range(251)]
    assert from_archive.history()[0].parent_incarnation_id == original


def test_rewind_twice_and_resume_from_errors(address: str) -> None:
    with stepstream.Run("r", address=address) as run:
        run.log_metric("m", list(range(10)))
    with stepstream.Run(run_id="r", resume_from="r?_step=5", address=address) as again:
        again.log_metric("m", [100.0] * 6)  # steps 6..11
    with stepstream.Run(
        resume_from="r?_step=8",
        address=address,
        config={"sys/description": "rewound twice", "lr": 0.5},
        tags=["again"],
    ) as third:
        third.log_metric("m", -1.0, step=9)
        assert (third.config, third.tags, third.description) == (
            {"lr": 0.5},
            ["again"],
            "rewound twice",
        )
    assert points(third.read_series("m")) == [
        *((i, i) for i in range(6)),
        (6, 100),
        (7, 100),
        (8, 100),
        (9, -1),
    ]
    first, second, current = third.history()
    assert [i.archived for i in (first, second, current)] == [True, True, False]
    assert third.read_series("m", incarnation_id=first.incarnation_id).values == list(range(10))
    assert (
        third.read_series("m", incarnation_id=second.incarnation_id, own_points_only=True).values
        == [100.0] * 6
    )

    with pytest.raises(stepstream.RPCError) as caught:
        stepstream.Run(resume_from="ghost?_step=1", address=address)
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.NOT_FOUND, "RUN_NOT_FOUND")
    with pytest.raises(
        stepstream.InvalidArgumentError,
        match=re.escape(
            "resume_from names run 'r', which belongs to experiment None, not experiment_name='exp'"
        ),
    ):
        stepstream.Run(resume_from="r?_step=1", experiment_name="exp", address=address)
    assert len(third.history()) == 3  # neither failure changed the run


# ---- Neptune Scale: forking (seed 000) --------------------------------------------------


def test_neptune_fork_seed_000_step_rules(address: str) -> None:
    with stepstream.Run(address=address, experiment_name="swim-further") as parent:
        for step in range(0, 91, 10):
            parent.log_metrics({"loss": 1.0}, step=step)  # ParentMaxStep 90 < ForkStep
        for step in range(0, 151, 10):
            parent.log_metrics({"acc": 0.5}, step=step)  # inherited only up to step 100

    errors: list[stepstream.IngestError] = []
    child = stepstream.Run(
        address=address,
        experiment_name="swim-further",
        fork_run_id=parent.run_id,
        fork_step=100,
        on_error=errors.append,
    )
    with child:
        assert not child.parent_fallback
        child.log_metrics({"loss": 0.3}, step=90)  # ChildStep <= ParentMaxStep: error
        child.wait()
        child.log_metrics({"loss": 0.2}, step=95)  # ParentMaxStep < ChildStep <= ForkStep
        child.log_metrics({"loss": 0.15}, step=100)
        child.log_metrics({"acc": 0.81}, step=100)  # acc's inherited max is 100: error
        child.wait()
        child.log_metrics({"loss": 0.11, "acc": 0.81}, step=100.1)  # "also OK: 100.1"
        child.log_metrics({"loss": 0.1, "acc": 0.82}, step=101)
        # "new_metric" does not exist in the parent: any first step is fine.
        child.log_metrics({"new_metric": 0.123}, step=1)
        child.wait()

    rejected = sorted(
        (e.series, e.reason, e.first_step, e.last_step, e.floor, e.count) for e in errors
    )
    assert rejected == [
        ("acc", "STEP_NOT_INCREASING", 100.0, 100.0, 100.0, 1),
        ("loss", "STEP_NOT_INCREASING", 90.0, 90.0, 90.0, 1),
    ]
    loss = child.read_series("loss")
    assert loss.steps == [*range(0, 91, 10), 95, 100, 100.1, 101]
    assert child.read_series("loss", own_points_only=True).steps == [95, 100, 100.1, 101]
    assert child.read_series("acc").steps == [*range(0, 101, 10), 100.1, 101]
    assert points(child.read_series("new_metric")) == [(1, 0.123)]

    # Points logged in a fork pass on to further descendants.
    with stepstream.Run(address=address, fork_from=f"{child.run_id}?_step=200") as grandchild:
        grandchild.log_metrics({"new_metric": 0.5}, step=2)
    assert points(grandchild.read_series("new_metric")) == [(1, 0.123), (2, 0.5)]
    assert grandchild.read_series("loss", step_min=95).steps == [95, 100, 100.1, 101]
    assert [i.run_id for i in grandchild.lineage()] == [
        parent.run_id,
        child.run_id,
        grandchild.run_id,
    ]


def test_neptune_fork_seed_000_inherited_attributes(address: str) -> None:
    with stepstream.Run(
        address=address,
        tags=["t1", "t2"],
        description="swim further",
        config={"lr": 0.1},
    ) as parent:
        parent.log_metric("loss", [1.0, 0.5])
        parent.log_metric("best_acc", 0.9, single_value=True)
        parent.log_configs({"batch_size": 64})
    with stepstream.Run(
        address=address, fork_run_id=parent.run_id, fork_step=1, tags=["t3"]
    ) as child:
        # Tags and sys/description are inherited; configs and single values are not.
        assert (child.tags, child.description) == (["t1", "t2", "t3"], "swim further")
        assert (child.config, child.values) == ({}, {})
        assert child.read_series("loss").values == [1.0, 0.5]
    with stepstream.Run(
        address=address, fork_run_id=parent.run_id, fork_step=1, inherit_configs=True
    ) as both:
        assert both.config == {"lr": 0.1, "batch_size": 64}
        assert both.values == {"best_acc": 0.9}
    info = stepstream.get_run(both.run_id, address=address)
    assert (info.config, info.values, info.tags) == (
        {"lr": 0.1, "batch_size": 64},
        {"best_acc": 0.9},
        ["t1", "t2"],
    )


def test_neptune_fork_seed_000_parent_fallback_and_experiment_reads(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    with stepstream.Run("likable-barracuda", address=address, experiment_name="swim") as first:
        first.log_metrics({"loss": 0.9}, step=1)
    with stepstream.Run("head", address=address, experiment_name="swim") as head:
        head.log_metrics({"loss": 0.8}, step=2)
    assert stepstream.get_run("head", address=address).experiment_head

    # The requested parent is not there (yet): Neptune uses the experiment's head instead.
    with caplog.at_level(logging.WARNING, logger="stepstream"):
        run = stepstream.Run(
            address=address,
            experiment_name="swim",
            fork_run_id="not-there-yet",
            fork_step=100,
        )
    with run:
        assert run.parent_fallback
        (incarnation,) = run.history()
        assert (incarnation.parent_run_id, incarnation.fork_step) == ("head", 100)
        assert points(run.read_series("loss")) == [(2, 0.8)]
        run.log_metrics({"loss": 0.7}, step=3)
    assert "fork parent 'not-there-yet' was not found; forked from the head run 'head'" in (
        caplog.text
    )
    assert stepstream.get_run(run.run_id, address=address).experiment_head

    # An experiment read follows the head run's lineage.
    by_experiment = stepstream.read_series(name="loss", experiment="swim", address=address)
    assert points(by_experiment) == [(2, 0.8), (3, 0.7)]
    (summary,) = stepstream.list_series(experiment="swim", address=address)
    assert (summary.name, summary.count, summary.last) == ("loss", 2, 0.7)
    assert [r.run_id for r in stepstream.list_runs(experiment="swim", address=address)] == [
        "likable-barracuda",
        "head",
        run.run_id,
    ]

    # Without a head to fall back to, a missing parent is NOT_FOUND.
    with pytest.raises(stepstream.RPCError) as caught:
        stepstream.Run(address=address, experiment_name="empty", fork_run_id="nope", fork_step=5)
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.NOT_FOUND, "RUN_NOT_FOUND")


# ---- DigitalHub: the Run object (seed 004) ------------------------------------------------


def test_digitalhub_log_metric_seed_004(address: str) -> None:
    with stepstream.Run(address=address) as entity:
        entity.log_metric("loss", 0.002)  # a new value in a list
        entity.log_metric("loss", 0.0019)  # appended
        entity.log_metric("loss", [0.0018, 0.0015])  # a list appended
        entity.log_metric("accuracy", 0.9, single_value=True)  # one number, not a list
        entity.log_metric("accuracy", [0.8, 0.9], overwrite=True)  # a list replacing the metric
        entity.wait()
        assert points(entity.read_series("loss")) == [
            (0, 0.002),
            (1, 0.0019),
            (2, 0.0018),
            (3, 0.0015),
        ]
        assert points(entity.read_series("accuracy")) == [(0, 0.8), (1, 0.9)]
        assert entity.values == {"accuracy": 0.9}
        assert entity.refresh().values == {"accuracy": 0.9}

        # Overwriting an existing series: it restarts at step 0; the old points are an
        # older generation, still readable.
        entity.log_metric("loss", 0.5, overwrite=True)
        entity.log_metric("loss", 0.4)
        entity.wait()
        assert points(entity.read_series("loss")) == [(0, 0.5), (1, 0.4)]
        assert entity.summary()["loss"].generation == 1
        assert entity.read_series("loss", generation=0).values == [0.002, 0.0019, 0.0018, 0.0015]
        assert entity.errors == []


def test_digitalhub_log_metrics_seed_004(address: str) -> None:
    with stepstream.Run(address=address) as entity:
        entity.log_metrics({"loss": 0.002, "accuracy": 0.95})  # several metrics at once
        entity.log_metrics({"loss": [0.1, 0.05], "epoch": 10})  # lists and single values
        entity.log_metrics({"loss": 0.001, "accuracy": 0.96})  # appends (the default)
        entity.wait()
        assert entity.read_series("loss").values == [0.002, 0.1, 0.05, 0.001]
        assert entity.read_series("loss").steps == [0, 1, 2, 3]
        assert points(entity.read_series("accuracy")) == [(0, 0.95), (1, 0.96)]
        assert points(entity.read_series("epoch")) == [(0, 10)]

        entity.log_metrics({"loss": 0.0005, "accuracy": 0.98}, overwrite=True)
        entity.wait()
        assert points(entity.read_series("loss")) == [(0, 0.0005)]
        assert points(entity.read_series("accuracy")) == [(0, 0.98)]
        assert points(entity.read_series("epoch")) == [(0, 10)]
        generations = {n: s.generation for n, s in entity.summary().items()}
        assert generations == {"accuracy": 1, "epoch": 0, "loss": 1}
        assert entity.read_series("loss", generation=0).values == [0.002, 0.1, 0.05, 0.001]

        # With an explicit step, a list takes consecutive steps from there.
        entity.log_metrics({"lr": [0.1, 0.01], "epoch": 11}, step=5)
        entity.wait()
        assert points(entity.read_series("lr")) == [(5, 0.1), (6, 0.01)]
        assert points(entity.read_series("epoch")) == [(0, 10), (5, 11)]
        assert entity.errors == []


def test_digitalhub_lifecycle_and_logs(address: str) -> None:
    errors: list[stepstream.IngestError] = []
    entity = stepstream.Run("lifecycle", address=address, on_error=errors.append)
    try:
        entity.log_strings({"console": "starting"}, step=0)
        entity.log_strings({"stderr": "warning: slow"}, step=0)
        entity.log_strings({"console": "epoch 1"}, step=1)
        entity.stop()
        assert entity.state == "STOPPED"
        entity.log_metric("loss", 1.0, step=2)  # the run is stopped: rejected
        entity.wait()
        assert [e.reason for e in errors] == ["RUN_NOT_ACTIVE"]
        entity.resume()
        assert entity.state == "RUNNING"
        entity.log_metric("loss", 1.0, step=2)
        assert entity.wait() is entity
        assert entity.logs() == {
            "console": [(0.0, "starting"), (1.0, "epoch 1")],
            "stderr": [(0.0, "warning: slow")],
        }
        assert entity.logs(step_min=1) == {"console": [(1.0, "epoch 1")]}
        assert entity.read_series("console").values == ["starting", "epoch 1"]
        assert entity.get_run_url() == stepstream.get_run("lifecycle", address=address).url
    finally:
        entity.close()
    assert entity.state == "FINISHED"
    assert entity.refresh().state == "FINISHED"


def _same(a: object, b: object) -> bool:
    """Equality that treats NaN as equal to NaN (json.dumps writes both as NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_digitalhub_save_refresh_export_seed_004(
    address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entity = stepstream.Run(
        "dh-run",
        address=address,
        config={"lr": 0.1, "optim": {"name": "adam"}},
        tags=["draft"],
        description="first try",
    )
    other = stepstream.Run("dh-run", resume=True, address=address)  # e.g. another process
    try:
        entity.log_metric("loss", [0.5, 0.25, math.nan])
        entity.log_strings({"console": "hello"}, step=0)
        entity.log_metric("best", 0.25, single_value=True)

        # save(): push local edits of config, tags and description.
        entity.config["lr"] = 0.01
        entity.config["optim"]["betas"] = [0.9, 0.999]
        entity.tags.remove("draft")
        entity.tags.append("tuned")
        entity.description = "second try"
        assert entity.save() is entity
        info = stepstream.get_run("dh-run", address=address)
        assert info.config == {"lr": 0.01, "optim": {"name": "adam", "betas": [0.9, 0.999]}}
        assert (info.tags, info.description) == (["tuned"], "second try")
        assert info.values == {"best": 0.25}

        # refresh(): changes made elsewhere arrive; unsaved local edits are replaced.
        other.log_configs({"epochs": 3})
        other.add_tags("shared")
        other.wait()
        entity.config["unsaved"] = True
        assert entity.refresh() is entity
        assert entity.config == {
            "lr": 0.01,
            "optim": {"name": "adam", "betas": [0.9, 0.999]},
            "epochs": 3,
        }
        assert entity.tags == ["shared", "tuned"]

        # save() sends only this object's edits: a tag added elsewhere meanwhile is kept.
        other.add_tags("theirs")
        other.wait()
        entity.tags.append("mine")
        entity.save()
        assert entity.tags == ["mine", "shared", "theirs", "tuned"]
        del entity.config["lr"]
        with pytest.raises(stepstream.InvalidArgumentError, match=r"config keys \['lr'\]"):
            entity.save()
        entity.refresh()

        # export(): JSON and YAML, by extension; both read back to the same document.
        json_path = entity.export(tmp_path / "run.json", include_series=True)
        yaml_path = entity.export(tmp_path / "run.yaml", include_series=True)
        assert (json_path, yaml_path) == (str(tmp_path / "run.json"), str(tmp_path / "run.yaml"))
        from_json = stepstream.load_export(json_path)
        from_yaml = stepstream.load_export(yaml_path)
        assert _same(from_json, from_yaml)
        assert json.loads(Path(json_path).read_text())["run_id"] == "dh-run"
        assert Path(yaml_path).read_text().startswith("kind: stepstream.run\n")
    finally:
        other.close()
        entity.close()

    document = from_yaml
    assert (document["kind"], document["version"], document["run_id"]) == (
        "stepstream.run",
        1,
        "dh-run",
    )
    assert document["config"] == entity.config
    assert (document["tags"], document["description"]) == (entity.tags, "second try")
    assert document["values"] == {"best": 0.25}
    assert document["state"] == "RUNNING"  # exported before close()
    (incarnation,) = document["history"]
    assert incarnation["incarnation_id"] == entity.incarnation_id
    assert document["lineage"] == document["history"]
    series = {s["name"]: s for s in document["series"]}
    assert series["loss"]["steps"] == [0, 1, 2]
    assert series["loss"]["values"][:2] == [0.5, 0.25]
    assert math.isnan(series["loss"]["values"][2])
    assert (series["loss"]["count"], series["loss"]["max"]) == (3, 0.5)
    assert (series["console"]["kind"], series["console"]["values"]) == ("string", ["hello"])

    # Default: "<run_id>.yaml" in the current directory, metadata and summaries only.
    monkeypatch.chdir(tmp_path)
    default = entity.export()
    assert default == str(tmp_path / "dh-run.yaml")
    light = stepstream.load_export(default)
    assert light["state"] == "FINISHED"
    assert "steps" not in light["series"][0]
    with pytest.raises(stepstream.InvalidArgumentError, match="cannot tell the export format"):
        entity.export(tmp_path / "run.txt")
    assert entity.export(tmp_path / "run.txt", format="json") == str(tmp_path / "run.txt")


def test_lineage_of_a_fork_from_another_project_ends_in_unknown(address: str) -> None:
    with stepstream.Run("p", project="elsewhere", address=address) as parent:
        parent.log_metric("m", [1.0, 2.0])
    with stepstream.Run(
        address=address, fork_incarnation_id=parent.incarnation_id, fork_step=0
    ) as child:
        pass
    unknown, own = child.lineage()
    assert (unknown.incarnation_id, unknown.run_id, unknown.origin) == (
        parent.incarnation_id,
        "p",
        "UNKNOWN",
    )
    assert own.incarnation_id == child.incarnation_id
    assert child.read_series("m").values == [1.0]


# ---- W&B: "<run_id>?_step=<N>" strings ------------------------------------------------


def _unused_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


EXPECTED = "'<run_id>?_step=<N>' (e.g. 'my-run?_step=200')"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("run1", "there is no '?_step=<N>' after the run ID"),
        ("run1_step=200", "there is no '?_step=<N>' after the run ID"),
        ("?_step=200", "the run ID before '?' is empty"),
        (
            "run 1?_step=200",
            "the run ID 'run 1' must be 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit",
        ),
        ("run1?", "nothing follows '?'"),
        ("run1?step=200", "the key must be _step, got 'step'"),
        ("run1?_STEP=200", "the key must be _step, got '_STEP'"),
        ("run1?=200", "the key must be _step, got ''"),
        (
            "run1?_step=200&lr=0.1",
            "it has 2 keys ('_step', 'lr'); exactly one, _step, is allowed",
        ),
        (
            "run1?_step=1&_step=2",
            "it has 2 keys ('_step', '_step'); exactly one, _step, is allowed",
        ),
        ("run1?_step", "_step has no value"),
        ("run1?_step=", "_step has no value"),
        ("run1?_step=abc", "_step must be a number, got 'abc'"),
        ("run1?_step=20 0", "_step must be a number, got '20 0'"),
        ("run1?_step=1_000", "_step must be a number, got '1_000'"),
        ("run1?_step=0x10", "_step must be a number, got '0x10'"),
        ("run1?_step=200?x", "_step must be a number, got '200?x'"),
        ("run1?_step=inf", "_step must be finite, got 'inf'"),
        ("run1?_step=-Infinity", "_step must be finite, got '-Infinity'"),
        ("run1?_step=nan", "_step must be finite, got 'nan'"),
        ("run1?_step=1e999", "_step must be finite, got '1e999'"),
    ],
)
@pytest.mark.parametrize("argument", ["fork_from", "resume_from"])
def test_wandb_moment_strings_are_checked(argument: str, value: str, problem: str) -> None:
    message = f"{argument} {value!r} is not {EXPECTED}: {problem}"
    with pytest.raises(stepstream.InvalidArgumentError) as caught:
        stepstream.Run(address=_unused_address(), **{argument: value})
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"fork_from": 200},
            f"fork_from must be a str {EXPECTED}, got int: 200",
        ),
        (
            {"resume_from": ("run1", 200)},
            f"resume_from must be a str {EXPECTED}, got tuple: ('run1', 200)",
        ),
        (
            {"fork_from": "a?_step=1", "resume_from": "a?_step=1"},
            "fork_from and resume_from are mutually exclusive: fork_from starts a new run from "
            "'<run_id>?_step=<N>', resume_from rewinds that run itself; give one of them",
        ),
        (
            {"fork_from": "a?_step=1", "fork_run_id": "a", "fork_step": 1},
            "fork_from already names the run and the step ('<run_id>?_step=<N>'); do not also "
            "give fork_run_id, fork_step",
        ),
        (
            {"resume_from": "a?_step=1", "fork_incarnation_id": "inc-1"},
            "resume_from already names the run and the step ('<run_id>?_step=<N>'); do not "
            "also give fork_incarnation_id",
        ),
        (
            {"run_id": "run1", "fork_from": "run1?_step=200"},
            "fork_from 'run1?_step=200' names this run's own run_id 'run1'; a fork is a new "
            "run and needs another run_id (or none). To cut run 'run1' back to that step and "
            "continue it, use resume_from='run1?_step=200' instead",
        ),
        (
            {"run_id": "run2", "resume_from": "run1?_step=200"},
            "run_id 'run2' and resume_from 'run1?_step=200' name different runs; resume_from "
            "rewinds and attaches to run 'run1': omit run_id or give run_id='run1'",
        ),
        (
            {"run_id": "run1", "resume_from": "run1?_step=200", "resume": True},
            "resume_from already attaches to the run it rewinds; drop resume=True",
        ),
        (
            {"resume_from": "run1?_step=200", "inherit_configs": True},
            "inherit_configs applies to forks; resume_from keeps the run's config (merge "
            "entries into it with config=...)",
        ),
    ],
)
def test_wandb_fork_and_resume_rules(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(stepstream.InvalidArgumentError) as caught:
        stepstream.Run(address=_unused_address(), **kwargs)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_wandb_moment_strings_that_parse(address: str) -> None:
    with stepstream.Run("run1", address=address) as run1:
        run1.log_metric("m", [float(i) for i in range(10)], step=-2)  # steps -2..7
    for moment, expected in [
        ("run1?_step=3", [-2, -1, 0, 1, 2, 3]),
        ("run1?_step=+2.5", [-2, -1, 0, 1, 2]),
        ("run1?_step=-1", [-2, -1]),
        ("run1?_step=.5e1", [-2, -1, 0, 1, 2, 3, 4, 5]),
        ("run1?_step=1E+1", list(range(-2, 8))),
    ]:
        with stepstream.Run(address=address, fork_from=moment) as fork:
            assert fork.read_series("m").steps == expected, moment
            assert fork.history()[0].fork_step == float(moment.partition("=")[2])
