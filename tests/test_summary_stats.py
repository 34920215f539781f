"""ListSeries summaries come from chunk stats where they suffice (codec.summary_piece): they
equal the summaries of the decoded points, bit for bit, on NaN, infinities, ties of -0.0 and
0.0, strings, chunks cut by a fork or a rewind, inherited history and archived incarnations."""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import pytest
from stepstream.v1 import runs_pb2
from wire import Stream, create_run, fseries, read_points, sseries

pytestmark = pytest.mark.stores("sqlite", "postgresql")

INF, NAN = math.inf, math.nan
BATCH = 700  # points per batch: a chunk of 700 points is three stats blocks of 256


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def values_of(kind: str, start: int, n: int, rng: random.Random) -> list[float]:
    if kind == "all_nan":
        return [NAN] * n
    if kind == "nan_and_minus_inf":  # no block has a finite value: min and max are -inf
        return [NAN if i % 3 else -INF for i in range(n)]
    if kind == "nan_and_inf":
        return [INF if i % 5 == 2 else NAN for i in range(n)]
    if kind == "zeros":  # ties: which zero comes first decides the sign of min and max
        return [(-0.0 if (start + i) % 7 == 3 else 0.0) for i in range(n)]
    if kind == "ties":  # the extremes repeat in many blocks and chunks
        return [float((start + i) % 4) for i in range(n)]
    out = [rng.uniform(-1e3, 1e3) for _ in range(n)]
    for _ in range(n // 50):
        out[rng.randrange(n)] = rng.choice([NAN, INF, -INF, 1e300, -1e300, -0.0])
    return out


KINDS = ["mixed", "all_nan", "nan_and_minus_inf", "nan_and_inf", "zeros", "ties"]


def expected(steps: list[float], values: list[Any], strings: bool) -> tuple[Any, ...]:
    """The summary of decoded points: count, last step, last, min, max (the first non-NaN
    extreme in step order), last string."""
    if strings:
        return (len(steps), bits(steps[-1]), None, None, None, values[-1])
    shown = [v for v in values if not math.isnan(v)]
    lo = min(shown) if shown else NAN  # min/max keep the first of equal values
    hi = max(shown) if shown else NAN
    return (len(steps), bits(steps[-1]), bits(values[-1]), bits(lo), bits(hi), "")


def got(s: runs_pb2.SeriesSummary) -> tuple[Any, ...]:
    if s.string_series:
        return (s.count, bits(s.last_step), None, None, None, s.last_string)
    return (s.count, bits(s.last_step), bits(s.last), bits(s.min), bits(s.max), "")


async def write(ingest, run_id: str, steps: range, rng: random.Random, writer: str) -> None:
    s = Stream(ingest)
    await s.open(run_id, writer_id=writer)
    for lo in range(steps.start, steps.stop, BATCH):
        part = range(lo, min(lo + BATCH, steps.stop))
        series = [fseries(k, part, values_of(k, lo, len(part), rng)) for k in KINDS]
        resp = await s.send(*series, sseries("log", part[::100], [f"l{i}" for i in part[::100]]))
        assert resp.WhichOneof("result") == "appended", resp
    await s.close()


async def check(runs, **selector: Any) -> int:
    """Every summary of the view equals the one of its decoded points; the series checked."""
    resp = await runs.ListSeries(
        runs_pb2.ListSeriesRequest(selector=runs_pb2.SeriesSelector(**selector), page_size=1000)
    )
    assert resp.series and not resp.next_page_token
    run_id = selector.pop("run_id", "")
    for s in resp.series:
        steps, values = await read_points(runs, run_id, s.name, strings=s.string_series, **selector)
        assert got(s) == expected(steps, values, s.string_series), (selector, s.name)
    return len(resp.series)


async def test_summaries_from_stats_equal_decoded_ones_through_fork_and_rewind(runs, ingest):
    rng = random.Random(8)
    await create_run(runs, "p")
    await write(ingest, "p", range(0, 2500), rng, "w1")  # 4 chunks a series, the last short
    assert await check(runs, run_id="p") == len(KINDS) + 1
    old = (await runs.GetRun(runs_pb2.GetRunRequest(run_id="p"))).run.current_incarnation_id

    # A fork cuts the parent's chunk 1000..1399 at step 1100: that chunk is decoded.
    await create_run(runs, "c", fork_run_id="p", fork_step=1100)
    await check(runs, run_id="c")  # inherited only
    await write(ingest, "c", range(1101, 2000), rng, "w2")
    await check(runs, run_id="c")
    await check(runs, run_id="c", own_points_only=True)

    # A rewind into the middle of a chunk, then new points; the archived view keeps its own.
    await runs.RewindRun(runs_pb2.RewindRunRequest(run_id="p", step=1750))
    await check(runs, run_id="p")
    await write(ingest, "p", range(1751, 3000), rng, "w3")
    await check(runs, run_id="p")
    await check(runs, incarnation_id=old)

    # A fork of the rewound run inherits through two hops, both cut.
    await create_run(runs, "g", fork_run_id="p", fork_step=2222)
    await write(ingest, "g", range(2223, 2300), rng, "w4")
    await check(runs, run_id="g")
