"""Wide runs: floors load per series on first use, ListSeries walks pages (docs/replicas.md)."""

from __future__ import annotations

import os

import grpc
import pytest
from conftest import free_port
from procs import ServiceProcess
from stepstream.v1 import ingest_pb2, ingest_pb2_grpc, runs_pb2, runs_pb2_grpc
from stepstream_server import limits
from wire import Stream, create_run, fblock, fseries, rpc_reason

WIDE = int(os.environ.get("STEPSTREAM_WIDE_SERIES", "1000000"))
BLOCK = limits.MAX_BLOCK_NAMES


def name(i: int) -> str:
    return f"layer/{i:07d}"


async def build_wide(
    runs: runs_pb2_grpc.RunServiceStub,
    ingest: ingest_pb2_grpc.IngestServiceStub,
    n: int,
    block: int = BLOCK,
) -> None:
    await create_run(runs, "wide")
    stream = Stream(ingest)
    await stream.open("wide", writer_id="builder")
    for start in range(0, n, block):
        names = [name(i) for i in range(start, min(n, start + block))]
        resp = await stream.send(fblock(names, [1.0], values=[float(start)] * len(names)))
        assert resp.appended.accepted_count == len(names), resp
    await stream.close()


async def walk(runs: runs_pb2_grpc.RunServiceStub, page_size: int) -> list[str]:
    seen: list[str] = []
    token = ""
    while True:
        resp = await runs.ListSeries(
            runs_pb2.ListSeriesRequest(
                selector=runs_pb2.SeriesSelector(run_id="wide"),
                page_size=page_size,
                page_token=token,
            )
        )
        assert len(resp.series) <= page_size
        seen += [s.name for s in resp.series]
        token = resp.next_page_token
        if not token:
            return seen


@pytest.mark.timeout(600)
async def test_million_series_restart_first_write_and_pages(tmp_path):
    svc = ServiceProcess(tmp_path / "data", None, free_port()).start()
    try:
        async with grpc.aio.insecure_channel(svc.address) as ch:
            await build_wide(
                runs_pb2_grpc.RunServiceStub(ch), ingest_pb2_grpc.IngestServiceStub(ch), WIDE
            )
        assert svc.terminate() == 0
        svc.start()  # a fresh embedded Redis: no epoch, no floors
        async with grpc.aio.insecure_channel(svc.address) as ch:
            runs = runs_pb2_grpc.RunServiceStub(ch)
            stream = Stream(ingest_pb2_grpc.IngestServiceStub(ch))
            await stream.open("wide", writer_id="after")
            # The first write: one old series, judged against its floor from the store.
            resp = await stream.send(fseries(name(WIDE - 1), [1, 2], [0.0, 9.0]))
            assert resp.appended.accepted_count == 1
            (rej,) = resp.appended.rejections
            assert (rej.reason, rej.floor) == ("STEP_NOT_INCREASING", 1.0)
            resp = await stream.send(fseries("new/series", [0], [1.0]))
            assert resp.appended.accepted_count == 1
            await stream.close()
            seen = await walk(runs, limits.MAX_PAGE_SIZE)
            assert seen == sorted([name(i) for i in range(WIDE)] + ["new/series"])
    finally:
        svc.terminate()


@pytest.mark.stores("sqlite", "postgresql")
async def test_pages_walk_every_series_once(runs, ingest, store_kind):
    # A smaller run on PostgreSQL keeps the test short (its bulk load is the slow part).
    n = 25_007 if store_kind == "sqlite" else 1_207
    await build_wide(runs, ingest, n, block=10_000)
    stream = Stream(ingest)
    await stream.open("wide", writer_id="strings")
    # A string series sharing a float series' name sorts right after it.
    await stream.send(ingest_pb2.StringSeries(name=name(5), steps=[1], values=["s"]))
    await stream.close()
    expected = sorted([name(i) for i in range(n)] + [name(5)])
    assert await walk(runs, 1000 if store_kind == "sqlite" else 100) == expected
    first = await runs.ListSeries(
        runs_pb2.ListSeriesRequest(selector=runs_pb2.SeriesSelector(run_id="wide"), page_size=3)
    )
    assert [(s.name, s.string_series) for s in first.series] == [
        (name(0), False),
        (name(1), False),
        (name(2), False),
    ]
    assert first.series[0].count == 1 and first.series[0].last == 0.0


@pytest.mark.stores("sqlite", "postgresql")
async def test_pages_of_a_fork_and_string_neighbours(runs, ingest):
    await create_run(runs, "p")
    s = Stream(ingest)
    await s.open("p")
    await s.send(*[fseries(f"m{i}", [1], [1.0]) for i in range(5)])
    await s.send(ingest_pb2.StringSeries(name="m2", steps=[1], values=["x"]))
    await s.close()
    await create_run(runs, "c", fork_run_id="p", fork_step=1)
    s = Stream(ingest)
    await s.open("c")
    await s.send(fseries("m1", [2], [2.0]), fseries("z", [1], [1.0]))
    await s.close()
    seen = []
    token = ""
    while True:
        resp = await runs.ListSeries(
            runs_pb2.ListSeriesRequest(
                selector=runs_pb2.SeriesSelector(run_id="c"), page_size=2, page_token=token
            )
        )
        seen += [(x.name, x.string_series, x.count) for x in resp.series]
        token = resp.next_page_token
        if not token:
            break
    assert seen == [
        ("m0", False, 1),
        ("m1", False, 2),
        ("m2", False, 1),
        ("m2", True, 1),
        ("m3", False, 1),
        ("m4", False, 1),
        ("z", False, 1),
    ]


@pytest.mark.parametrize(
    ("page_size", "page_token", "reason", "message"),
    [
        (-1, "", "INVALID_PAGE_SIZE", "page_size must not be negative, got -1"),
        (
            0,
            "not-a-token",
            "INVALID_PAGE_TOKEN",
            "page_token is not a token this service issued; pass next_page_token unchanged",
        ),
        (
            0,
            "other",  # replaced by a real token of another selector below
            "INVALID_PAGE_TOKEN",
            "page_token belongs to another selector; list from the first page",
        ),
    ],
)
async def test_page_errors(runs, ingest, page_size, page_token, reason, message):
    for run_id in ("a", "b"):
        await create_run(runs, run_id)
        s = Stream(ingest)
        await s.open(run_id)
        await s.send(fseries("x", [1], [1.0]), fseries("y", [1], [1.0]))
        await s.close()
    if page_token == "other":
        first = await runs.ListSeries(
            runs_pb2.ListSeriesRequest(selector=runs_pb2.SeriesSelector(run_id="b"), page_size=1)
        )
        page_token = first.next_page_token
        assert page_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await runs.ListSeries(
            runs_pb2.ListSeriesRequest(
                selector=runs_pb2.SeriesSelector(run_id="a"),
                page_size=page_size,
                page_token=page_token,
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_reason(err.value) == reason
    assert err.value.details() == f"{reason}: {message}"


async def test_page_size_above_the_maximum_is_lowered(runs, ingest):
    await build_wide(runs, ingest, limits.MAX_PAGE_SIZE + 1)
    resp = await runs.ListSeries(
        runs_pb2.ListSeriesRequest(
            selector=runs_pb2.SeriesSelector(run_id="wide"), page_size=limits.MAX_PAGE_SIZE * 10
        )
    )
    assert len(resp.series) == limits.MAX_PAGE_SIZE and resp.next_page_token
    rest = await runs.ListSeries(
        runs_pb2.ListSeriesRequest(
            selector=runs_pb2.SeriesSelector(run_id="wide"), page_token=resp.next_page_token
        )
    )
    assert [s.name for s in rest.series] == [name(limits.MAX_PAGE_SIZE)]
    assert rest.next_page_token == ""
