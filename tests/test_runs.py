"""RunService: create, lifecycle, config, tags, listing (SPEC §1, §5)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from stepstream.v1 import runs_pb2
from wire import Stream, create_run, fseries, rpc_reason

pytestmark = pytest.mark.stores("sqlite", "postgresql")


def struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


async def test_create_and_get(runs):
    run = await create_run(
        runs,
        "r1",
        experiment="exp",
        tags=["b", "a"],
        description="first",
        config=struct({"lr": 0.1}),
    )
    assert run.state == runs_pb2.RUN_STATE_RUNNING
    assert list(run.tags) == ["a", "b"]
    assert run.current_incarnation_id.startswith("inc-")
    (inc,) = run.incarnations
    assert inc.origin == runs_pb2.INCARNATION_ORIGIN_CREATED and not inc.archived
    got = (await runs.GetRun(runs_pb2.GetRunRequest(run_id="r1"))).run
    assert got.description == "first"
    assert dict(got.config) == {"lr": 0.1}
    assert got.project == "default" and got.experiment == "exp"


async def test_generated_run_id_and_get_if_exists(runs):
    a = (await runs.CreateRun(runs_pb2.CreateRunRequest())).run
    b = (await runs.CreateRun(runs_pb2.CreateRunRequest())).run
    assert a.run_id != b.run_id and a.run_id.startswith("run-")
    again = await runs.CreateRun(runs_pb2.CreateRunRequest(run_id=a.run_id, get_if_exists=True))
    assert again.existed and again.run.current_incarnation_id == a.current_incarnation_id


@pytest.mark.parametrize(
    ("rpc", "request_type", "state"),
    [
        ("StopRun", runs_pb2.StopRunRequest, runs_pb2.RUN_STATE_STOPPED),
        ("FinishRun", runs_pb2.FinishRunRequest, runs_pb2.RUN_STATE_FINISHED),
        ("FailRun", runs_pb2.FailRunRequest, runs_pb2.RUN_STATE_FAILED),
    ],
)
async def test_lifecycle(runs, ingest, rpc, request_type, state):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    kw = {"reason": "CUDA OOM"} if rpc == "FailRun" else {}
    run = (await getattr(runs, rpc)(request_type(run_id="r1", **kw))).run
    assert run.state == state
    assert run.failure_reason == kw.get("reason", "")
    refused = await s.send(fseries("m", [1], [1]))
    assert refused.error.message.startswith("run 'r1' is ")
    run = (await runs.ResumeRun(runs_pb2.ResumeRunRequest(run_id="r1"))).run
    assert run.state == runs_pb2.RUN_STATE_RUNNING and run.failure_reason == ""
    assert (await s.send(fseries("m", [1], [1]))).appended.accepted_count == 1


async def test_config_merge_description_and_tags(runs):
    await create_run(runs, "r1", config=struct({"lr": 0.1, "opt": "adam"}))
    run = (
        await runs.UpdateRunConfig(
            runs_pb2.UpdateRunConfigRequest(
                run_id="r1", config=struct({"lr": 0.01, "batch": 64, "sys/description": "tuned"})
            )
        )
    ).run
    assert dict(run.config) == {"lr": 0.01, "opt": "adam", "batch": 64}
    assert run.description == "tuned"
    run = (
        await runs.UpdateRunTags(
            runs_pb2.UpdateRunTagsRequest(run_id="r1", add=["x", "y"], remove=["x", "z"])
        )
    ).run
    assert list(run.tags) == ["y"]


async def test_list_runs_by_project_and_experiment(runs):
    await create_run(runs, "a", experiment="e1")
    await create_run(runs, "b", experiment="e2")
    await create_run(runs, "c", experiment="e1", project="other")
    await create_run(runs, "d", experiment="e1")
    all_default = (await runs.ListRuns(runs_pb2.ListRunsRequest())).runs
    assert [r.run_id for r in all_default] == ["a", "b", "d"]
    e1 = (await runs.ListRuns(runs_pb2.ListRunsRequest(experiment="e1"))).runs
    assert [r.run_id for r in e1] == ["a", "d"]
    other = (await runs.ListRuns(runs_pb2.ListRunsRequest(project="other"))).runs
    assert [r.run_id for r in other] == ["c"]


async def test_list_series_summary(runs, ingest):
    import math

    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    await s.send(fseries("loss", [1, 2, 3, 4], [3.0, math.nan, 1.0, 2.0]))
    resp = await runs.ListSeries(
        runs_pb2.ListSeriesRequest(selector=runs_pb2.SeriesSelector(run_id="r1"))
    )
    (summary,) = resp.series
    assert (
        summary.name,
        summary.count,
        summary.last_step,
        summary.last,
        summary.min,
        summary.max,
    ) == (
        "loss",
        4,
        4.0,
        2.0,
        1.0,
        3.0,
    )


async def test_read_step_range(runs, ingest):
    from wire import read_points

    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    await s.send(fseries("m", range(10), range(10)))
    await s.send(fseries("m", range(10, 20), range(10, 20)))
    steps, _ = await read_points(runs, "r1", "m", step_min=5, step_max=12)
    assert steps == [5, 6, 7, 8, 9, 10, 11, 12]


async def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "stepstream.v1.IngestService", "stepstream.v1.RunService"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = refl.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    resp = await call.read()
    names = {s.name for s in resp.list_services_response.service}
    assert {
        "stepstream.v1.IngestService",
        "stepstream.v1.RunService",
        "grpc.health.v1.Health",
    } <= names
    await call.done_writing()


async def test_not_found_reason_on_unknown_incarnation(runs):
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await runs.ListSeries(
            runs_pb2.ListSeriesRequest(selector=runs_pb2.SeriesSelector(incarnation_id="inc-x"))
        )
    assert rpc_reason(exc.value) == "INCARNATION_NOT_FOUND"
