"""Every acknowledgement carries the truth: a batch in flight commits in its writer's order
whatever its stream does, and a re-sent batch is answered from what the store holds (read
again while the store cannot be read), never with an empty incarnation (docs/faults.md §5)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from stepstream.v1 import ingest_pb2
from stepstream_server.store import StoreUnavailable
from wire import Stream, create_run, fseries, read_points

pytestmark = pytest.mark.stores("sqlite", "postgresql")


def batch(seq: int) -> ingest_pb2.AppendPointsRequest:
    b = ingest_pb2.PointBatch(sequence=seq)
    b.float_series.append(fseries("m", [seq], [float(seq)]))
    return ingest_pb2.AppendPointsRequest(batch=b)


async def idle(worker: Any) -> None:
    while worker._queue or worker._again or worker._busy or worker._background:
        await asyncio.sleep(0.01)


def hold_judging(worker: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """The worker's judge waits: `entered` is set when a group reaches it, `go` lets it on."""
    entered, go = asyncio.Event(), asyncio.Event()
    real = worker.judge.judge

    async def judge(group: Any) -> Any:
        entered.set()
        await go.wait()
        return await real(group)

    worker.judge.judge = judge
    return entered, go


async def test_a_stream_cancelled_with_batches_in_flight_loses_none(service, runs, ingest):
    """The client cancels while its first batch is being judged and two more are queued:
    all three commit in order, and the re-send of the first is answered from the store
    (before, the first was skipped, the others landed, and its re-send got an empty
    duplicate acknowledgement)."""
    worker = service.worker
    entered, go = hold_judging(worker)
    run = await create_run(runs, "r")
    s = Stream(ingest)
    await s.open("r", writer_id="w")
    for seq in (1, 2, 3):
        await s.call.write(batch(seq))
    await asyncio.wait_for(entered.wait(), 30)
    while [p.sequence for p in worker._queue] != [2, 3]:  # queued behind the group judging 1
        await asyncio.sleep(0.01)
    s.call.cancel()
    while service.ingest.open_streams:
        await asyncio.sleep(0.01)
    go.set()
    await idle(worker)
    s2 = Stream(ingest)
    opened = await s2.open("r", writer_id="w")
    assert opened.opened.last_committed_sequence == 3
    again = (await s2.send(fseries("m", [1], [1.0]), sequence=1)).appended
    assert again.duplicate_batch and again.accepted_count == 1
    assert again.incarnation_id == run.current_incarnation_id
    assert await read_points(runs, "r", "m") == ([1, 2, 3], [1.0, 2.0, 3.0])
    await s2.close()


async def test_an_outcome_past_retention_names_the_runs_incarnation(
    service, runs, ingest, monkeypatch
):
    """Acknowledgements older than ACK_RETENTION batches are trimmed: a re-send that old is a
    duplicate with no counts, in the run's incarnation (not an empty one)."""
    from stepstream_server.store import postgres, sqlite

    monkeypatch.setattr(sqlite, "ACK_RETENTION", 2)
    monkeypatch.setattr(postgres, "ACK_RETENTION", 2)
    run = await create_run(runs, "r")
    s = Stream(ingest)
    await s.open("r", writer_id="w")
    for seq in range(1, 6):
        assert (await s.send(fseries("m", [seq], [1.0]))).appended.accepted_count == 1
    old = (await s.send(fseries("m", [1], [1.0]), sequence=1)).appended
    assert old.duplicate_batch and (old.accepted_count, old.duplicate_count) == (0, 0)
    assert old.incarnation_id == run.current_incarnation_id
    kept = (await s.send(fseries("m", [5], [1.0]), sequence=5)).appended
    assert kept.duplicate_batch and kept.accepted_count == 1
    await s.close()


def failing_outcome_reads(service: Any, times: int) -> dict[str, int]:
    """The store's `writer_outcome` raises StoreUnavailable `times` times, then works."""
    sync = service.worker.store.sync
    real = sync.writer_outcome
    calls = {"failed": 0}

    def writer_outcome(*args: Any) -> Any:
        if calls["failed"] < times:
            calls["failed"] += 1
            raise StoreUnavailable(RuntimeError("connection lost (test)"))
        return real(*args)

    sync.writer_outcome = writer_outcome
    return calls


async def test_a_resend_while_the_store_cannot_be_read_waits_for_the_truth(service, runs, ingest):
    run = await create_run(runs, "r")
    s = Stream(ingest)
    await s.open("r", writer_id="w")
    first = (await s.send(fseries("m", [1, 2], [1.0, 2.0]))).appended
    calls = failing_outcome_reads(service, 3)
    again = (await s.send(fseries("m", [1, 2], [1.0, 2.0]), sequence=1)).appended
    assert calls["failed"] == 3  # read again until the store answered
    assert again.duplicate_batch and again.accepted_count == first.accepted_count == 2
    assert again.incarnation_id == run.current_incarnation_id
    await s.close()


async def test_a_batch_that_landed_unseen_is_answered_from_the_store_once_readable(
    service, runs, ingest
):
    """The group's COMMIT lands but its caller hears "connection lost"; judged again, the
    batch is refused by its writer sequence, and its acknowledgement is read from the store,
    which cannot be read at first: the batch waits for it instead of an empty answer."""
    run = await create_run(runs, "r")
    s = Stream(ingest)
    await s.open("r", writer_id="w")
    sync = service.worker.store.sync
    real = sync.commit
    state = {"commits": 0, "calls": {"failed": 0}}

    def commit(parts: Any) -> Any:
        refused = real(parts)
        if any(p.run_id == "r" for p in parts) and state["commits"] == 0:
            state["commits"] += 1
            state["calls"] = failing_outcome_reads(service, 4)
            raise StoreUnavailable(RuntimeError("connection lost during COMMIT (test)"))
        return refused

    sync.commit = commit
    try:
        ack = (await s.send(fseries("m", [1, 2, 3], [1.0, 2.0, 3.0]))).appended
    finally:
        sync.commit = real
    assert state["calls"]["failed"] == 4  # type: ignore[index]
    assert service.worker.stats["refused"] >= 1  # judged again and refused by its sequence
    # The stored acknowledgement of the commit that landed, as a duplicate of itself.
    assert ack.accepted_count == 3 and ack.incarnation_id == run.current_incarnation_id
    assert await read_points(runs, "r", "m") == ([1, 2, 3], [1.0, 2.0, 3.0])
    await s.close()


async def test_a_stream_gone_while_its_batch_waits_for_room_leaves_no_hole(service, runs, ingest):
    """Stream A's batch 2 waits for room (its writer's share of the queue is full) when the
    client moves to stream B, re-sends 2 and sends 3; then A goes away. Both commit, in
    order, and nothing is answered as a duplicate of a batch never stored (before, 2 held its
    sequence while it waited, 3 overtook it, and 2's re-send got an empty duplicate)."""
    from dataclasses import replace

    worker = service.worker
    worker.limits = replace(worker.limits, max_writer_queued_points=1)
    entered, go = hold_judging(worker)
    await create_run(runs, "r")
    a = Stream(ingest)
    await a.open("r", writer_id="w")
    await a.call.write(batch(1))
    await asyncio.wait_for(entered.wait(), 30)  # 1 is judged, and fills the writer's share
    await a.call.write(batch(2))
    while len(worker._room._waiters) < 1:  # A's 2 waits for room
        await asyncio.sleep(0.01)
    b = Stream(ingest)
    assert (await b.open("r", writer_id="w")).opened.last_committed_sequence == 0
    await b.call.write(batch(2))
    await b.call.write(batch(3))
    while len(worker._room._waiters) < 2:  # B's 2 waits too; its 3 comes after it
        await asyncio.sleep(0.01)
    a.call.cancel()
    while service.ingest.open_streams > 1:
        await asyncio.sleep(0.01)
    go.set()
    answers = [(await b.call.read()).appended for _ in (2, 3)]
    assert [(x.accepted_count, x.duplicate_batch) for x in answers] == [(1, False), (1, False)]
    await idle(worker)
    assert await read_points(runs, "r", "m") == ([1, 2, 3], [1.0, 2.0, 3.0])
    await b.close()
