"""Case 7: the web view. Headless Chromium (the system one, driven by Playwright) times a run
page of 50 series x 100,000 points until every chart is drawn and a two-run comparison chart of
1,000,000 points each; plus a 1,000,000-point series downsampled to 2,000 points from chunk
stats, against decoding every point (the read before schema version 3). Medians.

Runnable alone: `python -m bench.case_web [--reps N] [--quick]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import table
from bench.cases import Context
from bench.table import Row

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHUNK = 50_000  # points per chunk, as a trainer logging in 50,000-point batches writes them


def fill(path: Path, wide_series: int, wide_points: int, big_points: int) -> None:
    from stepstream_server.model import ChunkWrite
    from stepstream_server.store.base import RunCommit
    from stepstream_server.store.sqlite import SqliteStore

    store = SqliteStore(path, synchronous="OFF")
    try:
        for run_id, names, n in (
            ("wide", [f"train/s{i}" for i in range(wide_series)], wide_points),
            ("big1", ["loss"], big_points),
            ("big2", ["loss"], big_points),
        ):
            inc = f"inc-{run_id}"
            store.create_run(
                project="default",
                run_id=run_id,
                experiment="bench",
                tags=[],
                description="",
                config={"lr": 0.1},
                values={},
                incarnation_id=inc,
                parent=None,
                fork_step=None,
                now=time.time(),
            )
            steps = np.arange(n, dtype=np.float64)
            ts = 1.7e9 + steps / 100
            rng = np.random.default_rng(len(run_id))
            for name in names:
                vals = np.cumsum(rng.normal(size=n))
                chunks = [
                    ChunkWrite(
                        inc,
                        name,
                        False,
                        steps[i : i + CHUNK],
                        vals[i : i + CHUNK],
                        ts[i : i + CHUNK],
                    )
                    for i in range(0, n, CHUNK)
                ]
                store.commit([RunCommit("default", run_id, 0, chunks, [])])
    finally:
        store.close()


async def measure(work: Path, reps: int, quick: bool) -> dict[str, Any]:
    from playwright.async_api import async_playwright
    from stepstream_server.config import Settings
    from stepstream_server.reading import Selector, downsample, merge
    from stepstream_server.server import Service

    wide_series, wide_points, big = (5, 10_000, 100_000) if quick else (50, 100_000, 1_000_000)
    settings = Settings(
        address="127.0.0.1:0",
        data_dir=work / "data",
        web_address="127.0.0.1:0",
        sqlite_synchronous="OFF",
        grace_seconds=1.0,
    )
    fill(settings.store_path, wide_series, wide_points, big)
    service = await Service.start(settings)
    out: dict[str, Any] = {"wide": (wide_series, wide_points), "big": big}
    try:
        assert service.web is not None
        reader = service.web.reader
        sel = Selector("default", "big1", "", False)
        _, segments = await reader.view(sel)

        def whole_then_downsample(s: Any) -> int:
            parts = list(s.read(segments, "loss", False, -math.inf, math.inf))
            return len(downsample(merge(parts, "loss", False), 2000).steps)

        store = reader.store
        down, before = [], []
        for _ in range(max(reps, 10)):
            t0 = time.perf_counter()
            (points,) = await reader.read(sel, ["loss"], -math.inf, math.inf, max_points=2000)
            down.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await store.read(lambda s: None)  # the same thread hop, for a fair comparison
            await store.read(whole_then_downsample)
            before.append(time.perf_counter() - t0)
        out["down"] = {"seconds": down, "points": len(points.steps)}
        out["before"] = {"seconds": before}

        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                for key, path in (
                    ("run_page", "/runs/default/wide"),
                    ("compare", "/compare?project=default&run=big1&run=big2"),
                ):
                    times = []
                    for rep in range(reps + 1):
                        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                        t0 = time.perf_counter()
                        await page.goto(service.web.url + path)
                        await page.wait_for_selector("body[data-charts-drawn]", timeout=120_000)
                        elapsed = time.perf_counter() - t0
                        drawn = await page.eval_on_selector_all(
                            "section.chart[data-drawn]", "s => s.length"
                        )
                        await page.close()
                        if rep:  # the first load warms the store's page cache
                            times.append(elapsed)
                    out[key] = {"seconds": times, "charts": drawn}
            finally:
                await browser.close()
    finally:
        await service.stop()
    return out


def rows_of(result: dict[str, Any]) -> list[Row]:
    def med(key: str) -> float:
        return float(statistics.median(result[key]["seconds"]))

    series, points = result["wide"]
    big = result["big"]
    down, before = med("down"), med("before")
    return [
        Row(
            f"7. web: run page, {series} series x {points:,} points, until every chart is drawn",
            table.seconds,
            med("run_page"),
            noop_text="n/a",
            mlflow_text="—",
            target="< 2 s",
            met=med("run_page") < 2,
            notes=[f"charts drawn: {result['run_page']['charts']}; headless Chromium"],
        ),
        Row(
            f"7. web: comparison chart of 2 runs x {big:,} points",
            table.seconds,
            med("compare"),
            noop_text="n/a",
            mlflow_text="—",
            target="< 1 s",
            met=med("compare") < 1,
        ),
        Row(
            f"7. read {big:,} points downsampled to 2,000 from chunk stats",
            table.millis,
            down,
            noop_text="n/a",
            mlflow_text="—",
            target="< 10 ms",
            met=down < 0.010,
            notes=[
                f"points returned: {result['down']['points']:,}; decoding every point instead:"
                f" {before * 1000:.1f} ms ({before / down:.1f}x)"
            ],
        ),
    ]


def web(ctx: Context) -> list[Row]:
    return rows_of(asyncio.run(measure(ctx.work_dir, max(ctx.reps, 3), ctx.quick)))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.case_web", description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(measure(Path(tmp), args.reps, args.quick))
    for row in rows_of(result):
        print(f"{row.case}: {row.fmt(row.stepstream)} (target {row.target}); {' '.join(row.notes)}")
    print(json.dumps({k: v for k, v in result.items()}, default=str)[:2000], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
