"""The HTML pages of the web view, rendered from Jinja2 templates (autoescaped: every name a
user gave is escaped wherever it appears). Charts are drawn in the browser by static/app.js
from the JSON API; a page hands it what to draw as a JSON block, never as script."""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Sequence
from typing import Any

import jinja2
from aiohttp import web

from .. import errors
from ..auth.web import may_read
from ..model import RunRecord, RunState, SeriesSummary
from ..reading import LineageNode, Selector, lineage
from ..validation import project_of
from . import links
from .api import Context, error_status, group_of, param, series_order, summary_json
from .graph import layout, step_text

MAX_CONFIG_COLUMNS = 4
MAX_SERIES_COLUMNS = 3


def fmt_value(x: Any) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "NaN"
        if math.isinf(x):
            return "Infinity" if x > 0 else "-Infinity"
        return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.6g}"
    if isinstance(x, str):
        return x
    return json.dumps(x, ensure_ascii=False)


def fmt_config(x: Any) -> str:
    """A config or single value as written, its type visible: 64 is an int, 64.0 a float."""
    if isinstance(x, float):
        return repr(x) if math.isfinite(x) else fmt_value(x)
    return fmt_value(x)


def config_text(document: dict[str, Any]) -> str:
    """A config document for the run page: JSON, whole floats with their ".0", and the
    non-finite ones spelled NaN, Infinity and -Infinity without quotes (a string "NaN" keeps
    its quotes)."""
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=True)


def fmt_time(seconds: float) -> str:
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def sort_value(x: Any) -> str:
    """What a table cell sorts by: numbers as numbers (the script compares them so)."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int | float):
        return fmt_value(float(x)) if not math.isfinite(x) else repr(float(x))
    return fmt_value(x)


ENV = jinja2.Environment(
    loader=jinja2.PackageLoader(__name__.rpartition(".")[0], "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.globals.update(
    links=links, fmt_value=fmt_value, fmt_config=fmt_config, fmt_time=fmt_time, step=step_text
)
ENV.filters["sortable"] = sort_value


def render(template: str, status: int = 200, **context: Any) -> web.Response:
    text = ENV.get_template(template).render(**context)
    return web.Response(status=status, text=text, content_type="text/html", charset="utf-8")


def error_page(err: errors.ServiceError) -> web.Response:
    return render("error.html", error_status(err), err=err)


def columns(param_value: str, fallback: Sequence[str], limit: int) -> list[str]:
    """A comma-separated choice of columns, or the first `limit` of the fallback."""
    if param_value:
        return [c.strip() for c in param_value.split(",") if c.strip()][:20]
    return list(fallback)[:limit]


def marks_of(nodes: Sequence[LineageNode]) -> list[dict[str, Any]]:
    """Fork and rewind points along a view: where each incarnation of its chain begins."""
    return [
        {
            "step": n.inc.fork_step,
            "kind": n.inc.origin.name.lower(),
            "label": f"{'rewind' if n.inc.origin.name == 'REWOUND' else 'fork'} @ "
            f"{step_text(n.inc.fork_step)}",
        }
        for n in nodes
        if n.in_view
        and n.inc.fork_step is not None
        # A rewind past the step where the view leaves that incarnation is not in the view.
        and (n.visible_to is None or n.inc.fork_step <= n.visible_to)
    ]


def stats_line(s: SeriesSummary | None) -> str:
    if s is None:
        return "no points"
    return (
        f"{s.count} pts · last {fmt_value(s.last)} @ {step_text(s.last_step)}"
        f" · min {fmt_value(s.minimum)} · max {fmt_value(s.maximum)}"
    )


class Pages:
    """The HTML routes over a view's context."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/compare", self.compare),
            web.get("/runs/{project}/{run_id}", self.run),
            web.get("/experiments/{project}/{experiment:.+}", self.experiment),
            web.get("/lineage/{project}/{run_id}", self.lineage),
        ]

    async def summaries(self, sel: Selector) -> list[SeriesSummary]:
        _, found = await self.ctx.reader.summaries(sel)
        return sorted(found, key=lambda s: series_order(s.name))

    # -- the runs table ---------------------------------------------------------------------

    async def index(self, req: web.Request) -> web.Response:
        project = project_of(param(req, "project"))
        records = await self.ctx.runs.list(project, "")
        return await self.runs_page(req, project, records, "", "index.html")

    async def runs_page(
        self,
        req: web.Request,
        project: str,
        records: list[RunRecord],
        experiment: str,
        template: str,
        **extra: Any,
    ) -> web.Response:
        records = sorted(records, key=lambda r: (r.created_at, r.run_id), reverse=True)
        config_keys: dict[str, int] = {}
        for r in records:
            for key in r.config:
                config_keys[key] = config_keys.get(key, 0) + 1
        chosen_config = columns(
            param(req, "config"), sorted(config_keys, key=lambda k: (-config_keys[k], k)), 4
        )
        summaries: dict[str, dict[str, SeriesSummary]] = {}
        for r in records:
            found = await self.summaries(Selector(r.project, r.run_id, "", False))
            summaries[r.run_id] = {s.name: s for s in found if not s.is_string}
        newest = summaries.get(records[0].run_id, {}) if records else {}
        chosen_series = columns(
            param(req, "series"), sorted(newest, key=series_order), MAX_SERIES_COLUMNS
        )
        others = [p for p in await self.ctx.runs.projects() if p != project and may_read(req, p)]
        return render(
            template,
            project=project,
            experiment=experiment,
            others=others,
            records=records,
            config_columns=chosen_config,
            series_columns=chosen_series,
            summaries=summaries,
            tags=sorted({t for r in records for t in r.tags}),
            states=[s.name for s in RunState],
            experiments=sorted({r.experiment for r in records if r.experiment}),
            config_param=param(req, "config"),
            series_param=param(req, "series"),
            **extra,
        )

    # -- charts -----------------------------------------------------------------------------

    async def charts(
        self, records: Sequence[RunRecord], incarnation_id: str = ""
    ) -> dict[str, Any]:
        """What app.js draws: each run's selector, marks and state, and the series by group."""
        runs = []
        names: dict[str, SeriesSummary] = {}
        texts: list[tuple[str, SeriesSummary]] = []
        per_run: list[dict[str, Any]] = []
        for r in records:
            nodes = await lineage(self.ctx.reader.store, r)
            if incarnation_id:
                query = {"incarnation_id": incarnation_id}
                nodes = [n for n in nodes if n.inc.incarnation_id == incarnation_id]
                sel = Selector("", "", incarnation_id, False)
                label = f"{r.run_id} · {incarnation_id}"
            else:
                query = {"project": r.project, "run_id": r.run_id}
                sel = Selector(r.project, r.run_id, "", False)
                label = r.run_id
            found = await self.summaries(sel)
            for s in found:
                if s.is_string:
                    texts.append((label, s))
                else:
                    names.setdefault(s.name, s)
            runs.append(
                {
                    "label": label,
                    "query": query,
                    "marks": marks_of(nodes) if not incarnation_id else [],
                    "live": r.state is RunState.RUNNING and not incarnation_id,
                }
            )
            per_run.append({s.name: s for s in found if not s.is_string})
        groups: dict[str, list[dict[str, Any]]] = {}
        for name in sorted(names, key=series_order):
            groups.setdefault(group_of(name), []).append(
                {
                    "name": name,
                    "stats": [
                        (run["label"], stats_line(summ.get(name)))
                        for run, summ in zip(runs, per_run, strict=True)
                    ],
                }
            )
        return {
            "config": {
                "runs": runs,
                "summaries": [{k: summary_json(v) for k, v in summ.items()} for summ in per_run],
            },
            "groups": list(groups.items()),
            "texts": texts,
        }

    async def run(self, req: web.Request) -> web.Response:
        record = await self.ctx.runs.get(req.match_info["project"], req.match_info["run_id"])
        nodes = await lineage(self.ctx.reader.store, record)
        incarnation_id = param(req, "incarnation")
        # An incarnation of this run, or one its current view reads.
        readable = {
            n.inc.incarnation_id for n in nodes if n.in_view or n.inc.run_id == record.run_id
        }
        if incarnation_id and incarnation_id not in readable:
            raise errors.not_found(
                "INCARNATION_NOT_FOUND",
                f"incarnation {incarnation_id!r} is not in the lineage of run {record.run_id!r}",
                incarnation_id=incarnation_id,
                run_id=record.run_id,
            )
        charts = await self.charts([record], incarnation_id)
        return render(
            "run.html",
            record=record,
            incarnation_id=incarnation_id,
            graph=layout(nodes),
            viewing=incarnation_id or record.current_incarnation_id,
            config_json=config_text(record.config),
            values_json=config_text(record.values),
            **charts,
        )

    async def compare(self, req: web.Request) -> web.Response:
        project = project_of(param(req, "project"))
        run_ids = [str(r) for r in req.query.getall("run", [])]
        if not run_ids:
            raise errors.invalid("NO_RUNS_SELECTED", "select at least one run to compare (run=...)")
        records = [await self.ctx.runs.get(project, r) for r in dict.fromkeys(run_ids)]
        charts = await self.charts(records)
        return render("compare.html", project=project, records=records, **charts)

    async def experiment(self, req: web.Request) -> web.Response:
        project = project_of(req.match_info["project"])
        experiment = req.match_info["experiment"]
        records = await self.ctx.runs.list(project, experiment)
        if not records:
            raise errors.not_found(
                "EXPERIMENT_NOT_FOUND",
                f"experiment {experiment!r} has no runs in project {project!r}",
                project=project,
                experiment=experiment,
            )
        charts = await self.charts(records)
        head = next((r for r in records if r.experiment_head), records[-1])
        return await self.runs_page(
            req, project, records, experiment, "experiment.html", head=head, **charts
        )

    # -- lineage ----------------------------------------------------------------------------

    async def lineage(self, req: web.Request) -> web.Response:
        record = await self.ctx.runs.get(req.match_info["project"], req.match_info["run_id"])
        nodes = await lineage(self.ctx.reader.store, record)
        return render(
            "lineage.html",
            record=record,
            graph=layout(nodes),
            viewing=record.current_incarnation_id,
        )
