"""Run exports (DigitalHub `export()`): a run as a plain document, in YAML, JSON or Parquet.

- JSON needs nothing beyond Python: `json` writes NaN and the infinities as `NaN`, `Infinity`
  and `-Infinity` (read back by Python's `json`, not by strict JSON parsers), so a diverging
  loss survives the round trip.
- YAML goes through PyYAML (the `yaml` extra): `safe_dump` writes `.nan`/`.inf`/`-.inf`, and
  `safe_load` reads them back. Non-ASCII characters are written escaped: PyYAML writes some
  (NEL, U+0085) raw where its own reader then sees a line break.
- Parquet goes through pyarrow (the `parquet` extra): one row per point (`series`, `kind`,
  `step`, `value` for a float series or `text` for a string series, `timestamp`), and the rest
  of the document as JSON in the file's key-value metadata under `stepstream.run`. A Parquet
  export always holds every point: that is what the format is for.

A missing extra raises MissingExtraError naming it, before anything is read from the service.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ._client import RunClient, make_selector, read_lineage
from ._exceptions import InvalidArgumentError, MissingExtraError
from ._security import Connection, Unpack
from ._targets import Address, resolve_target
from ._types import Incarnation, RunInfo, Series, SeriesSummary

FORMATS = ("yaml", "json", "parquet")
_EXTENSIONS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".parquet": "parquet"}
# The module each format needs, and the client extra that installs it.
_NEEDS = {"yaml": ("yaml", "yaml"), "parquet": ("pyarrow.parquet", "parquet")}
_PARQUET_KEY = b"stepstream.run"

EXPORT_KIND = "stepstream.run"
EXPORT_VERSION = 1


def export_format(path: Path, format: str | None) -> str:
    """The format to write `path` in: `format` when given, else from the extension."""
    if format is not None:
        if format not in FORMATS:
            raise InvalidArgumentError(
                f"format must be 'yaml', 'json' or 'parquet', got {format!r}"
            )
        return format
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise InvalidArgumentError(
            f"cannot tell the export format from {path.name!r}: use a .yaml, .yml, .json or "
            ".parquet file name, or give format='yaml', 'json' or 'parquet'"
        )
    return found


def _library(format: str) -> ModuleType | None:
    """The optional library `format` needs (None for JSON); MissingExtraError without it."""
    if format not in _NEEDS:
        return None
    module, extra = _NEEDS[format]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{format.capitalize()} export", extra, module) from None


def _time(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def incarnation_document(incarnation: Incarnation) -> dict[str, Any]:
    return {
        "incarnation_id": incarnation.incarnation_id,
        "run_id": incarnation.run_id,
        "origin": incarnation.origin,
        "parent_incarnation_id": incarnation.parent_incarnation_id,
        "parent_run_id": incarnation.parent_run_id,
        "fork_step": incarnation.fork_step,
        "archived": incarnation.archived,
        "create_time": _time(incarnation.create_time),
    }


def export_document(
    info: RunInfo,
    lineage: Sequence[Incarnation],
    summaries: Sequence[SeriesSummary],
    floats: Mapping[str, Series],
    strings: Mapping[str, Series],
    include_series: bool,
) -> dict[str, Any]:
    """The plain document `Run.export()` writes (see its docstring for what is in it)."""
    series: list[dict[str, Any]] = []
    for summary in summaries:
        entry: dict[str, Any] = {
            "name": summary.name,
            "kind": "string" if summary.string_series else "float",
            "count": summary.count,
            "last_step": summary.last_step,
        }
        if summary.string_series:
            entry["last"] = summary.last_string
        else:
            entry.update(last=summary.last, min=summary.min, max=summary.max)
        entry["generation"] = summary.generation
        if include_series:
            points = (strings if summary.string_series else floats).get(summary.name)
            entry["steps"] = list(points.steps) if points else []
            entry["values"] = list(points.values) if points else []
            entry["timestamps"] = list(points.timestamps) if points else []
        series.append(entry)
    return {
        "kind": EXPORT_KIND,
        "version": EXPORT_VERSION,
        "project": info.project,
        "run_id": info.run_id,
        "experiment": info.experiment,
        "experiment_head": info.experiment_head,
        "state": info.state,
        "failure_reason": info.failure_reason,
        "description": info.description,
        "tags": list(info.tags),
        "config": info.config,
        "values": info.values,
        "create_time": _time(info.create_time),
        "update_time": _time(info.update_time),
        "incarnation_id": info.incarnation_id,
        "history": [incarnation_document(i) for i in info.incarnations],
        "lineage": [incarnation_document(i) for i in lineage],
        "series": series,
    }


def write_export(
    client: RunClient,
    project: str,
    run_id: str,
    path: str | os.PathLike[str] | None,
    format: str | None,
    include_series: bool,
) -> str:
    """Read run `run_id` through `client` and write it to `path` (see Run.export)."""
    if path is None:
        target = Path.cwd() / f"{run_id.replace(':', '_')}.{format or 'yaml'}"
    else:
        target = Path(path)
    kind = export_format(target, format)
    _library(kind)  # a missing extra fails before anything is read
    include_series = include_series or kind == "parquet"
    selector = make_selector(project, run_id=run_id)
    info = client.get_run(project, run_id)
    lineage = read_lineage(client, project, info)
    summaries = client.list_series(selector)
    floats, strings = client.read(selector) if include_series else ({}, {})
    document = export_document(info, lineage, summaries, floats, strings, include_series)
    write_document(document, target, kind)
    return str(target)


def export_run(
    run_id: str,
    path: str | os.PathLike[str] | None = None,
    *,
    format: str | None = None,
    include_series: bool = False,
    project: str | None = None,
    address: Address | None = None,
    **connection: Unpack[Connection],
) -> str:
    """Export a run without opening it (what `Run.export()` writes; see there); returns the
    file's path. Reading a run never changes its state. Takes Run's security keywords too."""
    with RunClient(resolve_target(address, **connection)) as client:
        return write_export(client, project or "", run_id, path, format, include_series)


def write_document(document: Mapping[str, Any], path: Path, format: str) -> None:
    """Write `document` to `path` (replacing it atomically) as YAML, JSON or Parquet."""
    library = _library(format)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if format == "parquet":
            _write_parquet(document, temporary)
        else:
            if library is None:
                text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
            else:
                text = library.safe_dump(dict(document), sort_keys=False, width=100)
            temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_export(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by `Run.export()` back into a dict (the format by extension).

    JSON needs nothing; YAML needs the `yaml` extra and Parquet the `parquet` extra
    (MissingExtraError without them).
    """
    file = Path(path)
    kind = export_format(file, None)
    library = _library(kind)
    document: Any
    if kind == "parquet":
        document = _read_parquet(file)
    elif library is None:
        document = json.loads(file.read_text(encoding="utf-8"))
    else:
        document = library.safe_load(file.read_text(encoding="utf-8"))
    if not isinstance(document, dict):
        raise ValueError(f"{file}: an export is a mapping, got {type(document).__name__}")
    return document


# ---- Parquet -------------------------------------------------------------------------------

_POINTS = ("steps", "values", "timestamps")


def _write_parquet(document: Mapping[str, Any], path: Path) -> None:
    pa = importlib.import_module("pyarrow")
    pq = importlib.import_module("pyarrow.parquet")
    columns: dict[str, list[Any]] = {
        "series": [],
        "kind": [],
        "step": [],
        "value": [],
        "text": [],
        "timestamp": [],
    }
    metadata = dict(document)
    metadata["series"] = []
    for entry in document["series"]:
        metadata["series"].append({k: v for k, v in entry.items() if k not in _POINTS})
        string = entry["kind"] == "string"
        count = len(entry["steps"])
        columns["series"] += [entry["name"]] * count
        columns["kind"] += [entry["kind"]] * count
        columns["step"] += entry["steps"]
        columns["value"] += [None] * count if string else entry["values"]
        columns["text"] += entry["values"] if string else [None] * count
        columns["timestamp"] += entry["timestamps"]
    schema = pa.schema(
        [
            ("series", pa.string()),
            ("kind", pa.string()),
            ("step", pa.float64()),
            ("value", pa.float64()),
            ("text", pa.string()),
            ("timestamp", pa.float64()),
        ],
        metadata={_PARQUET_KEY: json.dumps(metadata, ensure_ascii=False).encode()},
    )
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), str(path))


def _read_parquet(path: Path) -> dict[str, Any]:
    pq = importlib.import_module("pyarrow.parquet")
    table = pq.read_table(str(path))
    raw = (table.schema.metadata or {}).get(_PARQUET_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a stepstream export (no {_PARQUET_KEY.decode()} metadata)")
    document: dict[str, Any] = json.loads(raw)
    rows = table.to_pydict()
    entries = {(e["name"], e["kind"]): e for e in document["series"]}
    for entry in entries.values():
        entry.update(steps=[], values=[], timestamps=[])
    for name, kind, step, value, text, timestamp in zip(
        rows["series"],
        rows["kind"],
        rows["step"],
        rows["value"],
        rows["text"],
        rows["timestamp"],
        strict=True,
    ):
        entry = entries[(name, kind)]
        entry["steps"].append(step)
        entry["values"].append(text if kind == "string" else value)
        entry["timestamps"].append(timestamp)
    return document
