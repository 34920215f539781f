"""The JSON API of the web view: every body the view serves under `/api/`, and the query
parameters it reads. JSON has no NaN or infinities: such values are the strings "NaN",
"Infinity", "-Infinity".

    GET /api/runs?project=P&experiment=E      runs of a project (or of one experiment)
    GET /api/runs/<project>/<run_id>?own=0|1  one run and its series summaries
    GET /api/series?project=P&run_id=R|incarnation_id=I|experiment=E
                   &name=N&own=0|1&max_points=2000&step_min=&step_max=
    GET /api/summaries?project=P&run_id=R|incarnation_id=I|experiment=E&own=0|1
                                              count, last, min and max of each series
    GET /api/lineage/<project>/<run_id>       the run's whole family of incarnations
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from aiohttp import web

from .. import errors
from ..model import Incarnation, RunRecord, SeriesPoints, SeriesSummary
from ..reading import LineageNode, Reader, Selector, lineage
from ..runs import RunManager
from ..validation import project_of
from .links import experiment_url, lineage_path, run_path, run_url

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


class Context(Protocol):
    """What a handler reads: the service's runs and reader, and the view's own URL."""

    runs: RunManager
    reader: Reader
    url: str


# -- JSON values ----------------------------------------------------------------------------


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


def dumps(body: Any) -> str:
    return json.dumps(body, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def json_response(status: int, body: Any) -> web.Response:
    return web.Response(
        status=status, text=dumps(body), content_type="application/json", charset="utf-8"
    )


def error_status(err: errors.ServiceError) -> int:
    return HTTP_STATUS.get(err.code.name, 500)


def error_json(err: errors.ServiceError) -> web.Response:
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


def lineage_json(record: RunRecord, nodes: Sequence[LineageNode]) -> dict[str, Any]:
    return {
        "project": record.project,
        "run_id": record.run_id,
        "current_incarnation_id": record.current_incarnation_id,
        "incarnations": [
            {
                **incarnation_json(n.inc),
                "current": n.current,
                "in_view": n.in_view,
                "run_current": n.run_current,
                "visible_to_step": n.visible_to,
                "children": [
                    c.inc.incarnation_id
                    for c in nodes
                    if c.inc.parent_incarnation_id == n.inc.incarnation_id
                ],
                "charts_path": run_path(
                    n.inc.project, n.inc.run_id, "" if n.run_current else n.inc.incarnation_id
                ),
                "lineage_path": lineage_path(n.inc.project, n.inc.run_id),
            }
            for n in nodes
        ],
    }


# -- series names ---------------------------------------------------------------------------


def group_of(name: str) -> str:
    """A series' group: its name up to the last '/' (`train/loss` -> `train`)."""
    return name.rpartition("/")[0]


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sorts `layer2` before `layer10`."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text) if p)


def series_order(name: str) -> tuple[Any, ...]:
    return (natural_key(group_of(name)), natural_key(name))


# -- parameters -----------------------------------------------------------------------------


def param(req: web.Request, name: str, default: str = "") -> str:
    values = req.query.getall(name, [])
    return str(values[-1]) if values else default


def own_param(req: web.Request) -> bool:
    value = param(req, "own", "0").lower()
    if value not in ("0", "1", "false", "true"):
        raise query_error("own", value, "0 or 1")
    return value in ("1", "true")


def int_param(req: web.Request, name: str, default: int) -> int:
    value = param(req, name)
    if not value:
        return default
    if not value.isdigit() or len(value) > 12:
        raise query_error(name, value, "a non-negative integer")
    return int(value)


def float_param(req: web.Request, name: str, default: float) -> float:
    value = param(req, name)
    if not value:
        return default
    try:
        x = float(value)
    except ValueError:
        raise query_error(name, value, "a number") from None
    if math.isnan(x):
        raise query_error(name, value, "a number")
    return x


def selector(req: web.Request) -> Selector:
    return Selector(
        param(req, "project"),
        param(req, "run_id"),
        param(req, "incarnation_id"),
        own_param(req),
        param(req, "experiment"),
    )


def query_error(name: str, value: str, expected: str) -> errors.ServiceError:
    return errors.invalid(
        "INVALID_QUERY",
        f"query parameter {name} must be {expected}, got {value[:64]!r}",
        parameter=name,
        value=value[:64],
    )


# -- handlers -------------------------------------------------------------------------------


class Api:
    """The `/api/` routes over a view's context."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/runs", self.runs),
            web.get("/api/runs/{project}/{run_id}", self.run),
            web.get("/api/series", self.series),
            web.get("/api/summaries", self.summaries),
            web.get("/api/lineage/{project}/{run_id}", self.lineage),
        ]

    async def runs(self, req: web.Request) -> web.Response:
        project, experiment = param(req, "project"), param(req, "experiment")
        records = await self.ctx.runs.list(project, experiment)
        return json_response(
            200,
            {
                "project": project_of(project),
                "experiment": experiment,
                "runs": [run_json(r, self.ctx.url) for r in records],
            },
        )

    async def run(self, req: web.Request) -> web.Response:
        record = await self.ctx.runs.get(req.match_info["project"], req.match_info["run_id"])
        sel = Selector(record.project, record.run_id, "", own_param(req))
        incarnation_id, summaries = await self.ctx.reader.summaries(sel)
        summaries.sort(key=lambda s: series_order(s.name))
        return json_response(
            200,
            {
                "run": run_json(record, self.ctx.url),
                "incarnation_id": incarnation_id,
                "series": [summary_json(s) for s in summaries],
            },
        )

    async def summaries(self, req: web.Request) -> web.Response:
        incarnation_id, summaries = await self.ctx.reader.summaries(selector(req))
        summaries.sort(key=lambda s: series_order(s.name))
        return json_response(
            200,
            {"incarnation_id": incarnation_id, "series": [summary_json(s) for s in summaries]},
        )

    async def series(self, req: web.Request) -> web.Response:
        sel = selector(req)
        max_points = int_param(req, "max_points", DEFAULT_MAX_POINTS)
        if max_points > MAX_MAX_POINTS:
            raise errors.invalid(
                "INVALID_MAX_POINTS",
                f"max_points must be at most {MAX_MAX_POINTS}, got {max_points}",
                max_points=max_points,
            )
        points = await self.ctx.reader.read(
            sel,
            [str(n) for n in req.query.getall("name", [])],
            float_param(req, "step_min", -math.inf),
            float_param(req, "step_max", math.inf),
            max_points=max_points,
        )
        return json_response(
            200, {"max_points": max_points, "series": [points_json(p) for p in points]}
        )

    async def lineage(self, req: web.Request) -> web.Response:
        record = await self.ctx.runs.get(req.match_info["project"], req.match_info["run_id"])
        nodes = await lineage(self.ctx.reader.store, record)
        return json_response(200, lineage_json(record, nodes))
