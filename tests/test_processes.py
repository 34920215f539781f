"""Real process boundaries: concurrent writer processes, and kill -9 of the service."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import grpc
from conftest import free_port
from procs import ServiceProcess, run_writers
from stepstream.v1 import ingest_pb2, ingest_pb2_grpc, runs_pb2_grpc
from stepstream_server.embedded_redis import EmbeddedRedis
from wire import create_run, read_points

HERE = Path(__file__).parent


async def test_writer_processes_never_land_two_points_at_one_step(
    tmp_path: Path, redis_server: EmbeddedRedis
):
    svc = ServiceProcess(tmp_path / "data", redis_server.url, free_port()).start()
    try:
        async with grpc.aio.insecure_channel(svc.address) as ch:
            runs = runs_pb2_grpc.RunServiceStub(ch)
            await create_run(runs, "explicit")
            await create_run(runs, "assign")
            n, writers = 60, 4
            counts = await asyncio.to_thread(
                run_writers, [svc.address] * writers, "explicit", "explicit", n
            )
            steps, values = await read_points(runs, "explicit", "shared")
            assert steps == [float(i) for i in range(n)]  # each step exactly once
            assert sum(counts) == n
            assert Counter(values) == Counter({float(i): c for i, c in enumerate(counts) if c})

            counts = await asyncio.to_thread(
                run_writers, [svc.address] * writers, "assign", "assign", n
            )
            steps, values = await read_points(runs, "assign", "shared")
            assert counts == [n] * writers
            assert steps == [float(i) for i in range(n * writers)]
            assert Counter(values) == Counter({float(i): n for i in range(writers)})
    finally:
        assert svc.terminate() == 0


class ResendingWriter:
    """The client's duty in miniature: keep unacknowledged batches, re-send them after a
    reconnect with their original sequence numbers."""

    def __init__(self, address: str, run_id: str, writer_id: str) -> None:
        self.address, self.run_id, self.writer_id = address, run_id, writer_id
        self.unacked: dict[int, ingest_pb2.PointBatch] = {}
        self.acked: dict[int, ingest_pb2.AppendResult] = {}
        self.resent = 0

    async def run(self, batches: list[ingest_pb2.PointBatch], on_sent: asyncio.Event) -> None:
        todo = list(batches)
        for attempt in range(200):
            try:
                async with grpc.aio.insecure_channel(self.address) as ch:
                    call = ingest_pb2_grpc.IngestServiceStub(ch).AppendPoints()
                    await call.write(
                        ingest_pb2.AppendPointsRequest(
                            open=ingest_pb2.OpenStream(run_id=self.run_id, writer_id=self.writer_id)
                        )
                    )
                    await call.read()
                    resend = [self.unacked[s] for s in sorted(self.unacked)]
                    self.resent += len(resend)
                    for batch in resend:
                        await call.write(ingest_pb2.AppendPointsRequest(batch=batch))
                    for _ in resend:
                        self._ack(await call.read())
                    while todo:
                        # Pipeline a few batches so that some are in flight when the kill lands.
                        window = todo[:8]
                        for batch in window:
                            self.unacked[batch.sequence] = batch
                            await call.write(ingest_pb2.AppendPointsRequest(batch=batch))
                        del todo[: len(window)]
                        on_sent.set()
                        for _ in window:
                            self._ack(await call.read())
                    await call.done_writing()
                    return
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                # A write can find the call already ended by the kill (grpc.aio raises
                # InvalidStateError then, not AioRpcError): the same reconnect.
                await asyncio.sleep(min(0.05 * 2 ** min(attempt, 5), 1.0))
        raise AssertionError("writer never finished")

    def _ack(self, resp: ingest_pb2.AppendPointsResponse) -> None:
        assert resp.HasField("appended"), resp
        self.unacked.pop(resp.sequence, None)
        self.acked[resp.sequence] = resp.appended


async def test_kill_9_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path, redis_server: EmbeddedRedis
):
    port = free_port()
    svc = ServiceProcess(tmp_path / "data", redis_server.url, port).start()
    try:
        async with grpc.aio.insecure_channel(svc.address) as ch:
            await create_run(runs_pb2_grpc.RunServiceStub(ch), "r1")
        n_batches, per = 400, 50
        batches = [
            ingest_pb2.PointBatch(
                sequence=b + 1,
                float_series=[
                    ingest_pb2.FloatSeries(
                        name=name,
                        steps=[float(b * per + k) for k in range(per)],
                        values=[float(b * per + k) * 0.5 for k in range(per)],
                    )
                    for name in ("loss", "acc")
                ],
            )
            for b in range(n_batches)
        ]
        writer = ResendingWriter(svc.address, "r1", "trainer")
        started = asyncio.Event()
        task = asyncio.create_task(writer.run(batches, started))
        for _ in range(2):  # kill twice, at different points of the stream
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if task.done():
                break
            await asyncio.sleep(0.05)
            svc.kill9()
            started.clear()
            await asyncio.sleep(0.1)
            await asyncio.to_thread(svc.start)
        await asyncio.wait_for(task, 120)
        assert sorted(writer.acked) == list(range(1, n_batches + 1))
        assert not writer.unacked
        assert writer.resent > 0  # the kills did land with batches in flight
        async with grpc.aio.insecure_channel(svc.address) as ch:
            runs = runs_pb2_grpc.RunServiceStub(ch)
            for name in ("loss", "acc"):
                steps, values = await read_points(runs, "r1", name)
                assert steps == [float(i) for i in range(n_batches * per)]
                assert values == [s * 0.5 for s in steps]
        # Every batch's acknowledgement counted its points exactly once, duplicates or not.
        assert all(
            a.accepted_count + a.duplicate_count == 2 * per or a.duplicate_batch
            for a in writer.acked.values()
        )
    finally:
        svc.terminate()


def test_serve_with_embedded_redis_drains_and_stops_its_redis(tmp_path: Path) -> None:
    """`stepstream serve` with no Redis given starts its own and stops it on SIGTERM."""
    import os

    import stepstream

    svc = ServiceProcess(tmp_path / "data", None, free_port()).start()
    (redis_pid,) = svc.children()
    assert "redis-server" in Path(f"/proc/{redis_pid}/cmdline").read_text()
    run = stepstream.Run("r", address=svc.address)
    run.log_metrics({"m": 1.0}, step=1)
    run.close(timeout=30)
    assert svc.terminate() == 0
    assert (
        not Path(f"/proc/{redis_pid}").exists()
        or "Z" in Path(f"/proc/{redis_pid}/stat").read_text().split()[2]
    )
    assert not os.path.exists(tmp_path / "data" / "redis" / "redis.sock")
    log = (tmp_path / f"service-{svc.port}.log").read_text()
    assert "stepstream listening on" in log and "stepstream stopped" in log
    # The data survived: a new service on the same directory serves it.
    svc2 = ServiceProcess(tmp_path / "data", None, free_port()).start()
    try:
        assert stepstream.read_series("r", "m", address=svc2.address).values == [1.0]
    finally:
        svc2.terminate()
