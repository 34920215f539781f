"""Several replicas on one PostgreSQL and one Redis (or Redis Cluster), broken on purpose:
kill -9, SIGSTOP past the lease, a rewind from another replica, one writer on two replicas at
once. Each case is one line of the failure table in docs/replicas.md."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc
from procs import ServiceProcess, run_writers
from redis_cluster import RedisCluster
from stepstream.v1 import ingest_pb2_grpc, runs_pb2, runs_pb2_grpc
from stepstream_server.config import Settings
from stepstream_server.embedded_redis import EmbeddedRedis
from stepstream_server.server import Service
from wire import Stream, create_run, fseries, read_points

HERE = Path(__file__).parent
LEASE = 1.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    with RedisCluster(tmp_path / "cluster") as c:
        yield c


def replicas(
    tmp_path: Path, n: int, redis_url: str, store: str, *, cluster: bool = False
) -> list[ServiceProcess]:
    extra = ["--store", store, "--lease", str(LEASE), *(["--redis-cluster"] if cluster else [])]
    return [
        ServiceProcess(tmp_path / f"replica{i}", redis_url, free_port(), extra=extra)
        for i in range(n)
    ]


def start_all(procs: list[ServiceProcess]) -> None:
    threads = [threading.Thread(target=p.start) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.proc is not None, "a replica did not start"


# -- two replicas, one series ---------------------------------------------------------------


async def test_two_replicas_one_series_explicit_and_assigned_steps(
    tmp_path: Path, redis_server: EmbeddedRedis, fresh_pg_url: str
) -> None:
    a, b = procs = replicas(tmp_path, 2, redis_server.url, fresh_pg_url)
    start_all(procs)
    try:
        async with grpc.aio.insecure_channel(a.address) as ch:
            stub = runs_pb2_grpc.RunServiceStub(ch)
            await create_run(stub, "explicit")
            await create_run(stub, "assign")
            n, spread = 60, [a.address, b.address] * 2
            counts = await asyncio.to_thread(run_writers, spread, "explicit", "explicit", n)
            steps, values = await read_points(stub, "explicit", "shared")
            assert steps == [float(i) for i in range(n)]  # each step exactly once
            assert sum(counts) == n
            assert Counter(values) == Counter({float(i): c for i, c in enumerate(counts) if c})

            counts = await asyncio.to_thread(run_writers, spread, "assign", "assign", n)
            steps, values = await read_points(stub, "assign", "shared")
            assert counts == [n] * len(spread)
            assert steps == [float(i) for i in range(n * len(spread))]
            assert Counter(values) == Counter({float(i): n for i in range(len(spread))})
    finally:
        for p in procs:
            p.terminate()


# -- a replica stalled between check and commit (in-process, the commit held at the seam) --


@pytest.fixture
async def two_services(
    tmp_path: Path, redis_server: EmbeddedRedis, fresh_pg_url: str
) -> AsyncIterator[tuple[Service, Service]]:
    services = []
    for name in ("a", "b"):
        settings = Settings(
            address="127.0.0.1:0",
            data_dir=tmp_path / name,
            redis_url=redis_server.url,
            store=fresh_pg_url,
            lease_seconds=0.5,
            grace_seconds=1.0,
        )
        services.append(await Service.start(settings))
    try:
        yield services[0], services[1]
    finally:
        for svc in services:
            await svc.stop()


def hold_commits(service: Service) -> threading.Event:
    """Replica `service` stalls in its commit (as if SIGSTOPped after judging) until set."""
    go = threading.Event()
    real = service.store.sync.commit

    def held(parts: Any) -> Any:
        go.wait(60)
        return real(parts)

    service.store.sync.commit = held  # type: ignore[method-assign]
    return go


async def test_paused_replica_is_fenced_and_its_dependents_rejudge(
    two_services: tuple[Service, Service],
) -> None:
    a, b = two_services
    async with (
        grpc.aio.insecure_channel(a.address) as ca,
        grpc.aio.insecure_channel(b.address) as cb,
    ):
        await create_run(runs_pb2_grpc.RunServiceStub(ca), "r")
        go = hold_commits(a)
        on_a = Stream(ingest_pb2_grpc.IngestServiceStub(ca))
        await on_a.open("r", writer_id="trainer")
        stalled = asyncio.create_task(on_a.send(fseries("s", [1, 2, 3], [1, 2, 3])))
        while a.worker.stats["groups"] == 0 and not a.worker._busy:  # judged, commit held
            await asyncio.sleep(0.01)
        # The trainer gives up on A and re-sends through B; another writer logs on B too,
        # reading the floor A moved: both must wait for A, see its lease expire, judge again.
        on_b = Stream(ingest_pb2_grpc.IngestServiceStub(cb))
        assert (await on_b.open("r", writer_id="trainer")).opened.last_committed_sequence == 0
        other = Stream(ingest_pb2_grpc.IngestServiceStub(cb))
        await other.open("r", writer_id="other")
        resent, later = await asyncio.gather(
            on_b.send(fseries("s", [1, 2, 3], [1, 2, 3]), sequence=1),
            other.send(fseries("s", [4], [4])),
        )
        assert resent.appended.accepted_count == 3 and not resent.appended.rejections
        assert later.appended.accepted_count == 1 and not later.appended.rejections
        # A wakes: its commit is refused (fenced), and the batch it held is now a duplicate.
        go.set()
        woke = await stalled
        assert woke.appended.duplicate_batch
        assert woke.appended.accepted_count == 3  # the stored acknowledgement, replayed
        assert a.worker.stats["refused"] >= 1
        steps, values = await read_points(runs_pb2_grpc.RunServiceStub(cb), "r", "s")
        assert steps == [1.0, 2.0, 3.0, 4.0] and values == [1.0, 2.0, 3.0, 4.0]


async def test_one_writer_on_two_replicas_at_once_applies_each_sequence_once(
    two_services: tuple[Service, Service],
) -> None:
    a, b = two_services
    async with (
        grpc.aio.insecure_channel(a.address) as ca,
        grpc.aio.insecure_channel(b.address) as cb,
    ):
        await create_run(runs_pb2_grpc.RunServiceStub(ca), "r")
        streams = [Stream(ingest_pb2_grpc.IngestServiceStub(c)) for c in (ca, cb)]
        for s in streams:
            await s.open("r", writer_id="same")

        async def send_all(s: Stream) -> list[Any]:
            out = []
            for k in range(40):
                steps = [float(2 * k), float(2 * k + 1)]
                r = await s.send(fseries("m", steps, steps), fseries("n", values=[k], assign=True))
                out.append(r)
            return out

        both = await asyncio.gather(*(send_all(s) for s in streams))
        for k in range(40):
            assert all(b[k].HasField("appended") for b in both), (k, both[0][k], both[1][k])
            answers = [both[0][k].appended, both[1][k].appended]
            # Applied once: one of them (or each, if judged after the other committed) tells
            # the stored outcome; the points are never counted twice as new.
            assert all(not a.rejections for a in answers), answers
            assert sum(not a.duplicate_batch for a in answers) <= 1, (k, answers)
            assert {a.accepted_count for a in answers} == {3}
        stub = runs_pb2_grpc.RunServiceStub(ca)
        steps, _ = await read_points(stub, "r", "m")
        assert steps == [float(i) for i in range(80)]
        steps, values = await read_points(stub, "r", "n")
        assert steps == [float(i) for i in range(40)] and values == [float(i) for i in range(40)]


# -- the fault run: 3 replica processes, 8 writer processes, kill -9, SIGSTOP, rewind ---------


WRITERS, BATCHES, PAUSE = 8, 240, 0.1


def start_writers(addresses: list[str], run_id: str) -> list[subprocess.Popen[bytes]]:
    out = []
    for w in range(WRITERS):
        order = addresses[w % len(addresses) :] + addresses[: w % len(addresses)]
        out.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "replica_writer.py"),
                    ",".join(order),
                    run_id,
                    f"w-{w}",
                    str(BATCHES),
                    str(PAUSE),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    return out


async def chaos(procs: list[ServiceProcess], writers: list[subprocess.Popen[bytes]]) -> int:
    """Kill -9 and restart replica 0, stop replica 1 past its lease and resume it, until the
    writers are done (bounded). Returns how many faults were injected."""
    rng = random.Random(7)
    faults = 0
    loop = asyncio.get_running_loop()
    for _ in range(40):
        if all(w.poll() is not None for w in writers):
            break
        await asyncio.sleep(rng.uniform(0.3, 0.8))
        procs[0].kill9()
        procs[1].pause()
        faults += 2
        paused_at = loop.time()
        await asyncio.sleep(0.2)
        await asyncio.to_thread(procs[0].start)
        await asyncio.sleep(max(0.0, paused_at + LEASE * 2.5 - loop.time()))
        procs[1].resume()
    return faults


async def fault_run(procs: list[ServiceProcess], *, rewind_step: float | None) -> None:
    start_all(procs)
    try:
        addresses = [p.address for p in procs]
        async with grpc.aio.insecure_channel(procs[2].address) as ch:
            stub = runs_pb2_grpc.RunServiceStub(ch)
            await create_run(stub, "r")
            writers = start_writers(addresses, "r")
            chaos_task = asyncio.create_task(chaos(procs, writers))
            rewound = None
            if rewind_step is not None:
                for _ in range(600):  # until the writers stream through every replica
                    steps, _ = await read_points(stub, "r", "shared")
                    if len(steps) >= 4 * WRITERS:
                        break
                    await asyncio.sleep(0.05)
                rewound = await stub.RewindRun(
                    runs_pb2.RewindRunRequest(run_id="r", step=rewind_step)
                )
            results = []
            for w in writers:
                out, err = await asyncio.to_thread(w.communicate, timeout=240)
                assert w.returncode == 0, err.decode()[-3000:]
                results.append(json.loads(out.decode().strip().splitlines()[-1]))
            faults = await chaos_task
            assert faults >= 2
            assert sum(r["moves"] for r in results) > 0  # writers did fail over mid-stream
            await verify(stub, results, rewound)
    finally:
        for p in procs:
            p.terminate()


async def verify(
    stub: runs_pb2_grpc.RunServiceStub, results: list[dict[str, Any]], rewound: Any
) -> None:
    """Every acknowledged point exactly once, in the incarnation its acknowledgement names;
    no step twice in any series of any incarnation; no valid re-sent batch rejected."""
    incarnations = {a["incarnation"] for r in results for a in r["acks"].values()}
    if rewound is not None:
        assert len(incarnations) == 2, incarnations  # batches landed on both sides
    own: dict[tuple[str, str], dict[float, int]] = {}
    for inc in incarnations:
        for name in ["race", "shared", *(f"own/{w}" for w in range(WRITERS))]:
            steps, values = await read_points(
                stub, "", name, incarnation_id=inc, own_points_only=True
            )
            assert len(set(steps)) == len(steps), (inc, name)  # no step twice
            assert steps == sorted(steps)
            own[(inc, name)] = dict(zip(steps, values, strict=True))
    shared_seen: Counter[float] = Counter()
    for inc in incarnations:
        shared_seen.update(own[(inc, "shared")].values())
    for w, result in enumerate(results):
        acks = result["acks"]
        assert sorted(int(s) for s in acks) == list(range(1, BATCHES + 1))
        for seq, ack in acks.items():
            k = int(seq) - 1
            assert f"own/{w}" not in ack["rejected"], (w, k, ack)  # a valid batch never rejected
            inc = ack["incarnation"]
            for step in (5.0 * k + j for j in range(5)):
                assert own[(inc, f"own/{w}")].get(step) == step, (w, k, inc)
                for other in incarnations - {inc}:
                    assert step not in own[(other, f"own/{w}")], (w, k, "in both incarnations")
            value = w * 1e6 + k
            assert shared_seen[value] == 1, (w, k, shared_seen[value])
            assert own[(inc, "shared")].get(ack["assigned"]["shared"]) == value
    total = sum(len(own[(inc, "shared")]) for inc in incarnations)
    assert total == WRITERS * BATCHES  # nothing stored that was not acknowledged


async def test_faults_kill_and_stop_replicas(
    tmp_path: Path, redis_server: EmbeddedRedis, fresh_pg_url: str
) -> None:
    await fault_run(replicas(tmp_path, 3, redis_server.url, fresh_pg_url), rewind_step=None)


async def test_faults_rewind_through_one_replica_while_others_ingest(
    tmp_path: Path, redis_server: EmbeddedRedis, fresh_pg_url: str
) -> None:
    await fault_run(replicas(tmp_path, 3, redis_server.url, fresh_pg_url), rewind_step=60.0)


async def test_faults_on_redis_cluster(
    tmp_path: Path, cluster: RedisCluster, fresh_pg_url: str
) -> None:
    await fault_run(
        replicas(tmp_path, 3, cluster.url, fresh_pg_url, cluster=True), rewind_step=60.0
    )


# -- refusing unsafe set-ups ------------------------------------------------------------------


def test_data_dir_lock_refuses_a_second_service(tmp_path: Path) -> None:
    first = ServiceProcess(tmp_path / "data", None, free_port()).start()
    try:
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "stepstream_server.cli",
                "serve",
                "--address",
                f"127.0.0.1:{free_port()}",
                "--data-dir",
                str(tmp_path / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert second.returncode == 1
        assert f"{tmp_path / 'data'} is in use by stepstream process {first.proc.pid}" in (  # type: ignore[union-attr]
            second.stderr
        )
        with grpc.insecure_channel(first.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            assert (
                stub.Check(health_pb2.HealthCheckRequest()).status
                == health_pb2.HealthCheckResponse.SERVING
            )
            runs_pb2_grpc.RunServiceStub(ch).CreateRun(runs_pb2.CreateRunRequest(run_id="still"))
    finally:
        assert first.terminate() == 0


async def test_embedded_redis_crash_is_noticed_and_healed(tmp_path: Path) -> None:
    import os
    import signal

    svc = await Service.start(Settings(address="127.0.0.1:0", data_dir=tmp_path / "data"))
    try:
        async with grpc.aio.insecure_channel(svc.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            await create_run(runs_pb2_grpc.RunServiceStub(ch), "r")
            s = Stream(ingest_pb2_grpc.IngestServiceStub(ch))
            await s.open("r")
            assert (await s.send(fseries("m", [1, 2], [1, 2]))).appended.accepted_count == 2
            # While it cannot come back, health says NOT_SERVING.
            assert svc.embedded is not None and svc.embedded.process is not None
            allowed = threading.Event()
            real_start = svc.embedded.start

            def start_when_allowed(timeout: float = 10.0) -> EmbeddedRedis:
                if not allowed.is_set():
                    raise RuntimeError("not yet")
                return real_start(timeout)

            svc.embedded.start = start_when_allowed  # type: ignore[method-assign]
            os.kill(svc.embedded.process.pid, signal.SIGKILL)

            async def status() -> int:
                resp = await health.Check(health_pb2.HealthCheckRequest())
                return int(resp.status)

            for _ in range(500):
                if await status() == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.02)
            assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
            allowed.set()
            for _ in range(500):
                if await status() == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.02)
            assert await status() == health_pb2.HealthCheckResponse.SERVING
            assert svc.watch is not None and svc.watch.restarts == 1
            # Floors came back from the store: the old floor still holds, new steps land.
            s2 = Stream(ingest_pb2_grpc.IngestServiceStub(ch))
            await s2.open("r", writer_id="after")
            r = await s2.send(fseries("m", [2, 3], [9, 3]))
            assert r.appended.accepted_count == 1
            assert [x.reason for x in r.appended.rejections] == ["STEP_NOT_INCREASING"]
            steps, values = await read_points(runs_pb2_grpc.RunServiceStub(ch), "r", "m")
            assert (steps, values) == ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    finally:
        await svc.stop()
