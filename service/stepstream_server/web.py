"""The read-only web view (SPEC §7), served on the service's event loop when asked.

A small HTTP/1.1 server on `asyncio.start_server`, with no dependency beyond the standard
library: GET only, one request per connection, every answer with a Content-Length. JSON under
`/api/`; HTML pages rendered here (every user-provided string escaped) whose charts a static
script (`web/app.js`) draws from `/api/series`. The pages send a Content-Security-Policy that
allows no inline script, so a name that slipped through escaping still could not run.

    GET /api/runs?project=P&experiment=E      runs of a project (or of one experiment)
    GET /api/runs/<project>/<run_id>          one run and its series summaries
    GET /api/series?project=P&run_id=R|incarnation_id=I|experiment=E
                   &name=N&own=0|1&max_points=2000&step_min=&step_max=
    GET /api/lineage/<project>/<run_id>       the run's incarnation tree
    GET /  /runs/<project>/<run_id>  /experiments/<project>/<experiment>   pages

JSON has no NaN or infinities: such values are the strings "NaN", "Infinity", "-Infinity".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import html
import http
import json
import logging
import math
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from . import errors
from .model import Incarnation, Origin, RunRecord, SeriesPoints, SeriesSummary
from .reading import Reader, Selector
from .runs import RunManager
from .validation import project_of

log = logging.getLogger(__name__)

MAX_LINE = 8 * 1024  # request line or one header line
MAX_HEAD = 32 * 1024  # request line and headers together
MAX_HEADERS = 100
MAX_QUERY_FIELDS = 100
REQUEST_TIMEOUT = 10.0  # to receive the whole request head
WRITE_TIMEOUT = 30.0
LINGER_TIMEOUT = 1.0  # to drain what a client sent beyond the head before closing
STOP_TIMEOUT = 5.0  # for requests amid a store read when the view stops
DEFAULT_MAX_POINTS = 2000
MAX_MAX_POINTS = 100_000

# google.rpc code -> HTTP status, as Google's HTTP/JSON APIs map them.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
COMMON_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


# -- links ----------------------------------------------------------------------------------


def base_url(host: str, port: int) -> str:
    """The web view's URL prefix for a bound host and port."""
    if host in ("0.0.0.0", "::"):  # a wildcard bind: link by this machine's name
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def run_url(base: str, project: str, run_id: str) -> str:
    """Link to a run's page; empty when there is no web view."""
    return f"{base}{run_path(project, run_id)}" if base else ""


def experiment_url(base: str, project: str, experiment: str) -> str:
    """Link to an experiment's page; empty without a web view or an experiment."""
    return f"{base}{experiment_path(project, experiment)}" if base and experiment else ""


def run_path(project: str, run_id: str) -> str:
    return f"/runs/{quote(project, safe='')}/{quote(run_id, safe='')}"


def experiment_path(project: str, experiment: str) -> str:
    return f"/experiments/{quote(project, safe='')}/{quote(experiment, safe='')}"


# -- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A parsed GET: the path's percent-decoded segments and the query."""

    segments: tuple[str, ...]
    query: dict[str, list[str]]

    def param(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        phrase = http.HTTPStatus(self.status).phrase
        lines = [
            f"HTTP/1.1 {self.status} {phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in (*COMMON_HEADERS, *self.headers)),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def text(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, (message + "\n").encode(), headers=headers)


class BadRequest(Exception):
    """A request that is not HTTP/1.x GET as this server speaks it; answered, never fatal."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.response = text(status, message, headers)


_METHOD = re.compile(r"[A-Z]{1,20}")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The request head, bounded in size; None when the client sent nothing at all."""
    line = await _line(reader, 414, "request line too long")
    if not line:
        return None
    size, count = len(line), 0
    while True:
        header = await _line(reader, 431, "header line too long")
        if not header:
            raise BadRequest(400, "incomplete request head")
        size, count = size + len(header), count + 1
        if size > MAX_HEAD or count > MAX_HEADERS:
            raise BadRequest(431, "request head too large")
        if header in (b"\r\n", b"\n"):
            break
        if b":" not in header:
            raise BadRequest(400, "malformed header line")
    return parse_request_line(line)


async def _line(reader: asyncio.StreamReader, status: int, too_long: str) -> bytes:
    try:
        line = await reader.readline()
    except ValueError:  # longer than the stream's limit
        raise BadRequest(status, too_long) from None
    if line and not line.endswith(b"\n"):
        raise BadRequest(400, "incomplete request head")
    return line


def parse_request_line(line: bytes) -> Request:
    try:
        decoded = line.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise BadRequest(400, "request line is not ASCII") from None
    parts = decoded.split(" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    match = _VERSION.fullmatch(version)
    if not match or not _METHOD.fullmatch(method):
        raise BadRequest(400, "malformed request line")
    if match.group(1) != "1":
        raise BadRequest(505, "only HTTP/1.x is served")
    if method != "GET":
        raise BadRequest(
            405, "method not allowed: the web view is read-only (GET)", (("Allow", "GET"),)
        )
    if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
        raise BadRequest(400, "the request target must be a path")
    path, _, query = target.partition("#")[0].partition("?")
    try:
        return Request(
            tuple(_unquote(s) for s in path.split("/")[1:]),
            parse_qs(
                query,
                keep_blank_values=True,
                errors="strict",
                max_num_fields=MAX_QUERY_FIELDS,
            ),
        )
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(400, "malformed request target (bad UTF-8 or too many fields)") from None


def _unquote(segment: str) -> str:
    return unquote(segment, errors="strict")


# -- JSON -----------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """`value` with every non-finite float spelled as a string, so strict JSON can carry it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else nonfinite(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def nonfinite(x: float) -> str:
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def floats_json(values: Iterable[float]) -> list[float | str]:
    return [v if math.isfinite(v) else nonfinite(v) for v in values]


def json_response(status: int, body: Any) -> Response:
    data = json.dumps(body, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return Response(status, data.encode(), "application/json; charset=utf-8")


def error_status(err: errors.ServiceError) -> int:
    return HTTP_STATUS.get(err.code.name, 500)


def error_json(err: errors.ServiceError) -> Response:
    status = error_status(err)
    return json_response(
        status,
        {
            "error": {
                "code": status,
                "status": err.code.name,
                "reason": err.reason,
                "message": err.message,
                "domain": errors.DOMAIN,
                "metadata": err.metadata,
            }
        },
    )


def timestamp(seconds: float) -> str:
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def incarnation_json(inc: Incarnation) -> dict[str, Any]:
    return {
        "incarnation_id": inc.incarnation_id,
        "project": inc.project,
        "run_id": inc.run_id,
        "parent_incarnation_id": inc.parent_incarnation_id,
        "parent_run_id": inc.parent_run_id,
        "fork_step": inc.fork_step,
        "origin": inc.origin.name,
        "archived": inc.archived,
        "create_time": timestamp(inc.created_at),
    }


def run_json(record: RunRecord, base: str) -> dict[str, Any]:
    return {
        "project": record.project,
        "run_id": record.run_id,
        "experiment": record.experiment,
        "experiment_head": record.experiment_head,
        "state": record.state.name,
        "tags": list(record.tags),
        "description": record.description,
        "config": jsonable(record.config),
        "values": jsonable(record.values),
        "failure_reason": record.failure_reason,
        "current_incarnation_id": record.current_incarnation_id,
        "incarnations": [incarnation_json(i) for i in record.incarnations],
        "create_time": timestamp(record.created_at),
        "update_time": timestamp(record.updated_at),
        "url": run_url(base, record.project, record.run_id),
        "experiment_url": experiment_url(base, record.project, record.experiment),
    }


def summary_json(s: SeriesSummary) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": s.name,
        "string_series": s.is_string,
        "count": s.count,
        "last_step": s.last_step,
        "generation": s.generation,
    }
    if s.is_string:
        out["last_string"] = s.last_string
    else:
        out.update(jsonable({"last": s.last, "min": s.minimum, "max": s.maximum}))
    return out


def points_json(p: SeriesPoints) -> dict[str, Any]:
    values: list[Any] = (
        list(p.values) if p.is_string else floats_json(p.values.tolist())  # type: ignore[union-attr]
    )
    return {
        "name": p.name,
        "string_series": p.is_string,
        "steps": p.steps.tolist(),
        "values": values,
        "timestamps": p.timestamps.tolist(),
    }


@dataclass(frozen=True)
class Node:
    """One incarnation in a lineage tree, with how much of it the viewed incarnation sees."""

    inc: Incarnation
    current: bool
    in_view: bool
    # The largest step of this incarnation visible in the run's current view (None: all).
    visible_to: float | None


def lineage_json(record: RunRecord, nodes: Sequence[Node]) -> dict[str, Any]:
    return {
        "project": record.project,
        "run_id": record.run_id,
        "current_incarnation_id": record.current_incarnation_id,
        "incarnations": [
            {
                **incarnation_json(n.inc),
                "current": n.current,
                "in_view": n.in_view,
                "visible_to_step": n.visible_to,
                "children": [
                    c.inc.incarnation_id
                    for c in nodes
                    if c.inc.parent_incarnation_id == n.inc.incarnation_id
                ],
            }
            for n in nodes
        ],
    }


# -- HTML -----------------------------------------------------------------------------------


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt_value(x: float) -> str:
    if not math.isfinite(x):
        return nonfinite(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.6g}"


def fmt_step(x: float | None) -> str:
    if x is None:
        return ""
    if not math.isfinite(x):
        return nonfinite(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def fmt_time(seconds: float) -> str:
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def page(title: str, body: str, status: int = 200) -> Response:
    doc = (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · stepstream</title>"
        '<link rel=stylesheet href="/static/app.css"></head>\n<body>'
        '<header><a class=brand href="/">stepstream</a></header>\n'
        f"<main>\n{body}\n</main>\n"
        '<script src="/static/app.js"></script></body></html>\n'
    )
    return Response(
        status,
        doc.encode(),
        "text/html; charset=utf-8",
        (("Content-Security-Policy", PAGE_POLICY),),
    )


def error_page(err: errors.ServiceError) -> Response:
    body = f"<h1>{esc(err.reason)}</h1>\n<p class=error>{esc(err.message)}</p>"
    return page(err.reason, body, error_status(err))


def run_link(project: str, run_id: str) -> str:
    return f'<a href="{esc(run_path(project, run_id))}">{esc(run_id)}</a>'


def experiment_link(project: str, experiment: str) -> str:
    return f'<a href="{esc(experiment_path(project, experiment))}">{esc(experiment)}</a>'


def badge(kind: str, label: str | None = None) -> str:
    return f'<span class="badge {kind}">{esc(label or kind)}</span>'


def origin_html(inc: Incarnation) -> str:
    if inc.parent_incarnation_id is None:
        return "created"
    parent = f"<code>{esc(inc.parent_incarnation_id)}</code>"
    step = f"step <b>{esc(fmt_step(inc.fork_step))}</b>"
    if inc.origin is Origin.REWOUND:
        return f"rewound to {step} of {parent}"
    of_run = f" (run {run_link(inc.project, inc.parent_run_id)})" if inc.parent_run_id else ""
    return f"forked at {step} from {parent}{of_run}"


def runs_table(records: Sequence[RunRecord]) -> str:
    rows = []
    for r in records:
        first = r.incarnations[0] if r.incarnations else None
        forked = (
            f"{run_link(r.project, first.parent_run_id)} @ {esc(fmt_step(first.fork_step))}"
            if first is not None and first.origin is Origin.FORKED and first.parent_run_id
            else ""
        )
        archived = sum(i.archived for i in r.incarnations)
        rows.append(
            "<tr>"
            f"<td>{run_link(r.project, r.run_id)}{' ' + badge('head') if r.experiment_head else ''}</td>"
            f"<td>{badge(r.state.name.lower(), r.state.name)}</td>"
            f"<td>{' '.join(badge('tag', t) for t in r.tags)}</td>"
            f"<td><code>{esc(r.current_incarnation_id)}</code></td>"
            f"<td>{len(r.incarnations)}{f' ({archived} archived)' if archived else ''}</td>"
            f"<td>{forked}</td>"
            f"<td>{esc(fmt_time(r.created_at))}</td>"
            "</tr>"
        )
    return (
        "<table class=runs><thead><tr><th>run</th><th>state</th><th>tags</th>"
        "<th>current incarnation</th><th>incarnations</th><th>forked from</th>"
        "<th>created</th></tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )


def lineage_html(nodes: Sequence[Node], viewing: str) -> str:
    """The incarnation tree as nested lists, oldest ancestor outermost (no recursion: a run
    may have been rewound many times)."""
    ids = {n.inc.incarnation_id for n in nodes}
    children: dict[str | None, list[Node]] = {}
    for n in nodes:
        parent = n.inc.parent_incarnation_id
        children.setdefault(parent if parent in ids else None, []).append(n)
    out = ["<ul class=lineage>"]
    stack: list[Node | None] = list(reversed(children.get(None, [])))
    while stack:
        item = stack.pop()
        if item is None:
            out.append("</ul></li>")
            continue
        n, inc = item, item.inc
        marks = [badge(inc.origin.name.lower())]
        if n.current:
            marks.append(badge("current"))
        if inc.archived:
            marks.append(badge("archived"))
        if not n.in_view:
            marks.append(badge("outside", "not in the current view"))
        seen = (
            f" · visible up to step <b>{esc(fmt_step(n.visible_to))}</b>"
            if n.in_view and n.visible_to is not None
            else ""
        )
        here = " viewing" if inc.incarnation_id == viewing else ""
        charts = (
            run_path(inc.project, inc.run_id) + "?" + urlencode({"incarnation": inc.incarnation_id})
        )
        out.append(
            f'<li class="inc{here}"><code class=incid>{esc(inc.incarnation_id)}</code> '
            f"{' '.join(marks)}<br>run {run_link(inc.project, inc.run_id)} · {origin_html(inc)}"
            f"{seen} · {esc(fmt_time(inc.created_at))}"
            f' · <a href="{esc(charts)}">charts</a>'
        )
        kids = children.get(inc.incarnation_id, [])
        if kids:
            out.append("<ul>")
            stack.append(None)
            stack.extend(reversed(kids))
        else:
            out.append("</li>")
    out.append("</ul>")
    return "\n".join(out)


def charts_html(query: dict[str, str], summaries: Sequence[SeriesSummary], note: str) -> str:
    if not summaries:
        return f"<p class=note>{note}</p><p>No series.</p>"
    parts = [
        f"<p class=note>{note}</p>",
        f'<div class=charts data-query="{esc(urlencode(query))}">',
    ]
    for s in summaries:
        if s.is_string:
            stats = (
                f"{s.count} lines · last at step {esc(fmt_step(s.last_step))}: "
                f"<code>{esc(s.last_string[:200])}</code>"
            )
        else:
            stats = (
                f"{s.count} points · last {esc(fmt_value(s.last))} at step "
                f"{esc(fmt_step(s.last_step))} · min {esc(fmt_value(s.minimum))}"
                f" · max {esc(fmt_value(s.maximum))}"
            )
        kind = "string" if s.is_string else "float"
        parts.append(
            f'<section class=chart data-name="{esc(s.name)}" data-kind={kind}>'
            f"<h3>{esc(s.name)}{' ' + badge('log') if s.is_string else ''}</h3>"
            f"<p class=stats>{stats}</p>"
            "<label><input type=checkbox class=inherited checked> inherited</label>"
            "<div class=plot>The chart needs JavaScript.</div></section>"
        )
    parts.append("</div>")
    return "\n".join(parts)


def json_block(value: dict[str, Any]) -> str:
    if not value:
        return "<i>none</i>"
    data = json.dumps(jsonable(value), indent=2, ensure_ascii=False, sort_keys=True)
    return f"<pre>{esc(data)}</pre>"


# -- the view -------------------------------------------------------------------------------


class WebView:
    """The web view over RunManager and Reader; `start()` binds, `stop()` closes."""

    def __init__(self, runs: RunManager, reader: Reader) -> None:
        self.runs = runs
        self.reader = reader
        self.url = ""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        package = resources.files(__name__.rpartition(".")[0]) / "web"
        self._static = {name: (package / name).read_bytes() for name in STATIC}

    @classmethod
    async def start(cls, address: str, runs: RunManager, reader: Reader) -> WebView:
        host, port = split_address(address)
        view = cls(runs, reader)
        view._server = await asyncio.start_server(view._connection, host, port, limit=MAX_LINE)
        view.port = int(view._server.sockets[0].getsockname()[1])
        view.url = base_url(host, view.port)
        return view

    async def stop(self) -> None:
        """Stop listening and end the connections still open."""
        if self._server is None:
            return
        self._server.close()
        # Aborting the transports (not cancelling the handlers, which asyncio would log as
        # errors) ends every read; a handler amid a store read finishes it and returns.
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            _, stuck = await asyncio.wait(list(self._connections), timeout=STOP_TIMEOUT)
            if stuck:
                log.warning("web view: %d requests still running at stop", len(stuck))
        await self._server.wait_closed()
        self._server = None

    # HTTP ---------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
        try:
            response = await self._answer(reader)
            if response is not None and not writer.transport.is_closing():
                writer.write(response.encode())
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
                await self._linger(reader, writer)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        except Exception:
            log.exception("web view: connection failed")
        finally:
            if task is not None:
                self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> Response | None:
        try:
            request = await asyncio.wait_for(read_request(reader), REQUEST_TIMEOUT)
        except BadRequest as exc:
            return exc.response
        except asyncio.TimeoutError:
            return text(408, "request timeout")
        if request is None:
            return None
        try:
            return await self.route(request)
        except errors.ServiceError as exc:
            return error_json(exc) if request.segments[:1] == ("api",) else error_page(exc)
        except Exception:
            log.exception("web view: request failed")
            return text(500, "internal error")

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Closing a socket with unread input makes the kernel send RST, which can destroy the
        # response before the client reads it: half-close, then drain a little of what is left.
        if not writer.can_write_eof():
            return
        writer.write_eof()

        async def drain() -> None:
            drained = 0
            while drained < MAX_HEAD and (chunk := await reader.read(MAX_LINE)):
                drained += len(chunk)

        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            await asyncio.wait_for(drain(), LINGER_TIMEOUT)

    # routes -------------------------------------------------------------------------------

    async def route(self, req: Request) -> Response:
        match req.segments:
            case ("",):
                return await self.index_page(req.param("project"))
            case ("runs", project, run_id):
                return await self.run_page(project, run_id, req.param("incarnation"))
            case ("experiments", project, *name) if name and all(name):
                return await self.experiment_page(project, "/".join(name))
            case ("static", name) if name in STATIC:
                return Response(200, self._static[name], STATIC[name])
            case ("api", "runs"):
                records = await self.runs.list(req.param("project"), req.param("experiment"))
                return json_response(
                    200,
                    {
                        "project": project_of(req.param("project")),
                        "experiment": req.param("experiment"),
                        "runs": [run_json(r, self.url) for r in records],
                    },
                )
            case ("api", "runs", project, run_id):
                record = await self.runs.get(project, run_id)
                sel = Selector(record.project, record.run_id, "", own_param(req))
                incarnation_id, summaries = await self.reader.summaries(sel)
                return json_response(
                    200,
                    {
                        "run": run_json(record, self.url),
                        "incarnation_id": incarnation_id,
                        "series": [summary_json(s) for s in summaries],
                    },
                )
            case ("api", "series"):
                return await self.series(req)
            case ("api", "lineage", project, run_id):
                record = await self.runs.get(project, run_id)
                return json_response(200, lineage_json(record, await self.lineage(record)))
        return text(404, "not found")

    async def series(self, req: Request) -> Response:
        sel = Selector(
            req.param("project"),
            req.param("run_id"),
            req.param("incarnation_id"),
            own_param(req),
            req.param("experiment"),
        )
        max_points = int_param(req, "max_points", DEFAULT_MAX_POINTS)
        if max_points > MAX_MAX_POINTS:
            raise errors.invalid(
                "INVALID_MAX_POINTS",
                f"max_points must be at most {MAX_MAX_POINTS}, got {max_points}",
                max_points=max_points,
            )
        points = await self.reader.read(
            sel,
            req.query.get("name", []),
            float_param(req, "step_min", -math.inf),
            float_param(req, "step_max", math.inf),
            max_points=max_points,
        )
        return json_response(
            200, {"max_points": max_points, "series": [points_json(p) for p in points]}
        )

    async def lineage(self, record: RunRecord) -> list[Node]:
        """The incarnations reachable upward from the run's current one (oldest first), each
        with the step up to which the current view sees it, then any other of the run's own
        incarnations."""
        known = {i.incarnation_id: i for i in record.incarnations}
        chain: list[Node] = []
        visible_to = math.inf
        next_id: str | None = record.current_incarnation_id
        while next_id is not None and next_id not in {n.inc.incarnation_id for n in chain}:
            inc = known.get(next_id) or await self.runs.incarnation(next_id)
            if inc is None:
                break
            chain.append(Node(inc, not chain, True, None if math.isinf(visible_to) else visible_to))
            if inc.fork_step is not None:
                visible_to = min(visible_to, inc.fork_step)
            next_id = inc.parent_incarnation_id
        in_chain = {n.inc.incarnation_id for n in chain}
        rest = [
            Node(i, False, False, None)
            for i in record.incarnations
            if i.incarnation_id not in in_chain
        ]
        return [*reversed(chain), *rest]

    # pages --------------------------------------------------------------------------------

    async def index_page(self, project: str) -> Response:
        project = project_of(project)
        records = await self.runs.list(project, "")
        groups: dict[str, list[RunRecord]] = {}
        for r in records:
            groups.setdefault(r.experiment, []).append(r)
        others = [p for p in await self.runs.projects() if p != project]
        parts = [
            f"<h1>Runs in project <code>{esc(project)}</code></h1>",
            *(
                [
                    "<p>Other projects: "
                    + ", ".join(f'<a href="/?project={quote(p)}">{esc(p)}</a>' for p in others)
                    + "</p>"
                ]
                if others
                else []
            ),
            '<form class=project method=get action="/"><label>project '
            f'<input name=project value="{esc(project)}"></label> <button>show</button></form>',
        ]
        if not records:
            parts.append("<p>No runs in this project yet.</p>")
        for experiment in sorted(groups, key=lambda e: (e == "", e)):
            title = (
                f"Experiment {experiment_link(project, experiment)}"
                if experiment
                else "Runs without an experiment"
            )
            parts.append(f"<h2>{title}</h2>")
            parts.append(runs_table(groups[experiment]))
        return page(f"project {project}", "\n".join(parts))

    async def run_page(self, project: str, run_id: str, incarnation_id: str) -> Response:
        record = await self.runs.get(project, run_id)
        nodes = await self.lineage(record)
        viewing = incarnation_id or record.current_incarnation_id
        if incarnation_id:
            if incarnation_id not in {n.inc.incarnation_id for n in nodes}:
                raise errors.not_found(
                    "INCARNATION_NOT_FOUND",
                    f"incarnation {incarnation_id!r} is not in the lineage of run {run_id!r}",
                    incarnation_id=incarnation_id,
                    run_id=run_id,
                )
            query = {"incarnation_id": incarnation_id}
            note = (
                f"Series of incarnation <code>{esc(incarnation_id)}</code>"
                f' (<a href="{esc(run_path(record.project, record.run_id))}">back to the current'
                " view</a>)."
            )
        else:
            query = {"project": record.project, "run_id": record.run_id}
            note = "Series of the run's current view; uncheck <i>inherited</i> for its own points."
        _, summaries = await self.reader.summaries(
            Selector(
                query.get("project", ""),
                query.get("run_id", ""),
                query.get("incarnation_id", ""),
                False,
            )
        )
        experiment = (
            f"{experiment_link(record.project, record.experiment)}"
            f"{' ' + badge('head') if record.experiment_head else ''}"
            if record.experiment
            else "<i>none</i>"
        )
        failure = (
            f"<dt>failure</dt><dd>{esc(record.failure_reason)}</dd>"
            if record.failure_reason
            else ""
        )
        body = f"""<h1>Run <code>{esc(record.run_id)}</code> {badge(record.state.name.lower(), record.state.name)}</h1>
<dl class=meta>
<dt>project</dt><dd><a href="/?{esc(urlencode({"project": record.project}))}">{esc(record.project)}</a></dd>
<dt>experiment</dt><dd>{experiment}</dd>
<dt>description</dt><dd>{esc(record.description) or "<i>none</i>"}</dd>
<dt>tags</dt><dd>{" ".join(badge("tag", t) for t in record.tags) or "<i>none</i>"}</dd>
<dt>current incarnation</dt><dd><code>{esc(record.current_incarnation_id)}</code></dd>
<dt>created</dt><dd>{esc(fmt_time(record.created_at))}</dd>
<dt>updated</dt><dd>{esc(fmt_time(record.updated_at))}</dd>
{failure}<dt>config</dt><dd>{json_block(record.config)}</dd>
<dt>single values</dt><dd>{json_block(record.values)}</dd>
</dl>
<h2>Lineage</h2>
{lineage_html(nodes, viewing)}
<h2>Series</h2>
{charts_html(query, summaries, note)}"""
        return page(f"run {record.run_id}", body)

    async def experiment_page(self, project: str, experiment: str) -> Response:
        project = project_of(project)
        records = await self.runs.list(project, experiment)
        head = next((r for r in records if r.experiment_head), None)
        if head is None:
            raise errors.not_found(
                "EXPERIMENT_NOT_FOUND",
                f"experiment {experiment!r} has no runs in project {project!r}",
                project=project,
                experiment=experiment,
            )
        query = {"project": project, "experiment": experiment}
        _, summaries = await self.reader.summaries(Selector(project, "", "", False, experiment))
        note = (
            f"Series read along the experiment lineage (head {run_link(project, head.run_id)});"
            " uncheck <i>inherited</i> for the head's own points."
        )
        body = f"""<h1>Experiment <code>{esc(experiment)}</code></h1>
<p>project <a href="/?{esc(urlencode({"project": project}))}">{esc(project)}</a></p>
<h2>Runs</h2>
{runs_table(records)}
<h2>Experiment lineage</h2>
{lineage_html(await self.lineage(head), head.current_incarnation_id)}
<h2>Series</h2>
{charts_html(query, summaries, note)}"""
        return page(f"experiment {experiment}", body)


# -- parameters -----------------------------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"the web address must be HOST:PORT, got {address!r}")
    return host, int(port)


def own_param(req: Request) -> bool:
    value = req.param("own", "0").lower()
    if value not in ("0", "1", "false", "true"):
        raise query_error("own", value, "0 or 1")
    return value in ("1", "true")


def int_param(req: Request, name: str, default: int) -> int:
    value = req.param(name)
    if not value:
        return default
    if not value.isdigit() or len(value) > 12:
        raise query_error(name, value, "a non-negative integer")
    return int(value)


def float_param(req: Request, name: str, default: float) -> float:
    value = req.param(name)
    if not value:
        return default
    try:
        x = float(value)
    except ValueError:
        raise query_error(name, value, "a number") from None
    if math.isnan(x):
        raise query_error(name, value, "a number")
    return x


def query_error(name: str, value: str, expected: str) -> errors.ServiceError:
    return errors.invalid(
        "INVALID_QUERY",
        f"query parameter {name} must be {expected}, got {value[:64]!r}",
        parameter=name,
        value=value[:64],
    )
