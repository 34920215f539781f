"""Interleavings of several replicas' workers, placed step by step: each worker is a real
IngestWorker with its own replica ID on one real store and one real Redis, in one process, so
that a test can stop one between its check and its commit exactly where the protocol
(docs/replicas.md) says it must still hold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from stepstream_server.embedded_redis import EmbeddedRedis
from stepstream_server.ingest import IngestWorker, Pending, StoreFailed
from stepstream_server.model import AppendAck, BatchFailure, RunState, SeriesEntry
from stepstream_server.ordering import FloorCache
from stepstream_server.runs import CreateRun, RunManager
from stepstream_server.store import AsyncStore, open_store

pytestmark = pytest.mark.stores("sqlite", "postgresql")


def entries(steps: list[float], *, overwrite: bool = False) -> list[SeriesEntry]:
    a = np.array(steps, dtype=np.float64)
    return [SeriesEntry("m", False, a, a.copy(), np.zeros(len(a)), False, overwrite)]


class Replicas:
    """Workers sharing one store and one Redis, each as if it were its own process."""

    def __init__(self, store: AsyncStore, redis_url: str) -> None:
        self.store = store
        self.redis_url = redis_url
        self.workers: list[IngestWorker] = []
        self.clients: list[Any] = []

    def worker(self, name: str, *, start: bool = True) -> IngestWorker:
        client = aioredis.Redis.from_url(self.redis_url)
        self.clients.append(client)
        w = IngestWorker(self.store, FloorCache(client, replica=name, lease_seconds=10))
        if start:
            w.start()
        self.workers.append(w)
        return w

    async def close(self) -> None:
        for w in self.workers:
            if w._task is not None:
                await w.drain_and_stop()
        for c in self.clients:
            await c.aclose()

    def points(self, run_id: str = "r") -> list[float]:
        s = self.store.sync
        record = s.get_run("p", run_id)
        assert record is not None
        segments = s.segments(record.current_incarnation_id)
        return [float(x) for sp in s.read(segments, "m", False, -np.inf, np.inf) for x in sp.steps]


@pytest.fixture
async def replicas(
    tmp_path: Path, redis_server: EmbeddedRedis, store_url: str | None
) -> AsyncIterator[Replicas]:
    store = AsyncStore(open_store(store_url or f"sqlite://{tmp_path / 'store.sqlite3'}"))
    r = Replicas(store, redis_server.url)
    try:
        yield r
    finally:
        await r.close()
        store.close()


async def create(worker: IngestWorker) -> RunManager:
    runs = RunManager(worker.store, worker)
    await runs.create(CreateRun("p", "", "r", (), "", {}, "", "", None, False, False))
    return runs


async def submit(worker: IngestWorker, writer_id: str, seq: int, es: list[SeriesEntry]) -> Any:
    writer, _ = await worker.open_writer("p", "r", writer_id)
    return await (await worker.submit(writer, seq, es, [], None))


async def test_a_stale_running_record_never_lands_a_point_in_a_stopped_run(
    replicas: Replicas,
) -> None:
    m, b, c = replicas.worker("rM"), replicas.worker("rB"), replicas.worker("rC")
    runs = await create(m)
    assert (await submit(b, "wb", 1, entries([1]))).accepted == 1
    assert (await submit(c, "wc", 1, entries([2]))).accepted == 1  # C caches RUNNING
    await runs.set_state("p", "r", RunState.STOPPED)
    first = await submit(b, "wb", 2, entries([3]))  # B reloads the floors at the new epoch
    late = await submit(c, "wc", 2, entries([4]))  # C adopts that epoch with its old record
    for outcome in (first, late):
        assert isinstance(outcome, BatchFailure) and outcome.reason == "RUN_NOT_ACTIVE"
    assert replicas.points() == [1.0, 2.0]


async def test_an_overwrite_follows_the_judgment_it_replaces(replicas: Replicas) -> None:
    a = replicas.worker("rA", start=False)  # stepped by hand: judged now, committed later
    b, c = replicas.worker("rB"), replicas.worker("rC")
    await create(b)
    writer, _ = await a.open_writer("p", "r", "wa")
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    writer.inflight[1], writer.next_expected = future, 2
    item = Pending(writer, 1, entries([float(s) for s in range(10, 21)]), [], None, 11, future)
    judgment = await a.judge.judge([item])
    # B overwrites the series while A's steps 10..20 are judged but not stored: B must wait
    # for A, so that A's points land in the generation B replaces, not in B's new one.
    overwrite = asyncio.create_task(submit(b, "wb", 1, entries([0, 1, 2], overwrite=True)))
    await asyncio.sleep(0.3)
    assert not overwrite.done()
    await a._commit([item], judgment)
    assert isinstance(future.result(), AppendAck) and future.result().accepted == 11
    assert (await overwrite).accepted == 3
    assert (await submit(c, "wc", 1, entries([12]))).accepted == 1
    assert replicas.points() == [0.0, 1.0, 2.0, 12.0]


async def test_an_epoch_raise_redis_refused_is_owed_before_the_next_check(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = replicas.worker("rA")
    await create(a)
    assert (await submit(a, "w", 1, entries([1]))).accepted == 1
    # A network blip: the store commit fails, and so does the epoch raise after it.
    sync, floors = replicas.store.sync, a.floors
    real_commit, real_raise = sync.commit, floors.raise_epoch

    def failing_commit(parts: Any) -> Any:
        monkeypatch.setattr(sync, "commit", real_commit)
        raise OSError("connection to the database reset")

    calls = [0]

    async def failing_raise(*args: Any, **kw: Any) -> int:
        calls[0] += 1
        if calls[0] > 1:
            monkeypatch.setattr(floors, "raise_epoch", real_raise)
        raise RedisConnectionError("connection to Redis reset")

    monkeypatch.setattr(sync, "commit", failing_commit)
    monkeypatch.setattr(floors, "raise_epoch", failing_raise)
    with pytest.raises(StoreFailed):
        await submit(a, "w", 2, entries([10, 11, 12]))
    # The re-send is judged against the store's floor (1), not the phantom 12 of the failure.
    again = await submit(a, "w", 2, entries([10, 11, 12]))
    assert isinstance(again, AppendAck) and again.accepted == 3 and not again.rejections
    assert replicas.points() == [1.0, 10.0, 11.0, 12.0]


async def test_a_run_judged_before_a_redis_error_is_not_judged_again(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replicas.worker("rA"), replicas.worker("rB")
    runs = await create(a)
    await runs.create(CreateRun("p", "", "r2", (), "", {}, "", "", None, False, False))
    assert (await submit(b, "w", 1, entries([1]))).accepted == 1  # r's floors loaded on B
    # One group on B: r is judged at once; r2 is new to B and its floors fail to load once.
    real_load, failed = b.floors.load, []

    async def load_once_failing(*args: Any) -> None:
        if not failed:
            failed.append(True)
            raise RedisConnectionError("connection to Redis reset")
        await real_load(*args)

    monkeypatch.setattr(b.floors, "load", load_once_failing)
    w1, _ = await b.open_writer("p", "r", "w")
    w2, _ = await b.open_writer("p", "r2", "w")
    f1 = await b.submit(w1, 2, entries([2, 3]), [], None)
    f2 = await b.submit(w2, 1, entries([5]), [], None)
    first, second = await f1, await f2
    assert failed
    assert isinstance(first, AppendAck) and first.accepted == 2 and not first.rejections
    assert isinstance(second, AppendAck) and second.accepted == 1
    assert replicas.points() == [1.0, 2.0, 3.0]
    assert replicas.points("r2") == [5.0]
