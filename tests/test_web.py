"""The read-only web view (SPEC §7): JSON and HTML over real HTTP on loopback, against the real
service with a forked and rewound run written through the wire protocol."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from conftest import free_port
from google.protobuf import struct_pb2
from procs import wait_serving
from stepstream.v1 import runs_pb2
from stepstream_server import web
from stepstream_server.config import Settings
from stepstream_server.server import Service
from wire import Stream, create_run, fseries, sseries

EXPERIMENT = "e/<b>x</b>"
SCRIPT = "<script>alert(1)</script>"
# No proxy from the environment: every request goes straight to the loopback server.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, web_address="127.0.0.1:0")


def loss_value(i: int) -> float:
    return {10: math.nan, 20: math.inf, 30: -math.inf}.get(i, i * 0.5)


@dataclasses.dataclass
class Lineage:
    """base: created (A), rewound to 50 (B, A archived); child: forked from base at 40 (C)."""

    a: str
    b: str
    c: str


@pytest.fixture
async def lineage(runs: Any, ingest: Any) -> Lineage:
    config = struct_pb2.Struct()
    config.update({"lr": 0.1})
    await create_run(
        runs,
        "base",
        experiment=EXPERIMENT,
        tags=["t<1>"],
        description="<i>desc</i>",
        config=config,
    )
    s = Stream(ingest)
    await s.open("base", writer_id="w1")
    r = await s.send(
        fseries("loss", range(100), [loss_value(i) for i in range(100)]),
        fseries(SCRIPT, range(10), range(10)),
        sseries("stdout", [0, 1], ["hello <b>", "world"]),
    )
    assert r.appended.accepted_count == 112
    await s.close()
    a = (await runs.GetRun(runs_pb2.GetRunRequest(run_id="base"))).run.current_incarnation_id
    rewound = await runs.RewindRun(runs_pb2.RewindRunRequest(run_id="base", step=50))
    b = rewound.run.current_incarnation_id
    s = Stream(ingest)
    await s.open("base", writer_id="w2")
    assert (
        await s.send(fseries("loss", range(51, 60), [i * 0.5 for i in range(51, 60)]))
    ).HasField("appended")
    await s.close()
    child = await create_run(runs, "child", experiment=EXPERIMENT, fork_run_id="base", fork_step=40)
    s = Stream(ingest)
    await s.open("child", writer_id="w3")
    r = await s.send(fseries("loss", range(41, 46), [i * 0.5 for i in range(41, 46)]))
    assert r.appended.accepted_count == 5
    await s.close()
    return Lineage(a, b, child.current_incarnation_id)


# -- HTTP helpers ---------------------------------------------------------------------------


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        def strict(constant: str) -> None:
            raise AssertionError(f"not strict JSON: bare {constant}")

        assert self.headers["Content-Type"].startswith("application/json")
        return json.loads(self.body, parse_constant=strict)

    @property
    def text(self) -> str:
        return self.body.decode()


async def get(service: Service, path: str) -> Reply:
    assert service.web is not None
    return await fetch(service.web.url + path)


async def fetch(url: str) -> Reply:
    def run() -> Reply:
        try:
            with OPENER.open(url, timeout=10) as resp:
                return Reply(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return Reply(err.code, dict(err.headers), err.read())

    return await asyncio.to_thread(run)


async def raw(service: Service, data: bytes) -> bytes:
    """Send bytes as they are, return the server's first answer (or b"" when it closes)."""
    assert service.web is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", service.web.port)
    try:
        writer.write(data)
        await writer.drain()
        if not data:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(64 * 1024), 10)
    finally:
        writer.close()
        await writer.wait_closed()


def error_of(reply: Reply) -> tuple[int, str]:
    err = reply.json()["error"]
    assert err["code"] == reply.status
    return reply.status, err["reason"]


# -- JSON -----------------------------------------------------------------------------------


async def test_runs_list_with_incarnations_and_head(service, lineage):
    body = (await get(service, "/api/runs?" + urlencode({"experiment": EXPERIMENT}))).json()
    assert body["project"] == "default" and body["experiment"] == EXPERIMENT
    base, child = body["runs"]
    assert (base["run_id"], child["run_id"]) == ("base", "child")
    assert (base["experiment_head"], child["experiment_head"]) == (False, True)
    assert base["experiment"] == EXPERIMENT and base["state"] == "RUNNING"
    assert base["tags"] == ["t<1>"] and base["config"] == {"lr": 0.1}
    assert base["current_incarnation_id"] == lineage.b
    assert [
        (
            i["incarnation_id"],
            i["origin"],
            i["archived"],
            i["parent_incarnation_id"],
            i["fork_step"],
        )
        for i in base["incarnations"]
    ] == [(lineage.a, "CREATED", True, None, None), (lineage.b, "REWOUND", False, lineage.a, 50)]
    (inc,) = child["incarnations"]
    assert (inc["parent_incarnation_id"], inc["parent_run_id"], inc["fork_step"]) == (
        lineage.b,
        "base",
        40,
    )
    assert inc["create_time"].endswith("Z")
    assert child["url"] == f"{service.web.url}/runs/default/child"
    # Every run of the project when no experiment is named; none of another project.
    everything = (await get(service, "/api/runs")).json()["runs"]
    assert [r["run_id"] for r in everything] == ["base", "child"]
    assert (await get(service, "/api/runs?project=other")).json()["runs"] == []


async def test_one_run_with_series_summaries(service, lineage):
    body = (await get(service, "/api/runs/default/base")).json()
    assert body["run"]["run_id"] == "base" and body["incarnation_id"] == lineage.b
    series = {(s["name"], s["string_series"]): s for s in body["series"]}
    assert set(series) == {("loss", False), (SCRIPT, False), ("stdout", True)}
    loss = series["loss", False]
    # 0..50 kept by the rewind, 51..59 logged after it; the extremes are the infinities.
    assert (loss["count"], loss["last_step"], loss["last"]) == (60, 59, 29.5)
    assert (loss["min"], loss["max"]) == ("-Infinity", "Infinity")
    assert series["stdout", True]["last_string"] == "world"
    own = (await get(service, "/api/runs/default/child?own=1")).json()
    assert [(s["name"], s["count"]) for s in own["series"]] == [("loss", 5)]


async def test_series_inherited_own_and_non_finite_values(service, lineage):
    body = (await get(service, "/api/series?run_id=child&name=loss")).json()
    (loss,) = body["series"]
    assert body["max_points"] == web.DEFAULT_MAX_POINTS
    assert loss["steps"] == list(range(46))
    assert (loss["values"][10], loss["values"][20], loss["values"][30]) == (
        "NaN",
        "Infinity",
        "-Infinity",
    )
    assert loss["values"][41:] == [i * 0.5 for i in range(41, 46)]
    assert len(loss["timestamps"]) == 46
    own = (await get(service, "/api/series?run_id=child&name=loss&own=1")).json()
    assert own["series"][0]["steps"] == list(range(41, 46))
    # By immutable ID: the archived incarnation still holds everything it had.
    archived = (await get(service, f"/api/series?incarnation_id={lineage.a}&name=loss")).json()
    assert archived["series"][0]["steps"] == list(range(100))
    # Along the experiment lineage: the head is the child.
    query = urlencode({"experiment": EXPERIMENT, "name": "loss"})
    assert (await get(service, "/api/series?" + query)).json()["series"][0]["steps"] == list(
        range(46)
    )
    # Step ranges, several names, both kinds of a name.
    both = (
        await get(
            service,
            "/api/series?" + urlencode({"run_id": "base", "name": [SCRIPT, "stdout"]}, doseq=True),
        )
    ).json()
    assert sorted((s["name"], s["string_series"]) for s in both["series"]) == [
        (SCRIPT, False),
        ("stdout", True),
    ]
    assert (await get(service, "/api/series?run_id=base&name=stdout")).json()["series"][0][
        "values"
    ] == ["hello <b>", "world"]
    window = (await get(service, "/api/series?run_id=base&name=loss&step_min=5&step_max=7")).json()
    assert window["series"][0]["steps"] == [5, 6, 7]


async def test_downsampling_keeps_nan_and_infinities(service, lineage):
    body = (
        await get(service, f"/api/series?incarnation_id={lineage.a}&name=loss&max_points=10")
    ).json()
    (loss,) = body["series"]
    assert len(loss["steps"]) <= 10
    assert {"NaN", "Infinity", "-Infinity"} <= set(v for v in loss["values"] if isinstance(v, str))


async def test_lineage_tree_with_fork_and_rewind_points(service, lineage):
    tree = (await get(service, "/api/lineage/default/child")).json()
    assert tree["current_incarnation_id"] == lineage.c
    nodes = tree["incarnations"]
    assert [
        (
            n["incarnation_id"],
            n["run_id"],
            n["origin"],
            n["parent_incarnation_id"],
            n["fork_step"],
            n["archived"],
            n["current"],
            n["visible_to_step"],
            n["children"],
        )
        for n in nodes
    ] == [
        (lineage.a, "base", "CREATED", None, None, True, False, 40, [lineage.b]),
        (lineage.b, "base", "REWOUND", lineage.a, 50, False, False, 40, [lineage.c]),
        (lineage.c, "child", "FORKED", lineage.b, 40, False, True, None, []),
    ]
    base = (await get(service, "/api/lineage/default/base")).json()["incarnations"]
    # The whole family: the child forked from base is in base's tree too, outside its view.
    assert [(n["incarnation_id"], n["visible_to_step"], n["in_view"]) for n in base] == [
        (lineage.a, 50, True),
        (lineage.b, None, True),
        (lineage.c, None, False),
    ]
    assert [n["run_current"] for n in base] == [False, True, True]
    assert base[0]["charts_path"] == f"/runs/default/base?incarnation={lineage.a}"
    assert base[2]["charts_path"] == "/runs/default/child"


async def test_errors_carry_reason_and_http_status(service, lineage):
    cases = {
        "/api/runs/default/nope": (404, "RUN_NOT_FOUND"),
        "/api/lineage/default/nope": (404, "RUN_NOT_FOUND"),
        "/api/runs/bad%20project/base": (400, "INVALID_PROJECT"),
        "/api/runs?project=a%2Fb": (400, "INVALID_PROJECT"),
        "/api/series?incarnation_id=inc-nope": (404, "INCARNATION_NOT_FOUND"),
        "/api/series?experiment=nope": (404, "EXPERIMENT_NOT_FOUND"),
        f"/api/series?run_id=base&incarnation_id={lineage.a}": (400, "INVALID_SELECTOR"),
        "/api/series": (400, "INVALID_SELECTOR"),
        "/api/series?run_id=base&max_points=2": (400, "INVALID_MAX_POINTS"),
        "/api/series?run_id=base&max_points=1000001": (400, "INVALID_MAX_POINTS"),
        "/api/series?run_id=base&max_points=abc": (400, "INVALID_QUERY"),
        "/api/series?run_id=base&own=maybe": (400, "INVALID_QUERY"),
        "/api/series?run_id=base&step_min=nan": (400, "INVALID_QUERY"),
    }
    for path, expected in cases.items():
        reply = await get(service, path)
        assert error_of(reply) == expected, path
    err = (await get(service, "/api/runs/default/nope")).json()["error"]
    assert err["status"] == "NOT_FOUND" and err["metadata"]["run_id"] == "nope"
    assert "'nope'" in err["message"]
    missing = await get(service, "/nowhere")
    assert missing.status == 404 and missing.headers["Content-Type"].startswith("text/plain")
    page = await get(service, "/runs/default/nope")
    assert page.status == 404 and "RUN_NOT_FOUND" in page.text
    assert (await get(service, "/experiments/default/nope")).status == 404
    assert (await get(service, f"/runs/default/base?incarnation={lineage.c}")).status == 404


async def test_garbage_requests_get_short_answers(service):
    # HTTP itself is aiohttp's: these only check that the view answers and carries on.
    garbage = {
        b"GARBAGE\r\n\r\n": 400,
        b"\xff\xfe\xfd\r\n\r\n": 400,
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n": 400,
        b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n": 400,
        b"POST /api/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello": 405,
        b"DELETE /runs/default/base HTTP/1.1\r\nHost: x\r\n\r\n": 405,
    }
    for data, expected in garbage.items():
        answer = await raw(service, data)
        assert int(answer.split(b" ", 2)[1]) == expected, (data[:60], answer[:200])
    answer = await raw(service, b"PUT / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"\r\nAllow: " in answer and b"GET" in answer
    assert await raw(service, b"") == b""
    ok = await raw(service, b"GET /api/runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ")
    assert (await get(service, "/")).status == 200


# -- HTML -----------------------------------------------------------------------------------


def node_of(page: str, incarnation_id: str) -> str:
    """The <a class="node ..."> element of an incarnation in a lineage graph."""
    end = page.index(f'data-incarnation="{incarnation_id}"')
    return page[page.rindex("<a ", 0, end) : page.index("</a>", end)]


async def test_index_is_a_runs_table_newest_first(service, runs, lineage):
    await create_run(runs, "loner")
    reply = await get(service, "/")
    page = reply.text
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in reply.headers["Content-Security-Policy"]
    assert "e/&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert f'href="/experiments/default/{quote(EXPERIMENT, safe="")}"' in page
    rows = re.findall(r'<tr data-run="([^"]+)"', page)
    assert rows == ["loner", "child", "base"]
    assert "t&lt;1&gt;" in page and ">lr</th>" in page
    # Series columns: last, min and max of the chosen series (the newest run's by default).
    chosen = (await get(service, "/?series=loss&config=lr")).text
    assert "loss <small>min</small>" in chosen and 'data-sort="-Infinity"' in chosen
    other = await get(service, "/?project=other")
    assert other.status == 200 and "No runs" in other.text
    assert (await get(service, "/?project=bad%20name")).status == 400
    await create_run(runs, "elsewhere", project="p2")
    listed = (await get(service, "/?project=other")).text
    assert (
        'Other projects: <a href="/?project=default">default</a>, <a href="/?project=p2">p2</a>'
        in listed
    )


async def test_run_page_shows_lineage_graph_archived_ids_and_escaped_series(service, lineage):
    reply = await get(service, "/runs/default/base")
    page = reply.text
    assert reply.status == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    assert re.findall(r"<script[^>]*>", page) == [
        '<script type="application/json" id="chart-config">',
        '<script src="/static/vendor/uPlot.iife.min.js">',
        '<script src="/static/app.js">',
    ]
    assert "&lt;i&gt;desc&lt;/i&gt;" in page and "t&lt;1&gt;" in page
    assert "archived" in node_of(page, lineage.a).split(">")[0]
    assert "current" in node_of(page, lineage.b).split(">")[0]
    assert "rewound @ 50" in node_of(page, lineage.b)
    assert f'href="/runs/default/base?incarnation={lineage.a}"' in node_of(page, lineage.a)
    assert 'id="inherited"' in page
    child = (await get(service, "/runs/default/child")).text
    for inc in (lineage.a, lineage.b, lineage.c):
        assert f'data-incarnation="{inc}"' in child
    assert "forked @ 40" in node_of(child, lineage.c)
    assert "seen to 40" in node_of(child, lineage.a)
    assert ">fork @ 40</text>" in child and ">rewind @ 50</text>" in child
    # An archived incarnation's own charts, by its immutable ID.
    archived = await get(service, f"/runs/default/base?incarnation={lineage.a}")
    assert archived.status == 200
    assert f'"incarnation_id": "{lineage.a}"' in archived.text
    lineage_page = await get(service, "/lineage/default/child")
    assert lineage_page.status == 200 and node_of(lineage_page.text, lineage.c)


async def test_experiment_page_compares_every_run(service, lineage):
    reply = await get(service, f"/experiments/default/{quote(EXPERIMENT, safe='')}")
    page = reply.text
    assert reply.status == 200
    assert "<h1>Experiment <code>e/&lt;b&gt;x&lt;/b&gt;</code></h1>" in page
    assert 'href="/runs/default/base"' in page and 'href="/runs/default/child"' in page
    assert '"label": "base"' in page and '"label": "child"' in page
    assert 'data-name="loss"' in page
    # The same name with its slash unescaped reaches the same page.
    assert (await get(service, "/experiments/default/e/%3Cb%3Ex%3C%2Fb%3E")).status == 200
    compare = await get(service, "/compare?run=base&run=child")
    assert compare.status == 200 and '"run_id": "child"' in compare.text
    assert error_of(await get(service, "/api/runs/default/nope"))[1] == "RUN_NOT_FOUND"
    assert (await get(service, "/compare")).status == 400


async def test_static_assets(service):
    js = await get(service, "/static/app.js")
    assert js.status == 200 and "javascript" in js.headers["Content-Type"]
    assert b"/api/series" in js.body
    css = await get(service, "/static/app.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    uplot = await get(service, "/static/vendor/uPlot.iife.min.js")
    assert uplot.status == 200 and b"uPlot" in uplot.body
    assert (await get(service, "/static/other.js")).status == 404


# -- links in Run ---------------------------------------------------------------------------


async def test_run_urls_filled_and_pointing_into_the_view(service, runs, lineage):
    base_url = service.web.url
    assert base_url == f"http://127.0.0.1:{service.web.port}" and service.web.port != 0
    run = (await runs.GetRun(runs_pb2.GetRunRequest(run_id="base"))).run
    assert run.url == f"{base_url}/runs/default/base"
    assert run.experiment_url == f"{base_url}/experiments/default/{quote(EXPERIMENT, safe='')}"
    assert (await fetch(run.url)).status == 200
    experiment_page = await fetch(run.experiment_url)
    assert experiment_page.status == 200 and "child" in experiment_page.text
    loner = await create_run(runs, "loner", project="p2")
    assert loner.url == f"{base_url}/runs/p2/loner" and loner.experiment_url == ""
    listed = (await runs.ListRuns(runs_pb2.ListRunsRequest(experiment=EXPERIMENT))).runs
    assert [r.url for r in listed] == [run.url, f"{base_url}/runs/default/child"]


async def test_no_web_view_no_urls_and_stop_ends_open_connections(settings):
    off = await Service.start(dataclasses.replace(settings, web_address=None))
    try:
        assert off.web is None
        from grpc import aio

        async with aio.insecure_channel(off.address) as ch:
            from stepstream.v1 import runs_pb2_grpc

            stub = runs_pb2_grpc.RunServiceStub(ch)
            run = await create_run(stub, "r", experiment="e")
            assert (run.url, run.experiment_url) == ("", "")
            got = (await stub.GetRun(runs_pb2.GetRunRequest(run_id="r"))).run
            assert (got.url, got.experiment_url) == ("", "")
    finally:
        await off.stop()
    on = await Service.start(settings)
    assert on.web is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", on.web.port)
    try:
        writer.write(b"GET / HT")  # a client that never finishes its request
        await writer.drain()
        await asyncio.wait_for(on.stop(), 15)
        with contextlib.suppress(ConnectionResetError):  # FIN or RST: either way, closed
            assert await asyncio.wait_for(reader.read(), 5) == b""
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", on.web.port)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def test_addresses():
    assert web.split_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert web.split_address("[::1]:0") == ("::1", 0)
    for bad in ("8080", ":8080", "host:", "host:port", "host:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            web.split_address(bad)
    assert web.base_url("::1", 80) == "http://[::1]:80"
    assert web.run_url("", "p", "r") == "" and web.experiment_url("http://h:1", "p", "") == ""
    assert web.experiment_url("http://h:1", "p", "a/b c") == "http://h:1/experiments/p/a%2Fb%20c"


def test_cli_serves_the_web_view(tmp_path: Path, redis_server: Any):
    grpc_port, web_port = free_port(), free_port()
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stepstream_server.cli",
                "serve",
                "--address",
                f"127.0.0.1:{grpc_port}",
                "--web-address",
                f"127.0.0.1:{web_port}",
                "--data-dir",
                str(tmp_path / "data"),
                "--redis-url",
                redis_server.url,
                "--grace",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_serving(f"127.0.0.1:{grpc_port}", 30, proc)
        with OPENER.open(f"http://127.0.0.1:{web_port}/api/runs", timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read()) == {
                "project": "default",
                "experiment": "",
                "runs": [],
            }
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    assert f"web view on http://127.0.0.1:{web_port}" in log.read_text()


async def test_hostile_names_escaped_on_every_page_and_in_json(service, runs, ingest):
    from markupsafe import escape
    from webdata import EXPERIMENT as HOSTILE_EXPERIMENT
    from webdata import HOSTILE, RTL_TAG, family

    await family(runs, ingest)
    pages = [
        "/",
        "/?series=" + quote(HOSTILE, safe="") + "&config=" + quote(HOSTILE, safe=""),
        "/runs/default/base",
        f"/experiments/default/{quote(HOSTILE_EXPERIMENT, safe='')}",
        "/compare?project=default&run=base&run=child",
        "/lineage/default/base",
    ]
    for path in pages:
        reply = await get(service, path)
        assert reply.status == 200, path
        page = reply.text
        assert "<script>alert" not in page and HOSTILE not in page, path
        assert "<i>1</i>" not in page, path
        if path.startswith(("/compare", "/lineage")):
            assert str(escape(HOSTILE)) in page or path.startswith("/lineage"), path
        else:
            assert str(escape(HOSTILE_EXPERIMENT)) in page, path
    run_page = (await get(service, "/runs/default/base")).text
    assert str(escape(HOSTILE)) in run_page  # description and series name, as text
    assert str(escape(RTL_TAG)) in run_page
    # In the JSON the names are the exact strings.
    body = (await get(service, "/api/runs/default/base")).json()
    assert body["run"]["description"] == HOSTILE and RTL_TAG in body["run"]["tags"]
    assert HOSTILE in {s["name"] for s in body["series"]}
    series = (await get(service, "/api/series?run_id=base&name=" + quote(HOSTILE, safe=""))).json()
    assert [s["name"] for s in series["series"]] == [HOSTILE]
