"""An outage of an external Redis (started by the test, killed -9, started again on the same
socket) logs one line when it starts and one when it ends: never a traceback per group.
Batches fail retryably meanwhile (FLOORS_UNAVAILABLE behind COMMIT_FAILED) and land once
re-sent after Redis is back (test_exactly_once.py has the re-send rules)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import grpc
import pytest
from stepstream_server.embedded_redis import EmbeddedRedis
from wire import Stream, create_run, fseries, read_points, rpc_reason


async def _fails_retryably(s: Stream, step: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await s.send(fseries("m", [step], [step]))
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert rpc_reason(exc.value) == "COMMIT_FAILED"


async def test_redis_outage_logs_one_line_each_way(
    service, runs, ingest, redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    streams = []
    for run_id in ("a", "b"):
        await create_run(runs, run_id)
        s = Stream(ingest)
        await s.open(run_id, writer_id="w")
        await s.send(fseries("m", [1], [1]))
        streams.append(s)
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGKILL)
    redis_server.process.wait()
    redis_server.process = None
    # Two streams, each failing in its own group (or in one: then twice in a row).
    await asyncio.gather(*(_fails_retryably(s, 2) for s in streams))
    s = Stream(ingest)
    await s.open("a", writer_id="w2")
    await _fails_retryably(s, 3)
    assert service.worker.redis.active and service.worker.redis.failures >= 2
    redis_server.start()
    for run_id in ("a", "b"):
        s = Stream(ingest)
        opened = await s.open(run_id, writer_id="w")
        assert opened.opened.last_committed_sequence == 1
        r = await s.send(fseries("m", [2], [2]), sequence=2)
        assert r.appended.accepted_count == 1
        assert (await read_points(runs, run_id, "m"))[0] == [1, 2]
    started = [r for r in caplog.records if r.getMessage().startswith("redis outage:")]
    ended = [r for r in caplog.records if r.getMessage().startswith("redis outage over:")]
    assert len(started) == 1 and len(ended) == 1, [r.getMessage() for r in caplog.records]
    assert "cannot reach Redis" in started[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert service.worker.redis.outages == 1 and not service.worker.redis.active
