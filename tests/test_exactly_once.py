"""Writer IDs and sequence numbers make delivery exactly-once across reconnects and restarts
of the service, of Redis, or both (SPEC §6)."""

from __future__ import annotations

import grpc
import pytest
from stepstream.v1 import ingest_pb2_grpc, runs_pb2_grpc
from stepstream_server.config import Settings
from stepstream_server.embedded_redis import EmbeddedRedis
from stepstream_server.server import Service
from wire import Stream, create_run, fseries, read_points, rpc_reason

pytestmark = pytest.mark.stores("sqlite", "postgresql")


async def test_resent_batch_gets_its_original_ack(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    first = await s.send(fseries("m", [1, 2], [1, 2]), fseries("m2", [5], [5]))
    await s.send(fseries("m", [0], [1]))  # seq 2: a rejection
    again = await s.send(fseries("m", [1, 2], [1, 2]), fseries("m2", [5], [5]), sequence=1)
    assert again.appended.duplicate_batch
    assert again.appended.accepted_count == first.appended.accepted_count == 3
    rej_again = await s.send(fseries("m", [0], [1]), sequence=2)
    assert rej_again.appended.duplicate_batch
    assert rej_again.appended.rejections[0].reason == "STEP_NOT_INCREASING"
    assert await read_points(runs, "r1", "m") == ([1, 2], [1, 2])


async def test_reconnect_reports_last_committed_and_dedupes(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1", writer_id="trainer")
    for i in range(5):
        await s.send(fseries("m", [i], [i]))
    await s.close()
    s2 = Stream(ingest)
    opened = await s2.open("r1", writer_id="trainer")
    assert opened.opened.last_committed_sequence == 5
    # A client that lost its acks re-sends 3..5 with their original numbers, then goes on.
    for seq in (3, 4, 5):
        r = await s2.send(fseries("m", [seq - 1], [seq - 1]), sequence=seq)
        assert r.appended.duplicate_batch
    r6 = await s2.send(fseries("m", [5], [5]), sequence=6)
    assert r6.appended.accepted_count == 1 and not r6.appended.duplicate_batch
    assert (await read_points(runs, "r1", "m"))[0] == [0, 1, 2, 3, 4, 5]


async def _connect(svc: Service):
    ch = grpc.aio.insecure_channel(svc.address)
    return ch, runs_pb2_grpc.RunServiceStub(ch), ingest_pb2_grpc.IngestServiceStub(ch)


async def test_duplicates_recognised_after_service_restart(settings: Settings):
    svc = await Service.start(settings)
    ch, runs, ingest = await _connect(svc)
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1", writer_id="w")
    await s.send(fseries("m", [1, 2, 3], [1, 2, 3]))
    await s.send(fseries("m", [4], [4]))
    await ch.close()
    await svc.stop()

    svc = await Service.start(settings)
    ch, runs, ingest = await _connect(svc)
    s = Stream(ingest)
    opened = await s.open("r1", writer_id="w")
    assert opened.opened.last_committed_sequence == 2
    again = await s.send(fseries("m", [4], [4]), sequence=2)
    assert again.appended.duplicate_batch and again.appended.accepted_count == 1
    # Floors were rebuilt from the store: the floor is 4.
    low = await s.send(fseries("m", [4, 5], [9, 5]))
    assert low.appended.rejections[0].floor == 4.0
    assert low.appended.accepted_count == 1
    assert (await read_points(runs, "r1", "m"))[0] == [1, 2, 3, 4, 5]
    await ch.close()
    await svc.stop()


async def test_floors_rebuilt_after_redis_restart(runs, ingest, redis_server: EmbeddedRedis):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1", writer_id="w")
    await s.send(fseries("m", [1, 2, 3], [1, 2, 3]), fseries("n", [10], [1.5]))
    await s.close()
    redis_server.stop()
    redis_server.start()  # same port, empty: every floor is gone

    s = Stream(ingest)
    await s.open("r1", writer_id="w")
    # The identical point at the floor is still a duplicate; lower steps still rejected.
    r = await s.send(fseries("m", [2, 3, 4], [2, 3, 4]), fseries("n", [10], [1.5]))
    assert r.appended.accepted_count == 1
    assert r.appended.duplicate_count == 2
    assert r.appended.rejections[0].floor == 3.0
    assert (await read_points(runs, "r1", "m"))[0] == [1, 2, 3, 4]


async def test_redis_down_fails_the_batch_retryably_and_loses_nothing(
    runs, ingest, redis_server: EmbeddedRedis
):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1", writer_id="w")
    await s.send(fseries("m", [1], [1]))
    redis_server.stop()
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await s.send(fseries("m", [2], [2]))
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert rpc_reason(exc.value) == "COMMIT_FAILED"
    redis_server.start()
    s = Stream(ingest)
    opened = await s.open("r1", writer_id="w")
    assert opened.opened.last_committed_sequence == 1
    r = await s.send(fseries("m", [2], [2]), sequence=2)
    assert r.appended.accepted_count == 1 and not r.appended.duplicate_batch
    assert (await read_points(runs, "r1", "m"))[0] == [1, 2]
