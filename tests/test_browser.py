"""The web view in a real browser: Debian's Chromium driven by Playwright (never a downloaded
browser). Each page is screenshotted into the test's artifacts; with
STEPSTREAM_SCREENSHOTS=docs/screenshots set, also into that folder (the README shows those:
`STEPSTREAM_SCREENSHOTS=docs/screenshots make test PYTEST_ARGS=tests/test_browser.py` remakes them),
so that an ordinary test run leaves the checkout as it found it."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from stepstream_server.config import Settings
from webdata import EXPERIMENT, HOSTILE, Family, family

pytestmark = pytest.mark.stores("sqlite")

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
SCREENSHOTS = os.environ.get("STEPSTREAM_SCREENSHOTS")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, web_address="127.0.0.1:0")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def page(browser: Any, service: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = await context.new_page()
    problems: list[str] = []
    pg.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.base = service.web.url
    yield pg
    await context.close()
    assert problems == []


@pytest.fixture
async def data(runs: Any, ingest: Any) -> Family:
    return await family(runs, ingest)


async def shot(pg: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    await pg.screenshot(path=str(path), full_page=False)
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SCREENSHOTS) / name)


async def charts_drawn(pg: Any) -> None:
    await pg.wait_for_selector("body[data-charts-drawn]", timeout=15_000)


async def visible_runs(pg: Any) -> list[str]:
    return await pg.eval_on_selector_all(
        "#runs tbody tr:not([hidden])", "rows => rows.map(r => r.dataset.run)"
    )


async def drawn(pg: Any, name: str) -> int:
    value = await pg.get_attribute(f'section.chart[data-name="{name}"]', "data-drawn")
    return int(value)


async def uplot(pg: Any, name: str, expression: str) -> Any:
    return await pg.evaluate(
        f"name => {{ const u = window.stepstream.charts.get(name).uplot; return {expression}; }}",
        name,
    )


async def test_runs_table_sort_filter_select_and_compare(page, data, tmp_path):
    pg = page
    await pg.goto(pg.base + "/?series=train/loss")
    assert await visible_runs(pg) == ["other", "sibling", "child", "base"]  # newest first
    assert await pg.text_content("#shown") == "4 of 4 runs"
    headers = await pg.eval_on_selector_all("#runs thead th", "hs => hs.map(h => h.textContent)")
    assert "lr" in headers and "batch" in headers and "train/loss last" in headers
    await shot(pg, "runs-table.png", tmp_path)
    # Sort by a config column both ways, then by a series column.
    lr = pg.locator("#runs thead th", has_text="lr")
    await lr.click()
    assert await visible_runs(pg) == ["child", "sibling", "base", "other"]
    await lr.click()
    assert await visible_runs(pg) == ["other", "base", "sibling", "child"]
    await pg.locator("#runs thead th", has_text="train/loss min").click()
    col = headers.index("train/loss min")
    mins = await pg.eval_on_selector_all(
        "#runs tbody tr", f"rows => rows.map(r => r.cells[{col}].dataset.sort)"
    )
    assert mins == sorted(mins, key=float)
    # Filters: text, state, tag, experiment.
    await pg.fill("#filter-text", "chi")
    assert await visible_runs(pg) == ["child"]
    await pg.fill("#filter-text", "")
    await pg.select_option("#filter-state", "FINISHED")
    assert await visible_runs(pg) == ["other"]
    await pg.select_option("#filter-state", "")
    await pg.select_option("#filter-tag", "fork")
    assert await visible_runs(pg) == ["child"]
    await pg.select_option("#filter-tag", "")
    await pg.select_option("#filter-experiment", EXPERIMENT)
    assert sorted(await visible_runs(pg)) == ["base", "child", "sibling"]
    # Select two runs and compare them on one chart per series.
    await pg.check('input.pick[value="base"]')
    await pg.check('input.pick[value="child"]')
    assert await pg.text_content("#compare") == "compare 2 selected"
    await pg.click("#compare")
    await pg.wait_for_url("**/compare?**")
    await charts_drawn(pg)
    assert await drawn(pg, "train/loss") == 2
    legend = await pg.eval_on_selector_all(
        'section.chart[data-name="train/loss"] .u-legend .u-series th',
        "ths => ths.map(t => t.textContent.trim())",
    )
    assert "base" in legend and "child" in legend
    # Natural order inside a group: layer2 before layer10; groups before ungrouped.
    names = await pg.eval_on_selector_all("section.chart", "ss => ss.map(s => s.dataset.name)")
    assert names.index("grad/layer2") < names.index("grad/layer10")
    await shot(pg, "compare.png", tmp_path)

    # Drag to zoom: the x range narrows and that range is read again at full resolution.
    name = "train/loss"
    over = pg.locator(f'section.chart[data-name="{name}"] .u-over')
    await over.scroll_into_view_if_needed()
    box = await over.bounding_box()
    await pg.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
    await pg.mouse.down()
    await pg.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2, steps=5)
    await pg.mouse.up()
    await pg.wait_for_selector(f'section.chart[data-name="{name}"][data-points]')
    lo, hi = await uplot(pg, name, "[u.scales.x.min, u.scales.x.max]")
    assert 0 < lo < hi < 200 and hi - lo < 120
    await pg.click("#reset-zoom")
    assert await uplot(pg, name, "u.scales.x.max - u.scales.x.min") > 150
    # Log scale and smoothing redraw every chart.
    await pg.check("#log-scale")
    assert await uplot(pg, name, "u.scales.y.distr") == 3
    await pg.uncheck("#log-scale")
    raw = await uplot(pg, name, "u.data[1].slice(40, 60)")
    await pg.eval_on_selector(
        "#smoothing", "el => { el.value = '0.9'; el.dispatchEvent(new Event('input')); }"
    )
    smooth = await uplot(pg, name, "u.data[1].slice(40, 60)")
    assert smooth != raw and await drawn(pg, name) == 2


async def test_run_page_inherited_toggle_changes_the_summary(page, data, tmp_path):
    pg = page
    await pg.goto(pg.base + "/runs/default/child")
    await charts_drawn(pg)
    stat = 'section.chart[data-name="train/loss"] .stat'
    before = await pg.text_content(stat)
    assert before.startswith("160 pts")  # 0..80 inherited, 81..159 its own
    marks = await pg.evaluate(
        "JSON.parse(document.getElementById('chart-config').textContent).runs[0].marks"
    )
    assert [(m["kind"], m["step"]) for m in marks] == [
        ("forked", 80)
    ]  # base's rewind at 120 lies past the fork
    await shot(pg, "run.png", tmp_path)
    await pg.uncheck("#inherited")
    await pg.wait_for_selector("body[data-summaries=own]")
    after = await pg.text_content(stat)
    assert after.startswith("79 pts") and after != before
    assert await uplot(pg, "train/loss", "u.data[0][0]") == 81
    # x by wall-clock time: the points' timestamps (seconds since the epoch), a time scale.
    await pg.select_option("#x-axis", "time")
    assert await uplot(pg, "train/loss", "u.data[0][0] > 1.5e9 && u.scales.x.time") is True


async def test_lineage_graph_with_fork_and_rewind(page, data, tmp_path):
    pg = page
    await pg.goto(pg.base + "/lineage/default/child")
    nodes = await pg.eval_on_selector_all(
        "a.node", "ns => ns.map(n => [n.dataset.incarnation, n.getAttribute('class')])"
    )
    classes = dict(nodes)
    assert set(classes) == {data.base_a, data.base_b, data.child, data.sibling}
    assert "outside" in classes[data.sibling]  # the child's view does not read its sibling
    assert "archived" in classes[data.base_a] and "current" in classes[data.child]
    edges = await pg.eval_on_selector_all(".edge text", "ts => ts.map(t => t.textContent)")
    assert sorted(edges) == ["fork @ 150", "fork @ 80", "rewind @ 120"]
    await shot(pg, "lineage.png", tmp_path)
    # Every node links to its charts: the archived incarnation's by its immutable ID.
    await pg.click(f'a.node[data-incarnation="{data.base_a}"]')
    await pg.wait_for_url(f"**/runs/default/base?incarnation={data.base_a}")
    await charts_drawn(pg)
    assert await uplot(pg, "train/loss", "u.data[0].length") == 200


async def test_hostile_names_stay_text(page, data):
    pg = page
    for path in (
        "/",
        "/runs/default/base",
        f"/experiments/default/{quote(EXPERIMENT, safe='')}",
        "/compare?project=default&run=base&run=child",
        "/lineage/default/base",
    ):
        await pg.goto(pg.base + path)
        body = await pg.text_content("body")
        inline = "[...document.scripts].filter(s => !s.src && s.type !== 'application/json')"
        assert await pg.evaluate(inline + ".length") == 0, path
        if path.startswith(("/runs", "/compare")):
            await charts_drawn(pg)
            assert HOSTILE in body, path
        if path != "/lineage/default/base":
            assert EXPERIMENT in body or path.startswith("/compare"), path
