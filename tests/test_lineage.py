"""Fork, rewind, experiments and lineage reads through the wire protocol (SPEC §3, §4, §7)."""

from __future__ import annotations

import asyncio
import math
import random

import grpc
import pytest
from google.protobuf import struct_pb2
from stepstream.v1 import runs_pb2
from wire import Stream, create_run, fseries, read_points, rpc_reason, sseries

pytestmark = pytest.mark.stores("sqlite", "postgresql")


def struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


async def log_steps(ingest, run_id: str, name: str, steps, values, writer: str = "w") -> Stream:
    s = Stream(ingest)
    await s.open(run_id, writer_id=writer)
    await s.send(fseries(name, list(steps), list(values)))
    return s


async def rewind(runs, run_id: str, step: float, **config) -> runs_pb2.Run:
    resp = await runs.RewindRun(
        runs_pb2.RewindRunRequest(run_id=run_id, step=step, config=struct(config))
    )
    return resp.run


async def summary(runs, **selector) -> dict[str, runs_pb2.SeriesSummary]:
    resp = await runs.ListSeries(
        runs_pb2.ListSeriesRequest(selector=runs_pb2.SeriesSelector(**selector))
    )
    return {s.name: s for s in resp.series}


def spiky(i: int) -> float:
    return i + (2 * math.sin(i / 3.0))


async def test_wandb_fork_example(runs, ingest):
    await create_run(runs, "run1")
    await log_steps(ingest, "run1", "metric", range(300), range(300), "w1")
    child = await create_run(runs, "run2", fork_run_id="run1", fork_step=200)
    (inc,) = child.incarnations
    assert inc.origin == runs_pb2.INCARNATION_ORIGIN_FORKED
    assert (inc.parent_run_id, inc.fork_step) == ("run1", 200)
    s = Stream(ingest)
    await s.open("run2")
    for i in range(200, 300):
        value = i if i < 250 else spiky(i)
        r = await s.send(
            fseries("metric", [i], [value]), fseries("additional_metric", [i], [i * 1.1])
        )
        if i == 200:  # the inherited point itself, re-sent: a duplicate
            assert (r.appended.accepted_count, r.appended.duplicate_count) == (1, 1)
        else:
            assert r.appended.accepted_count == 2
    steps, values = await read_points(runs, "run2", "metric")
    assert steps == list(range(300))
    assert values == [float(i) for i in range(250)] + [spiky(i) for i in range(250, 300)]
    assert await read_points(runs, "run2", "additional_metric") == (
        list(range(200, 300)),
        [i * 1.1 for i in range(200, 300)],
    )
    own, _ = await read_points(runs, "run2", "metric", own_points_only=True)
    assert own == list(range(201, 300))
    # Forking never changes the parent.
    assert await read_points(runs, "run1", "metric") == (list(range(300)), list(range(300)))


async def test_wandb_rewind_example_and_fork_from_rewound(runs, ingest):
    await create_run(runs, "run1", config=struct({"lr": 0.1}), tags=["base"], description="d")
    console = Stream(ingest)
    await console.open("run1", writer_id="console")
    await console.send(sseries("stdout", range(0, 300, 100), ["a", "b", "c"]))
    await log_steps(ingest, "run1", "metric", range(300), range(300), "w1")
    await runs.FinishRun(runs_pb2.FinishRunRequest(run_id="run1"))
    before = (await runs.GetRun(runs_pb2.GetRunRequest(run_id="run1"))).run
    old_incarnation = before.current_incarnation_id

    run = await rewind(runs, "run1", 200, batch=64)
    assert run.run_id == "run1" and run.state == runs_pb2.RUN_STATE_RUNNING
    assert dict(run.config) == {"lr": 0.1, "batch": 64}
    assert list(run.tags) == ["base"] and run.description == "d"
    assert run.incarnations[0].incarnation_id == old_incarnation
    archived, current = run.incarnations
    assert archived.archived and not current.archived
    assert (current.parent_incarnation_id, current.fork_step, current.origin) == (
        old_incarnation,
        200,
        runs_pb2.INCARNATION_ORIGIN_REWOUND,
    )
    assert (await summary(runs, run_id="run1"))["metric"].max == 200

    s = Stream(ingest)
    await s.open("run1", writer_id="w2")
    for i in range(200, 300):
        value = i if i < 250 else spiky(i)
        await s.send(fseries("metric", [i], [value]), fseries("additional_metric", [i], [i * 1.1]))
    steps, values = await read_points(runs, "run1", "metric")
    assert steps == list(range(300))
    assert values[250:] == [spiky(i) for i in range(250, 300)]
    # Summary recomputed from the new view; the archived history is intact.
    assert (await summary(runs, run_id="run1"))["metric"].max == max(values)
    assert await read_points(runs, "run1", "metric", incarnation_id=old_incarnation) == (
        list(range(300)),
        list(range(300)),
    )
    # Console logs are rewound too.
    assert (await read_points(runs, "run1", "stdout", strings=True)) == (
        [0, 100, 200],
        ["a", "b", "c"],
    )

    # Fork from the rewound run: only the current view is inherited.
    await create_run(runs, "forked", fork_run_id="run1", fork_step=500)
    f = Stream(ingest)
    await f.open("forked")
    for i in range(500, 1000):
        await f.send(fseries("metric", [i], [i * 3]))
    steps, values = await read_points(runs, "forked", "metric")
    assert steps == list(range(300)) + list(range(500, 1000))
    assert values[250:300] == [spiky(i) for i in range(250, 300)]


async def test_repeated_rewinds_lose_nothing(runs, ingest):
    await create_run(runs, "r")
    await log_steps(ingest, "r", "m", range(10), range(10), "a")
    first = (await runs.GetRun(runs_pb2.GetRunRequest(run_id="r"))).run.current_incarnation_id
    await rewind(runs, "r", 5)
    await log_steps(ingest, "r", "m", range(6, 12), [100] * 6, "b")
    second = (await runs.GetRun(runs_pb2.GetRunRequest(run_id="r"))).run.current_incarnation_id
    run = await rewind(runs, "r", 8)
    await log_steps(ingest, "r", "m", [9], [-1], "c")
    assert [i.archived for i in run.incarnations] == [True, True, False]
    assert (await read_points(runs, "r", "m", incarnation_id=first))[0] == list(range(10))
    assert await read_points(runs, "r", "m", incarnation_id=second, own_points_only=True) == (
        list(range(6, 12)),
        [100] * 6,
    )
    assert await read_points(runs, "r", "m") == (
        list(range(10)),
        [0, 1, 2, 3, 4, 5, 100, 100, 100, -1],
    )


async def test_neptune_step_rule_table(runs, ingest):
    await create_run(runs, "parent", experiment="swim-further")
    await log_steps(ingest, "parent", "loss", range(0, 91, 10), [1.0] * 10)  # max 90
    await log_steps(ingest, "parent", "acc", range(0, 151, 10), [0.5] * 16, "w2")  # max 150
    await create_run(runs, "child", experiment="swim-further", fork_run_id="parent", fork_step=100)
    s = Stream(ingest)
    await s.open("child")
    # ParentMaxStep < ChildStep <= ForkStep: OK.
    r = await s.send(fseries("loss", [95, 100], [0.2, 0.1]))
    assert r.appended.accepted_count == 2
    # ChildStep <= ParentMaxStep: STEP_NOT_INCREASING.
    r = await s.send(fseries("acc", [100], [0.9]))  # inherited acc stops at the fork step, 100
    (rej,) = r.appended.rejections
    assert (rej.reason, rej.floor) == ("STEP_NOT_INCREASING", 100.0)
    r = await s.send(fseries("acc", [100.1, 101], [0.9, 0.91]))
    assert r.appended.accepted_count == 2
    # A metric that does not exist in the parent may start anywhere; it passes on to descendants.
    r = await s.send(fseries("new_metric", [1], [0.123]))
    assert r.appended.accepted_count == 1
    await create_run(runs, "grandchild", fork_run_id="child", fork_step=200)
    assert await read_points(runs, "grandchild", "new_metric") == ([1], [0.123])
    g = Stream(ingest)
    await g.open("grandchild")
    r = await g.send(fseries("loss", [90, 100.5], [0, 0]))
    assert r.appended.rejections[0].floor == 100.0 and r.appended.accepted_count == 1


async def test_neptune_inherited_attributes(runs, ingest):
    await create_run(runs, "p", tags=["t1", "t2"], description="desc", config=struct({"lr": 0.1}))
    await runs.UpdateRunConfig(
        runs_pb2.UpdateRunConfigRequest(run_id="p", values=struct({"best": 0.9}))
    )
    child = await create_run(runs, "c", fork_run_id="p", fork_step=1, tags=["t3"])
    assert list(child.tags) == ["t1", "t2", "t3"]
    assert child.description == "desc"
    assert dict(child.config) == {} and dict(child.values) == {}
    both = await create_run(runs, "c2", fork_run_id="p", fork_step=1, inherit_configs=True)
    assert dict(both.config) == {"lr": 0.1} and dict(both.values) == {"best": 0.9}


async def test_parent_fallback_to_experiment_head(runs, ingest):
    await create_run(runs, "head", experiment="exp")
    await log_steps(ingest, "head", "m", [1, 2], [1, 2])
    resp = await runs.CreateRun(
        runs_pb2.CreateRunRequest(
            run_id="kid", experiment="exp", fork_run_id="not-yet", fork_step=5
        )
    )
    assert resp.parent_fallback
    assert resp.run.incarnations[0].parent_run_id == "head"
    assert resp.run.experiment_head
    assert (await read_points(runs, "kid", "m"))[0] == [1, 2]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await runs.CreateRun(
            runs_pb2.CreateRunRequest(
                run_id="orphan", experiment="empty", fork_run_id="nope", fork_step=5
            )
        )
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert rpc_reason(exc.value) == "RUN_NOT_FOUND"
    assert exc.value.details() == (
        "RUN_NOT_FOUND: fork parent run 'nope' not found in project 'default' and experiment"
        " 'empty' has no head run"
    )


async def test_experiment_lineage_read(runs, ingest):
    await create_run(runs, "a", experiment="e")
    await log_steps(ingest, "a", "m", range(0, 10), range(0, 10))
    await create_run(runs, "b", experiment="e", fork_run_id="a", fork_step=4)
    await log_steps(ingest, "b", "m", range(5, 8), [50, 60, 70])
    steps, values = await read_points(runs, "", "m", experiment="e")
    assert steps == list(range(8)) and values[5:] == [50, 60, 70]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await read_points(runs, "", "m", experiment="nothing")
    assert rpc_reason(exc.value) == "EXPERIMENT_NOT_FOUND"


async def test_fork_is_a_snapshot(runs, ingest):
    await create_run(runs, "p")
    s = await log_steps(ingest, "p", "a", range(11), range(11))
    await create_run(runs, "c", fork_run_id="p", fork_step=100)
    # The parent goes on below the fork step: an existing series and one the child never saw.
    await s.send(fseries("a", range(11, 50), range(11, 50)), fseries("b", [5], [5]))
    assert (await read_points(runs, "c", "a"))[0] == list(range(11))
    assert (await read_points(runs, "c", "b"))[0] == []
    c = Stream(ingest)
    await c.open("c")
    r = await c.send(fseries("a", [11], [-11]), fseries("b", [1], [1]))
    assert r.appended.accepted_count == 2  # the child's floors never moved under it
    assert (await read_points(runs, "p", "a"))[1][11] == 11


async def test_fork_from_immutable_incarnation(runs, ingest):
    await create_run(runs, "p")
    await log_steps(ingest, "p", "m", range(10), range(10))
    old = (await runs.GetRun(runs_pb2.GetRunRequest(run_id="p"))).run.current_incarnation_id
    await rewind(runs, "p", 2)
    child = await create_run(runs, "c", fork_incarnation_id=old, fork_step=6)
    assert child.incarnations[0].parent_incarnation_id == old
    assert (await read_points(runs, "c", "m"))[0] == list(range(7))


async def test_three_hop_lineage_matches_reference(runs, ingest):
    rng = random.Random(7)
    names = ["loss", "acc", "lr"]
    reference: dict[str, dict[str, dict[float, float]]] = {}
    parent = None
    for hop in range(4):
        run_id = f"hop{hop}"
        fork_step = None
        if parent is None:
            await create_run(runs, run_id)
            view = {n: {} for n in names}
        else:
            fork_step = float(rng.randint(20, 80))
            await create_run(runs, run_id, fork_run_id=parent, fork_step=fork_step)
            view = {
                n: {s: v for s, v in reference[parent][n].items() if s <= fork_step} for n in names
            }
        s = Stream(ingest)
        await s.open(run_id)
        for _ in range(5):
            batch = []
            for n in names:
                if rng.random() < 0.3:
                    continue
                floor = max(view[n], default=-math.inf)
                start = (floor if floor > -math.inf else rng.randint(-5, 5)) + rng.choice(
                    [0.5, 1, 3]
                )
                steps = [start + k for k in range(rng.randint(1, 20))]
                vals = [rng.random() for _ in steps]
                view[n].update(zip(steps, vals, strict=True))
                batch.append(fseries(n, steps, vals))
            r = await s.send(*batch)
            assert not r.appended.rejections
        reference[run_id] = view
        parent = run_id
    for run_id, view in reference.items():
        for n in names:
            expected = sorted(view[n].items())
            steps, values = await read_points(runs, run_id, n)
            assert list(zip(steps, values, strict=True)) == expected, (run_id, n)


async def test_rewind_under_concurrent_writers(runs, ingest):
    await create_run(runs, "r")
    writers = [Stream(ingest) for _ in range(3)]
    for i, w in enumerate(writers):
        await w.open("r", writer_id=f"w{i}")
    acks: list[tuple[int, int, str]] = []  # (writer, batch index, incarnation)
    started = [asyncio.Event() for _ in writers]
    done = asyncio.Event()

    async def write(i: int, w: Stream) -> None:
        after = 0
        for k in range(5000):  # bounded; in practice ends ~10 batches after the rewind
            step = float(k * 10 + i)  # each writer its own series: every batch lands whole
            r = await w.send(fseries(f"s{i}", [step, step + 0.5], [k, k]))
            acks.append((i, k, r.appended.incarnation_id))
            if k == 20:
                started[i].set()
            if done.is_set():
                after += 1
                if after == 10:
                    return

    async def do_rewind() -> runs_pb2.Run:
        for e in started:
            await e.wait()
        run = await rewind(runs, "r", 100)  # the writers keep streaming meanwhile
        done.set()
        return run

    *_, run = await asyncio.gather(*(write(i, w) for i, w in enumerate(writers)), do_rewind())
    old, new = (i.incarnation_id for i in run.incarnations)
    seen = {old: 0, new: 0}
    for i, k, incarnation in acks:
        seen[incarnation] += 1
        step = float(k * 10 + i)
        own_old = await read_points(runs, "", f"s{i}", incarnation_id=old, own_points_only=True)
        own_new = await read_points(runs, "", f"s{i}", incarnation_id=new, own_points_only=True)
        in_old = step in own_old[0] and step + 0.5 in own_old[0]
        in_new = step in own_new[0] and step + 0.5 in own_new[0]
        part_old = step in own_old[0] or step + 0.5 in own_old[0]
        part_new = step in own_new[0] or step + 0.5 in own_new[0]
        # Wholly in the incarnation that acknowledged it, nothing of it in the other one.
        assert (
            (in_old, part_new) == (True, False)
            if incarnation == old
            else (in_new, part_old) == (True, False)
        )
    assert seen[old] > 0 and seen[new] > 0


async def test_overwrite_and_single_value_digitalhub(runs, ingest):
    await create_run(runs, "r")
    s = Stream(ingest)
    await s.open("r")
    await s.send(fseries("loss", values=[0.002], assign=True))
    await s.send(fseries("loss", values=[0.0019], assign=True))
    await s.send(fseries("loss", values=[0.0018, 0.0015], assign=True))
    assert await read_points(runs, "r", "loss") == ([0, 1, 2, 3], [0.002, 0.0019, 0.0018, 0.0015])
    await runs.UpdateRunConfig(
        runs_pb2.UpdateRunConfigRequest(run_id="r", values=struct({"accuracy": 0.9}))
    )
    run = (await runs.GetRun(runs_pb2.GetRunRequest(run_id="r"))).run
    assert dict(run.values) == {"accuracy": 0.9}
    await s.send(fseries("accuracy", values=[0.7, 0.75], assign=True))
    r = await s.send(_overwrite(fseries("accuracy", values=[0.8, 0.9], assign=True)))
    assert r.appended.assigned_steps[0].first_step == 0
    assert await read_points(runs, "r", "accuracy") == ([0, 1], [0.8, 0.9])
    summaries = await summary(runs, run_id="r")
    assert (
        summaries["accuracy"].count,
        summaries["accuracy"].max,
        summaries["accuracy"].generation,
    ) == (2, 0.9, 1)
    old = await read_points(runs, "r", "accuracy", generation=0)
    assert old == ([0, 1], [0.7, 0.75])


def _overwrite(series):
    series.overwrite = True
    return series


async def test_overwrite_hides_inherited_points(runs, ingest):
    await create_run(runs, "p")
    await log_steps(ingest, "p", "m", range(5), range(5))
    await create_run(runs, "c", fork_run_id="p", fork_step=10)
    s = Stream(ingest)
    await s.open("c")
    await s.send(_overwrite(fseries("m", [100], [1])))
    assert await read_points(runs, "c", "m") == ([100], [1])
    r = await s.send(fseries("m", [50], [1]))
    assert r.appended.rejections[0].floor == 100


async def test_downsampling_keeps_extremes_and_non_finite(runs, ingest):
    await create_run(runs, "r")
    s = Stream(ingest)
    await s.open("r")
    # Two chunks, 50 points per bucket (narrower than a stats block: read point by point);
    # the spikes in the first chunk and the second.
    n, chunk, max_points = 20_000, 10_000, 400
    values = [math.sin(i / 200) for i in range(n)]
    values[2_469] = 50.0
    values[10_864] = -math.inf
    values[15_555] = math.nan
    for start in range(0, n, chunk):
        await s.send(fseries("m", range(start, start + chunk), values[start : start + chunk]))
    steps, got = await read_points(runs, "r", "m", max_points=max_points)
    assert len(steps) <= max_points
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == n - 1
    assert 2_469 in steps and 10_864 in steps and 15_555 in steps
    assert got[steps.index(2_469)] == 50.0 and got[steps.index(10_864)] == -math.inf
    assert math.isnan(got[steps.index(15_555)])
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await read_points(runs, "r", "m", max_points=3)
    assert rpc_reason(exc.value) == "INVALID_MAX_POINTS"


async def test_rewind_errors(runs):
    await create_run(runs, "r")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await rewind(runs, "r", math.nan)
    assert rpc_reason(exc.value) == "INVALID_REWIND_STEP"
    assert exc.value.details() == "INVALID_REWIND_STEP: rewind step must be finite, got nan"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await rewind(runs, "ghost", 1)
    assert rpc_reason(exc.value) == "RUN_NOT_FOUND"


async def test_selector_needs_exactly_one_target(runs):
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await runs.ListSeries(
            runs_pb2.ListSeriesRequest(selector=runs_pb2.SeriesSelector(run_id="a", experiment="e"))
        )
    assert rpc_reason(exc.value) == "INVALID_SELECTOR"
    assert exc.value.details() == (
        "INVALID_SELECTOR: give exactly one of run_id, incarnation_id and experiment;"
        " got run_id, experiment"
    )


async def test_rewind_sets_description_from_config(runs):
    await create_run(runs, "r", description="old")
    run = await rewind(runs, "r", 0, **{"sys/description": "after rewind", "lr": 0.5})
    assert run.description == "after rewind"
    assert dict(run.config) == {"lr": 0.5}
