"""`stepstream series RUN NAME`: one series of a run's current view, inherited points
included, as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any

from .._client import check_read_range, make_selector
from .._validate import check_name
from . import _connection
from ._output import NotFound, number, print_json, print_table


def register(commands: Any) -> None:
    series = commands.add_parser("series", help="the points of one series of a run")
    _connection.add_options(series)
    series.add_argument("run", metavar="RUN", help="the run ID")
    series.add_argument("name", metavar="NAME", help="the series name, e.g. train/loss")
    series.add_argument(
        "--max-points",
        type=int,
        metavar="N",
        help="downsample to at most N points (N >= 5), keeping extremes and NaN",
    )
    series.add_argument(
        "--own", action="store_true", help="only the run's own points, without inherited ones"
    )
    output = series.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="print CSV: step,value,timestamp")
    output.add_argument("--json", action="store_true", help="print JSON")
    series.set_defaults(handler=show_series)


def show_series(args: argparse.Namespace) -> None:
    check_name(args.name, "NAME")
    _, _, most, _ = check_read_range(None, None, args.max_points, None)
    selector = make_selector(args.project, run_id=args.run, own_points_only=args.own)
    with _connection.open_client(args) as client:
        client.get_run(args.project, args.run)  # an unknown run is NOT_FOUND, not empty
        summaries = {s.name: s for s in client.list_series(selector)}
        if args.name not in summaries:
            known = ", ".join(sorted(summaries)) or "none"
            raise NotFound(f"run {args.run!r} has no series {args.name!r} (it has: {known})")
        points = client.read_series(
            selector, args.name, step_min=None, step_max=None, max_points=most, generation=None
        )
    strings = bool(points.values) and isinstance(points.values[0], str)
    if args.json:
        print_json(
            {
                "run_id": args.run,
                "name": points.name,
                "kind": "string" if strings else "float",
                "steps": points.steps,
                "values": points.values,
                "timestamps": points.timestamps,
            }
        )
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["step", "value", "timestamp"])
        writer.writerows(zip(points.steps, points.values, points.timestamps, strict=True))
    else:
        print_table(
            ["step", "value", "timestamp"],
            [
                [number(s), number(v) if isinstance(v, float) else str(v), f"{t:.3f}"]
                for s, v, t in zip(points.steps, points.values, points.timestamps, strict=True)
            ],
        )
