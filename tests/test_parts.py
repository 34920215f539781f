"""A big batch committed in parts across groups (docs/faults.md, section 5): its
acknowledgement and its stored points are those of the same batch committed whole, after a
kill -9 between parts, a replay, a part that landed unseen, and a stop between parts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import free_port
from parts_serve import SMALL
from procs import ServiceProcess, wait_serving
from stepstream.v1 import ingest_pb2, ingest_pb2_grpc, runs_pb2, runs_pb2_grpc
from stepstream_server.config import Settings
from stepstream_server.server import Service
from stepstream_server.store import StoreUnavailable, open_store
from stepstream_server.store.parts_rule import read_partial
from wire import Stream, create_run, fseries, read_points, sseries

pytestmark = pytest.mark.stores("sqlite", "postgresql")

NAMES = ["long", "auto", "s0", "s1", "s2", "s3", "s4", "ow", "old"]


def preludes() -> list[list[Any]]:
    """Two small batches: old's floor at 8 (9 points: cut in two parts), ow's 7 points."""
    return [
        [fseries("old", range(9), [float(i) for i in range(9)])],
        [fseries("ow", range(7), [-1.0] * 7)],
    ]


def big() -> list[Any]:
    """55 points in 10 entries, cut by SMALL into 9 parts: inside an explicit series, inside
    an assigned one, inside an overwrite, and inside a rejected prefix (old: steps 0..7 are
    below its floor 8, step 8 re-sends the point at the floor, 9..11 are new)."""
    return [
        fseries("long", range(20), [float(i) for i in range(20)]),
        fseries("auto", values=[2.0] * 10, assign=True),
        *[fseries(f"s{i}", [1], [float(i)]) for i in range(5)],
        sseries("text", [1, 2, 3], ["a", "b", "c"]),
        ingest_pb2.FloatSeries(name="ow", steps=range(5), values=[9.0] * 5, overwrite=True),
        fseries("old", range(12), [float(i) for i in range(12)]),
    ]


def ack_view(resp: ingest_pb2.AppendPointsResponse) -> tuple[Any, ...]:
    a = resp.appended
    assert resp.WhichOneof("result") == "appended", resp
    return (
        a.accepted_count,
        a.duplicate_count,
        [(r.series, r.reason, r.count, r.first_step, r.last_step, r.floor) for r in a.rejections],
        [(s.series, s.first_step, s.count) for s in a.assigned_steps],
    )


async def contents(runs: runs_pb2_grpc.RunServiceStub, run_id: str) -> dict[str, Any]:
    out = {n: await read_points(runs, run_id, n) for n in NAMES}
    out["text"] = await read_points(runs, run_id, "text", strings=True)
    return out


async def write_reference(runs: Any, ingest: Any, run_id: str) -> tuple[Any, dict[str, Any]]:
    """The batch committed whole (a lone writer with default limits is not cut)."""
    await create_run(runs, run_id)
    s = Stream(ingest)
    await s.open(run_id, writer_id="ref")
    for p in preludes():
        await s.send(*p)
    ack = ack_view(await s.send(*big()))
    await s.close()
    return ack, await contents(runs, run_id)


def cut_small(svc: Service) -> None:
    svc.worker.limits = replace(svc.worker.limits, **SMALL)


async def test_parted_batch_acks_and_stores_what_a_whole_one_does(service, runs, ingest):
    ref_ack, ref = await write_reference(runs, ingest, "whole")
    cut_small(service)
    await create_run(runs, "parts")
    s = Stream(ingest)
    await s.open("parts", writer_id="w")
    for p in preludes():
        await s.send(*p)
    groups = service.worker.stats["groups"]
    ack = ack_view(await s.send(*big()))
    assert service.worker.stats["groups"] - groups >= 9  # it did go in parts
    assert ack == ref_ack
    assert ack[0] == 55 - 8 - 1 and ack[1] == 1  # old: 8 below the floor, 1 re-sent at it
    assert ack[2] == [("old", "STEP_NOT_INCREASING", 8, 0.0, 7.0, 8.0)]  # one, across a cut
    assert await contents(runs, "parts") == ref
    assert ref["ow"] == ([0, 1, 2, 3, 4], [9.0] * 5)  # the overwrite's later slices kept
    assert ref["auto"][0] == list(range(10))


async def test_replay_of_a_completed_parted_batch_is_a_duplicate(service, runs, ingest):
    cut_small(service)
    await create_run(runs, "r")
    s = Stream(ingest)
    await s.open("r", writer_id="w")
    first = await s.send(*big())
    before = await contents(runs, "r")
    again = await s.send(*big(), sequence=1)
    assert again.appended.duplicate_batch
    assert ack_view(again) == ack_view(first)
    s2 = Stream(ingest)  # and on a new stream, from the stored acknowledgement
    opened = await s2.open("r", writer_id="w")
    assert opened.opened.last_committed_sequence == 1
    third = await s2.send(*big(), sequence=1)
    assert third.appended.duplicate_batch and ack_view(third) == ack_view(first)
    assert await contents(runs, "r") == before


async def test_part_that_landed_unseen_is_not_applied_twice(service, runs, ingest):
    """The third part's COMMIT lands but its caller hears "connection lost" (the seam: the
    store's commit call). The worker holds the group, judges the part again, the store
    refuses it (the progress is past its start), and the worker finds it stored."""
    ref_ack, ref = await write_reference(runs, ingest, "whole")
    cut_small(service)
    sync = service.worker.store.sync
    real = sync.commit
    calls = {"n": 0}

    def commit(parts: Any) -> Any:
        refused = real(parts)
        if any(p.run_id == "parts" for p in parts):
            calls["n"] += 1
            if calls["n"] == 5:  # the preludes' three parts, then the big batch's second
                raise StoreUnavailable(RuntimeError("connection lost during COMMIT (test)"))
        return refused

    sync.commit = commit
    try:
        await create_run(runs, "parts")
        s = Stream(ingest)
        await s.open("parts", writer_id="w")
        for p in preludes():
            await s.send(*p)
        refused = service.worker.stats["refused"]
        ack = ack_view(await s.send(*big()))
    finally:
        sync.commit = real
    assert calls["n"] > 5
    assert service.worker.stats["refused"] > refused  # the replayed part was refused
    assert service.worker.outage.outages >= 1
    assert ack == ref_ack
    assert await contents(runs, "parts") == ref


BETWEEN_PARTS = {
    # what happens to the run after the first part landed; the reason for the rest; the
    # steps of the run's current view afterwards
    "stopped": (
        lambda runs: runs.StopRun(runs_pb2.StopRunRequest(run_id="r")),
        "RUN_NOT_ACTIVE",
        list(range(7)),
    ),
    # A batch lands wholly in one incarnation (SPEC section 4): nothing of it in the new
    # incarnation, what landed stays in the archived one.
    "rewound": (
        lambda runs: runs.RewindRun(runs_pb2.RewindRunRequest(run_id="r", step=3)),
        "RUN_REWOUND",
        [0, 1, 2, 3],
    ),
}


@pytest.mark.parametrize("change", sorted(BETWEEN_PARTS))
async def test_run_changed_between_parts(service, runs, ingest, change):
    """The run is stopped or rewound after the first part landed: the rest of the batch is
    answered with the reason as rejections; what landed stays, in the incarnation it landed in."""
    act, reason, view = BETWEEN_PARTS[change]
    cut_small(service)
    worker = service.worker
    landed, go = asyncio.Event(), asyncio.Event()
    real_landed, real_judge = worker._part_landed, worker.judge.judge

    def part_landed(item: Any, outcome: Any) -> int:
        landed.set()
        return real_landed(item, outcome)

    async def judge(group: Any) -> Any:
        if any(p.split is not None and p.start != (0, 0) for p in group):
            await go.wait()
        return await real_judge(group)

    worker._part_landed = part_landed  # type: ignore[method-assign]
    worker.judge.judge = judge  # type: ignore[method-assign]
    first = (await create_run(runs, "r")).current_incarnation_id
    s = Stream(ingest)
    await s.open("r", writer_id="w")
    batch = ingest_pb2.PointBatch(sequence=1)
    batch.float_series.extend([fseries("long", range(20), [1.0] * 20)])
    await s.call.write(ingest_pb2.AppendPointsRequest(batch=batch))
    await asyncio.wait_for(landed.wait(), 30)
    await act(runs)
    go.set()
    a = (await asyncio.wait_for(s.call.read(), 30)).appended
    assert (a.accepted_count, a.incarnation_id) == (7, first)
    assert [(r.series, r.reason, r.count) for r in a.rejections] == [("long", reason, 13)]
    assert (await read_points(runs, "r", "long"))[0] == view
    again = await s.send(fseries("long", range(20), [1.0] * 20), sequence=1)
    assert again.appended.duplicate_batch and again.appended.accepted_count == 7


async def test_kill9_between_parts_resumes_exactly_once(
    tmp_path: Path, settings: Settings, store_url: str | None
) -> None:
    """Killed with the big batch's first parts durable (the third part that did not finish
    its batch: the preludes' first, then the big batch's two); the restarted service resumes the
    re-sent batch at the stored progress: the same acknowledgement and points as the batch
    committed whole, nothing twice, no step assigned twice."""
    data = tmp_path / "svc"
    marker = tmp_path / "between"
    extra = ["--store", store_url] if store_url else []
    port = free_port()
    log = open(tmp_path / "parts.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "parts_serve.py"),
            "serve",
            "--address",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PARTS_STOP_AFTER": "3", "PARTS_MARKER": str(marker)},
    )
    log.close()
    try:
        wait_serving(f"127.0.0.1:{port}", 30, proc)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            runs, ingest = runs_pb2_grpc.RunServiceStub(ch), ingest_pb2_grpc.IngestServiceStub(ch)
            await create_run(runs, "parts")
            s = Stream(ingest)
            await s.open("parts", writer_id="trainer")
            for p in preludes():
                await s.send(*p)
            batch = ingest_pb2.PointBatch(sequence=3)
            for e in big():
                if isinstance(e, ingest_pb2.StringSeries):
                    batch.string_series.append(e)
                else:
                    batch.float_series.append(e)
            await s.call.write(ingest_pb2.AppendPointsRequest(batch=batch))
            deadline = time.monotonic() + 60
            while not marker.exists():
                assert time.monotonic() < deadline, "the service never stopped between parts"
                assert proc.poll() is None
                await asyncio.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    # Between parts indeed: the store holds the first parts' progress, not the sequence.
    url = Settings(address="", data_dir=data, redis_url=None, store=store_url).store_url
    store = open_store(url)
    try:
        assert store.writer_sequence("default", "parts", "trainer") == 2
        found = read_partial(store.writer_outcome("default", "parts", "trainer", 3))
        assert found is not None and found[1].accepted > 0
    finally:
        store.close()
    svc = ServiceProcess(data, None, free_port(), extra=extra).start()
    try:
        async with grpc.aio.insecure_channel(svc.address) as ch:
            runs, ingest = runs_pb2_grpc.RunServiceStub(ch), ingest_pb2_grpc.IngestServiceStub(ch)
            ref_ack, ref = await write_reference(runs, ingest, "whole")
            s = Stream(ingest)
            opened = await s.open("parts", writer_id="trainer")
            assert opened.opened.last_committed_sequence == 2
            ack = ack_view(await s.send(*big(), sequence=3))
            assert ack == ref_ack
            assert await contents(runs, "parts") == ref
            again = await s.send(*big(), sequence=3)
            assert again.appended.duplicate_batch and ack_view(again) == ref_ack
    finally:
        assert svc.terminate() == 0


async def test_stream_cancelled_between_parts_commits_its_batches(service, runs, ingest):
    """The client cancels its stream after the big batch's first part landed, with a later
    batch queued: the rest of the parts and the later batch still commit, in order, and a
    re-send of the big batch on a new stream is the same acknowledgement, as a duplicate."""
    ref_ack, ref = await write_reference(runs, ingest, "whole")
    cut_small(service)
    worker = service.worker
    landed, go = asyncio.Event(), asyncio.Event()
    real_landed, real_judge = worker._part_landed, worker.judge.judge

    def part_landed(item: Any, outcome: Any) -> int:
        if item.sequence == 3:
            landed.set()
        return real_landed(item, outcome)

    async def judge(group: Any) -> Any:
        if any(p.sequence == 3 and p.start != (0, 0) for p in group):
            await go.wait()
        return await real_judge(group)

    worker._part_landed = part_landed  # type: ignore[method-assign]
    worker.judge.judge = judge  # type: ignore[method-assign]
    await create_run(runs, "parts")
    s = Stream(ingest)
    await s.open("parts", writer_id="w")
    for p in preludes():
        await s.send(*p)
    for seq, entries in ((3, big()), (4, [fseries("after", [1], [4.0])])):
        batch = ingest_pb2.PointBatch(sequence=seq)
        for e in entries:
            if isinstance(e, ingest_pb2.StringSeries):
                batch.string_series.append(e)
            else:
                batch.float_series.append(e)
        await s.call.write(ingest_pb2.AppendPointsRequest(batch=batch))
    await asyncio.wait_for(landed.wait(), 30)
    while [p.sequence for p in worker._queue] != [3, 4]:  # the rest of 3, and 4, queued
        await asyncio.sleep(0.01)
    s.call.cancel()
    while service.ingest.open_streams:
        await asyncio.sleep(0.01)
    go.set()
    while worker._queue or worker._again or worker._busy:
        await asyncio.sleep(0.01)
    s2 = Stream(ingest)
    opened = await s2.open("parts", writer_id="w")
    assert opened.opened.last_committed_sequence == 4
    again = await s2.send(*big(), sequence=3)
    assert again.appended.duplicate_batch and ack_view(again) == ref_ack
    assert await contents(runs, "parts") == ref
    assert await read_points(runs, "parts", "after") == ([1], [4.0])
    await s2.close()


async def test_parts_held_out_of_order_go_back_in_order(service, runs, ingest):
    """Part 2 is held (the store failed while it was judged, during part 1's commit) before
    part 1, which was committing, is held too: both go back in their batch's order, and
    nothing is refused (ordered by sequence alone, part 2 went first and was refused)."""
    import threading

    ref_ack, ref = await write_reference(runs, ingest, "whole")
    cut_small(service)
    worker = service.worker
    sync = worker.store.sync
    real_commit, real_judge = sync.commit, worker.judge.judge
    committing, judged = asyncio.Event(), threading.Event()
    loop = asyncio.get_running_loop()
    held = {"commit": 0, "judge": 0}

    def commit(parts: Any) -> Any:
        writers = [w for p in parts for w in p.writers if p.run_id == "parts"]
        if not held["commit"] and any(w.sequence == 3 for w in writers):
            held["commit"] += 1  # the big batch's first part: not stored
            loop.call_soon_threadsafe(committing.set)
            judged.wait(30)
            raise StoreUnavailable(RuntimeError("disk I/O error (test)"))
        return real_commit(parts)

    async def judge(group: Any) -> Any:
        second = [p for p in group if p.split is not None and p.start != (0, 0)]
        if second and not held["judge"]:
            held["judge"] += 1  # part 2, judged while part 1 commits
            await committing.wait()
            judged.set()
            raise StoreUnavailable(RuntimeError("disk I/O error (test)"))
        return await real_judge(group)

    await create_run(runs, "parts")
    s = Stream(ingest)
    await s.open("parts", writer_id="w")
    for p in preludes():
        await s.send(*p)
    sync.commit = commit
    worker.judge.judge = judge  # type: ignore[method-assign]
    try:
        ack = ack_view(await s.send(*big()))
    finally:
        sync.commit = real_commit
        worker.judge.judge = real_judge  # type: ignore[method-assign]
    assert held == {"commit": 1, "judge": 1}
    assert worker.stats["refused"] == 0
    assert ack == ref_ack
    assert await contents(runs, "parts") == ref


def wide(n: int) -> Any:
    return ingest_pb2.FloatBlock(names=[f"w{i}" for i in range(n)], steps=[1.0], values=[1.0] * n)


async def light_batches_held(service: Service, runs: Any, ingest: Any) -> tuple[Stream, Any]:
    """A light writer whose first batch is being judged (held there until `go` is set)."""
    worker = service.worker
    entered, go = asyncio.Event(), asyncio.Event()
    real = worker.judge.judge

    async def judge(group: Any) -> Any:
        if any(p.writer.writer_id == "light" for p in group) and not go.is_set():
            entered.set()
            await go.wait()
        return await real(group)

    worker.judge.judge = judge  # type: ignore[method-assign]
    await create_run(runs, "light")
    light = Stream(ingest)
    await light.open("light", writer_id="light")
    for seq in (1, 2):
        batch = ingest_pb2.PointBatch(sequence=seq)
        batch.float_series.append(fseries("m", [seq], [1.0]))
        await light.call.write(ingest_pb2.AppendPointsRequest(batch=batch))
    await asyncio.wait_for(entered.wait(), 30)
    return light, go


async def test_a_big_batch_is_cut_beside_a_light_writer_in_flight(service, runs, ingest):
    """Default limits: the light writer's batch is committing when the wide batch is taken,
    so the wide one goes in parts of at most `max_part_entries` (128) series."""
    worker = service.worker
    light, go = await light_batches_held(service, runs, ingest)
    await create_run(runs, "heavy")
    heavy = Stream(ingest)
    await heavy.open("heavy", writer_id="heavy")
    sent = asyncio.create_task(heavy.send(wide(600)))
    while worker._queued_points < 600:
        await asyncio.sleep(0.01)
    groups = worker.stats["groups"]
    go.set()
    assert (await sent).appended.accepted_count == 600
    assert worker.stats["groups"] - groups >= 1 + 5  # the light group, then five parts
    assert [(await light.call.read()).appended.accepted_count for _ in (1, 2)] == [1, 1]
    await heavy.close()
    await light.close()


async def test_a_lone_big_batch_is_whole_beside_a_writer_that_went_away(service, runs, ingest):
    """The light writer's stream is cancelled with its batches in flight; they commit, and
    afterwards a lone wide batch is committed whole (the light writer no longer counts: it
    used to stay in the light set by id, and a lone 100,000-series batch went in 391 parts).
    Only batches in flight count here: no window of recent answers."""
    worker = service.worker
    worker.limits = replace(worker.limits, light_recent=0.0)
    light, go = await light_batches_held(service, runs, ingest)
    light.call.cancel()
    while service.ingest.open_streams:
        await asyncio.sleep(0.01)
    go.set()
    while worker._queue or worker._again or worker._busy:
        await asyncio.sleep(0.01)
    assert await read_points(runs, "light", "m") == ([1, 2], [1.0, 1.0])
    await create_run(runs, "heavy")
    heavy = Stream(ingest)
    await heavy.open("heavy", writer_id="heavy")
    decided: list[bool] = []
    real_cuts = worker._cuts

    def cuts(item: Any) -> bool:
        decided.append(real_cuts(item))
        return decided[-1]

    worker._cuts = cuts  # type: ignore[method-assign]
    assert (await heavy.send(wide(600))).appended.accepted_count == 600
    # Asked once per group it rode in (a group held by the store is judged again), never cut.
    assert decided and not any(decided)
    await heavy.close()


async def test_a_big_batch_is_cut_right_after_a_light_writers_answer(service, runs, ingest):
    """A light stream sending one batch at a time has none in flight between an answer and
    its next batch: a big batch taken then is cut all the same (the window of recent answers,
    `light_recent`: wide here, so that a slow machine does not outlast it)."""
    worker = service.worker
    worker.limits = replace(worker.limits, light_recent=3600.0)
    await create_run(runs, "light")
    light = Stream(ingest)
    await light.open("light", writer_id="light")
    assert (await light.send(fseries("m", [1], [1.0]))).appended.accepted_count == 1
    assert not worker._writers[("default", "light", "light")].waiting
    await create_run(runs, "heavy")
    heavy = Stream(ingest)
    await heavy.open("heavy", writer_id="heavy")
    groups = worker.stats["groups"]
    assert (await heavy.send(wide(600))).appended.accepted_count == 600
    assert worker.stats["groups"] - groups == 5  # parts of 128 series, and one of 88
    assert (await light.send(fseries("m", [2], [1.0]))).appended.accepted_count == 1
    await heavy.close()
    await light.close()


async def test_parts_leave_a_group_with_light_batches_once(service, runs, ingest):
    """A light batch does not share its commit with a part (128 new series of store work):
    the parts wait for the next group, and only for one, so that a light writer with a batch
    in every group never starves them (`IngestWorker._add_parts`)."""
    worker = service.worker
    worker.limits = replace(worker.limits, light_recent=3600.0)
    await create_run(runs, "light")
    await create_run(runs, "heavy")
    light = Stream(ingest)
    await light.open("light", writer_id="light")
    heavy = Stream(ingest)
    await heavy.open("heavy", writer_id="heavy")
    seen: list[list[tuple[str, bool]]] = []
    held, go = asyncio.Event(), asyncio.Event()
    real = worker.judge.judge

    async def queued(name: str, seq: int) -> None:  # in flight: queued, or taken already
        while seq not in getattr(worker._writers.get(("default", name, name)), "inflight", {}):
            await asyncio.sleep(0.01)

    async def send_light(seq: int) -> None:
        batch = ingest_pb2.PointBatch(sequence=seq)
        batch.float_series.append(fseries("m", [seq], [1.0]))
        await light.call.write(ingest_pb2.AppendPointsRequest(batch=batch))
        await queued("light", seq)

    async def judge(group: Any) -> Any:
        seen.append(sorted((p.writer.writer_id, p.split is not None) for p in group))
        if len(seen) == 1:  # the first light batch: held until the wide one is queued
            held.set()
            await go.wait()
        if len(seen) == 2:  # the second light batch: a third one arrives meanwhile
            await send_light(3)
        return await real(group)

    worker.judge.judge = judge  # type: ignore[method-assign]
    await send_light(1)
    await asyncio.wait_for(held.wait(), 30)
    sent = asyncio.create_task(heavy.send(wide(600)))
    await queued("heavy", 1)
    await send_light(2)
    go.set()
    assert (await sent).appended.accepted_count == 600
    assert [(await light.call.read()).appended.accepted_count for _ in (1, 2, 3)] == [1, 1, 1]
    whole, part = ("light", False), ("heavy", True)
    # Light 2 alone (the first part waits), then light 3 beside the first part (they waited
    # once), then the other four parts of 128, 128, 128 and 88 series.
    assert seen == [[whole], [whole], [part, whole], [part], [part], [part], [part]]
    assert await read_points(runs, "light", "m") == ([1, 2, 3], [1.0, 1.0, 1.0])
    await heavy.close()
    await light.close()
