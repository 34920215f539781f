"""`stepstream runs list|show|export`: the runs of a project, one run in full, a run to a file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._client import make_selector, read_lineage
from .._export import FORMATS, export_document, write_export
from .._types import RunInfo
from .._validate import check_id
from . import _connection
from ._output import number, print_json, print_table, when

STATES = ("RUNNING", "STOPPED", "FINISHED", "FAILED")


def register(commands: Any) -> None:
    runs = commands.add_parser("runs", help="list, show and export runs")
    actions = runs.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="the runs of a project, oldest first")
    _connection.add_options(listing)
    listing.add_argument("--experiment", metavar="E", help="only the runs of this experiment")
    listing.add_argument(
        "--state", metavar="S", type=str.upper, choices=STATES, help="only runs in this state"
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=list_runs)

    show = actions.add_parser(
        "show", help="one run: state, config, tags, lineage and a summary of every series"
    )
    _connection.add_options(show)
    show.add_argument("run", metavar="RUN", help="the run ID")
    show.add_argument("--json", action="store_true", help="print the export document as JSON")
    show.set_defaults(handler=show_run)

    export = actions.add_parser(
        "export", help="write a run to a .yaml, .json or .parquet file (as Run.export does)"
    )
    _connection.add_options(export)
    export.add_argument("run", metavar="RUN", help="the run ID")
    export.add_argument("path", metavar="PATH", help="the file to write")
    export.add_argument(
        "--series", action="store_true", help="include every point (a .parquet file always does)"
    )
    export.add_argument("--format", choices=FORMATS, help="the format (default: by extension)")
    export.set_defaults(handler=export_run)


def _run_row(info: RunInfo) -> list[str]:
    return [
        info.run_id,
        info.experiment or "",
        info.state,
        when(info.create_time),
        ",".join(info.tags),
    ]


def _info_document(info: RunInfo) -> dict[str, Any]:
    """What an export holds about the run itself (no lineage, no series)."""
    document = export_document(info, [], [], {}, {}, False)
    del document["lineage"], document["series"]
    return document


def list_runs(args: argparse.Namespace) -> None:
    with _connection.open_client(args) as client:
        found = client.list_runs(args.project, args.experiment or "")
    if args.state:
        found = [r for r in found if r.state == args.state]
    if args.json:
        print_json([_info_document(r) for r in found])
        return
    print_table(["run_id", "experiment", "state", "created", "tags"], [_run_row(r) for r in found])


def _lookup(client: Any, args: argparse.Namespace) -> RunInfo:
    check_id(args.run, "RUN")
    info: RunInfo = client.get_run(args.project, args.run)
    return info


def show_run(args: argparse.Namespace) -> None:
    with _connection.open_client(args) as client:
        info = _lookup(client, args)
        lineage = read_lineage(client, args.project, info)
        summaries = client.list_series(make_selector(args.project, run_id=args.run))
    document = export_document(info, lineage, summaries, {}, {}, False)
    if args.json:
        print_json(document)
        return
    fields = [
        ("run", info.run_id),
        ("project", info.project),
        ("experiment", info.experiment or ""),
        ("state", info.state + (f" ({info.failure_reason})" if info.failure_reason else "")),
        ("created", when(info.create_time)),
        ("updated", when(info.update_time)),
        ("description", info.description),
        ("tags", ", ".join(info.tags)),
        ("incarnation", info.incarnation_id),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name.ljust(width)}  {value}".rstrip())
    if info.config:
        print("\nconfig")
        for key, value in sorted(_flatten(info.config).items()):
            print(f"  {key} = {json.dumps(value, ensure_ascii=False)}")
    if info.values:
        print("\nvalues")
        for key, value in sorted(info.values.items()):
            print(f"  {key} = {number(value)}")
    print("\nlineage (oldest first)")
    print_table(
        ["  incarnation", "run_id", "origin", "fork_step", "archived", "created"],
        [
            [
                "  " + i.incarnation_id,
                i.run_id,
                i.origin,
                number(i.fork_step),
                "yes" if i.archived else "",
                when(i.create_time),
            ]
            for i in lineage
        ],
    )
    print("\nseries")
    print_table(
        ["  name", "kind", "count", "last_step", "last", "min", "max"],
        [
            ["  " + s.name, "string", str(s.count), number(s.last_step), s.last_string, "", ""]
            if s.string_series
            else [
                "  " + s.name,
                "float",
                str(s.count),
                number(s.last_step),
                number(s.last),
                number(s.min),
                number(s.max),
            ]
            for s in summaries
        ],
    )


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def export_run(args: argparse.Namespace) -> None:
    with _connection.open_client(args) as client:
        _lookup(client, args)
        path = write_export(client, args.project, args.run, args.path, args.format, args.series)
    print(path)
