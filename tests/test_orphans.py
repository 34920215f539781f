"""No orphans (docs/faults.md): the embedded redis-server dies with its service however the
service dies, a stale one left in a data directory is cleaned up at start (only one that is
provably that directory's), and SIGTERM ends a long read at the grace deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import redis
from conftest import free_port
from procs import ServiceProcess
from stepstream.v1 import ingest_pb2_grpc, runs_pb2, runs_pb2_grpc
from stepstream_server.embedded_redis import EmbeddedRedis, redis_server_binary


def gone(pid: int) -> bool:
    """The process exited (a zombie waiting for its reaper counts: it runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def until_gone(pid: int) -> None:
    for _ in range(500):  # bounded: about 10 s
        if gone(pid):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} is still running")


def redis_children(svc: ServiceProcess) -> list[int]:
    found = []
    for pid in svc.children():
        try:
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("redis-server"):
                found.append(pid)
        except FileNotFoundError:
            pass
    return found


def test_kill9_leaves_no_redis_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for _ in range(5):
        svc = ServiceProcess(data, None, free_port()).start()
        pids = redis_children(svc)
        assert len(pids) == 1
        svc.kill9()
        until_gone(pids[0])


def test_stale_redis_of_the_data_dir_is_cleaned_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    where = data / "redis"
    where.mkdir(parents=True)
    # What a service killed before its Redis got the death signal leaves: a redis-server
    # running in <data>/redis, its PID in redis.pid.
    stale = subprocess.Popen(
        [
            redis_server_binary(),
            *("--port", "0", "--save", "", "--dir", str(where)),
            *("--unixsocket", str(where / "redis.sock")),
        ],
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        (where / "redis.pid").write_text(f"{stale.pid}\n")
        for _ in range(500):
            if os.readlink(f"/proc/{stale.pid}/cwd") == str(where):
                break
            time.sleep(0.01)
        svc = ServiceProcess(data, None, free_port()).start()
        try:
            assert stale.wait(10) == -signal.SIGKILL
            assert len(redis_children(svc)) == 1
        finally:
            svc.terminate()
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait()


def test_someone_elses_redis_is_never_killed(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    data = tmp_path / "data"
    (data / "redis").mkdir(parents=True)
    assert redis_server.process is not None
    # A PID file naming a live redis-server that runs elsewhere (PID reuse, a copied dir).
    (data / "redis" / "redis.pid").write_text(f"{redis_server.process.pid}\n")
    svc = ServiceProcess(data, None, free_port()).start()
    try:
        assert redis.Redis.from_url(redis_server.url).ping()
    finally:
        svc.terminate()
    assert redis_server.process.poll() is None


WIDE = 60_000


def test_sigterm_ends_a_long_read_within_the_grace_period(tmp_path: Path) -> None:
    svc = ServiceProcess(tmp_path / "data", None, free_port()).start()  # --grace 1
    assert svc.proc is not None
    with grpc.insecure_channel(svc.address) as ch:
        runs = runs_pb2_grpc.RunServiceStub(ch)
        runs.CreateRun(runs_pb2.CreateRunRequest(run_id="wide"))
        # Wide enough that reading every series takes seconds (about 4 s for 60,000 here, with
        # floors and reads per series): the SIGTERM lands while the store is still reading.
        write_wide(ingest_pb2_grpc.IngestServiceStub(ch), "wide", WIDE)
        outcome: list[object] = []

        def read() -> None:
            try:
                request = runs_pb2.ReadSeriesRequest(
                    selector=runs_pb2.SeriesSelector(run_id="wide")
                )
                outcome.append(sum(1 for _ in runs.ReadSeries(request)))
            except grpc.RpcError as exc:
                outcome.append(exc.code())

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.3)  # the read is under way in the store (it takes far longer)
        os.kill(svc.proc.pid, signal.SIGTERM)
        try:
            code = svc.proc.wait(10)  # grace 1 s, then the read is cancelled and interrupted
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            svc.proc.wait()
            raise AssertionError("the service outlived SIGTERM by 10 s during a read") from None
        reader.join(30)
    svc.proc = None
    assert code == 0
    assert outcome and outcome[0] != WIDE, outcome  # the read was cut, not finished


def write_wide(ingest: ingest_pb2_grpc.IngestServiceStub, run_id: str, series: int) -> None:
    from stepstream.v1 import ingest_pb2

    def requests():  # type: ignore[no-untyped-def]
        yield ingest_pb2.AppendPointsRequest(
            open=ingest_pb2.OpenStream(run_id=run_id, writer_id="w")
        )
        for seq, start in enumerate(range(0, series, 2000), start=1):
            names = [f"s{i}" for i in range(start, min(series, start + 2000))]
            block = ingest_pb2.FloatBlock(names=names, steps=[1.0], values=[1.0] * len(names))
            yield ingest_pb2.AppendPointsRequest(
                batch=ingest_pb2.PointBatch(sequence=seq, float_blocks=[block])
            )

    answers = list(ingest.AppendPoints(requests()))
    assert all(a.WhichOneof("result") in ("opened", "appended") for a in answers), answers
