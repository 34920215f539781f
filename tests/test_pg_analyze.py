"""After a bulk load into PostgreSQL the store ANALYZEs `series` and `chunks` itself (store/
pg_analyze.py): ListSeries pages of a wide run do not wait for autovacuum's first ANALYZE."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import psycopg
from stepstream.v1 import ingest_pb2_grpc, runs_pb2_grpc
from stepstream_server.config import Settings
from stepstream_server.embedded_redis import EmbeddedRedis
from stepstream_server.server import Service
from stepstream_server.store import pg_analyze
from wire import Stream, create_run, fblock, fseries


def manual_analyzes(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT relname, analyze_count FROM pg_stat_user_tables"
            " WHERE relname IN ('series', 'chunks')"
        ).fetchall()
    return {name: int(count) for name, count in rows}


# The threshold lowered for the test: a load past it takes the same path as one past the real
# MIN_ROWS (10,000), at a tenth of the rows, so the test does not wait on 12,000 series inserts.
MIN_ROWS = 1_000


async def test_bulk_load_is_analyzed_without_autovacuum(
    tmp_path: Path, redis_server: EmbeddedRedis, fresh_pg_url: str, monkeypatch
) -> None:
    monkeypatch.setattr(pg_analyze, "MIN_ROWS", MIN_ROWS)
    settings = Settings(
        address="127.0.0.1:0",
        data_dir=tmp_path / "data",
        redis_url=redis_server.url,
        store=fresh_pg_url,
        grace_seconds=1.0,
    )
    svc = await Service.start(settings)
    try:
        async with grpc.aio.insecure_channel(svc.address) as ch:
            runs = runs_pb2_grpc.RunServiceStub(ch)
            await create_run(runs, "wide")
            s = Stream(ingest_pb2_grpc.IngestServiceStub(ch))
            await s.open("wide")
            for block in range(4):  # 1,200 series and chunks, past MIN_ROWS
                names = [f"layer/{block}/{i:04d}" for i in range(300)]
                resp = await s.send(fblock(names, [1.0], values=[1.0] * len(names)))
                assert resp.appended.accepted_count == 300
            # Later commits look at the statistics (at most every 2 s) and ANALYZE.
            step = 2
            for _ in range(300):
                counts = manual_analyzes(fresh_pg_url)
                if counts["series"] and counts["chunks"]:
                    break
                await s.send(fseries("tick", [step], [1.0]))
                step += 1
                await asyncio.sleep(0.2)
            assert counts["series"] >= 1 and counts["chunks"] >= 1, counts
            assert svc.store.sync.analyzer.analyzed >= 2
    finally:
        await svc.stop()
