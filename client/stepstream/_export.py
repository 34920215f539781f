"""Run exports (DigitalHub `export()`): a run as a plain document, written as YAML or JSON.

The client depends on no YAML library. `dump_yaml` writes the small YAML subset a document
needs: block mappings, block sequences of mappings, flow sequences (`[1.0, 2.0]`) and flow
mappings inside them, double-quoted or plain scalars. Every scalar is written so that YAML 1.1
(PyYAML) and YAML 1.2 parsers resolve it to the same value: floats always carry a "." (`1.0e-05`,
never `1e-05`), NaN and the infinities are `.nan`/`.inf`/`-.inf`, and a string is left unquoted
only when no parser could take it for anything else. `load_export` reads a file back with PyYAML
when it is installed, else with the subset reader below (enough for what `dump_yaml` writes).

JSON files use Python's `json` module, which writes NaN and the infinities as `NaN`,
`Infinity` and `-Infinity` (read back by Python's `json`, not by strict JSON parsers): a diverging
loss must survive the round trip.
"""

from __future__ import annotations

import datetime
import importlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._exceptions import InvalidArgumentError
from ._types import Incarnation, RunInfo, Series, SeriesSummary

FORMATS = ("yaml", "json")
_EXTENSIONS = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def export_format(path: Path, format: str | None) -> str:
    """The format to write `path` in: `format` when given, else from the extension."""
    if format is not None:
        if format not in FORMATS:
            raise InvalidArgumentError(f"format must be 'yaml' or 'json', got {format!r}")
        return format
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise InvalidArgumentError(
            f"cannot tell the export format from {path.name!r}: use a .yaml, .yml or .json "
            "file name, or give format='yaml' or format='json'"
        )
    return found


EXPORT_KIND = "stepstream.run"
EXPORT_VERSION = 1


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


def write_document(document: Mapping[str, Any], path: Path, format: str) -> None:
    """Write `document` to `path` (replacing it atomically) as YAML or JSON."""
    if format == "json":
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    else:
        text = dump_yaml(document)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_export(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by `Run.export()` back into a dict.

    `.json` files are read with `json`; YAML files with PyYAML's `safe_load` when PyYAML is
    installed, else with the client's own reader, which understands what `export()` writes.
    """
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    if export_format(file, None) == "json":
        document = json.loads(text)
    else:
        try:
            yaml = importlib.import_module("yaml")  # optional, never required
        except ImportError:
            document = load_yaml(text, str(file))
        else:
            document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ValueError(f"{file}: an export is a mapping, got {type(document).__name__}")
    return document


# ---- writing YAML -------------------------------------------------------------------------

# Strings a YAML 1.1 parser would resolve to something else when unquoted.
_RESERVED = frozenset({"true", "false", "yes", "no", "on", "off", "y", "n", "null"})
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_./-]*")
# Characters that must be escaped inside a double-quoted scalar: the quote and the backslash,
# C0 and C1 controls (NEL included), line and paragraph separators, BOM, non-characters and
# lone surrogates.
_ESCAPE = re.compile('["\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]')
_NAMED = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
# PyYAML treats a simple key longer than 1024 characters as an error; longer keys are
# written in the explicit form ("? key" / ": value").
_MAX_SIMPLE_KEY = 1000


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def quote(text: str) -> str:
    """`text` as a YAML double-quoted scalar."""
    return '"' + _ESCAPE.sub(_escape, text) + '"'


def _plain_ok(text: str) -> bool:
    return _PLAIN.fullmatch(text) is not None and text.lower() not in _RESERVED


def _float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    mantissa, e, exponent = repr(value).partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return mantissa + e + exponent


def _scalar(value: object, flow: bool) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return value if not flow and _plain_ok(value) else quote(value)
    raise TypeError(f"cannot export a value of type {type(value).__name__}: {value!r:.60}")


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"export keys must be str, got {type(key).__name__}: {key!r:.60}")
    return key if _plain_ok(key) else quote(key)


def _flow(value: object) -> str:
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            text = quote(key) if isinstance(key, str) else _key(key)
            prefix = "? " if len(text) > _MAX_SIMPLE_KEY else ""
            items.append(f"{prefix}{text}: {_flow(item)}")
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(item) for item in value) + "]"
    return _scalar(value, flow=True)


def _block_list(value: object) -> bool:
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(item, Mapping) and item for item in value)
    )


def _mapping(mapping: Mapping[str, Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for key, value in mapping.items():
        text = _key(key)
        if len(text) > _MAX_SIMPLE_KEY:
            lines.append(f"{pad}? {text}")
            text = ""
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{text}:")
            _mapping(value, indent + 2, lines)
        elif _block_list(value):
            lines.append(f"{pad}{text}:")
            _sequence(value, indent + 2, lines)
        elif isinstance(value, (Mapping, list, tuple)):
            lines.append(f"{pad}{text}: {_flow(value)}")
        else:
            lines.append(f"{pad}{text}: {_scalar(value, flow=False)}")


def _sequence(items: Sequence[Mapping[str, Any]], indent: int, lines: list[str]) -> None:
    for item in items:
        nested: list[str] = []
        _mapping(item, indent + 2, nested)
        nested[0] = " " * indent + "- " + nested[0][indent + 2 :]
        lines.extend(nested)


def dump_yaml(document: Mapping[str, Any]) -> str:
    """`document` (str keys; dicts, lists, str, int, float, bool, None) as a YAML document."""
    lines: list[str] = []
    _mapping(document, 0, lines)
    return "\n".join(lines) + "\n"


# ---- reading YAML (the subset dump_yaml writes) ---------------------------------------


class _Line:
    __slots__ = ("indent", "number", "text")

    def __init__(self, indent: int, text: str, number: int) -> None:
        self.indent = indent
        self.text = text
        self.number = number


_UNESCAPE = {
    "0": "\x00",
    "a": "\x07",
    "b": "\b",
    "t": "\t",
    "\t": "\t",
    "n": "\n",
    "v": "\x0b",
    "f": "\f",
    "r": "\r",
    "e": "\x1b",
    " ": " ",
    '"': '"',
    "/": "/",
    "\\": "\\",
    "N": "\x85",
    "_": "\xa0",
    "L": "\u2028",
    "P": "\u2029",
}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class _YAMLError(ValueError):
    pass


def _resolve(text: str) -> Any:
    """A plain scalar's value."""
    lowered = text.lower()
    if text in ("", "~") or lowered == "null":
        return None
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    if lowered == ".nan":
        return math.nan
    if lowered in (".inf", "+.inf"):
        return math.inf
    if lowered == "-.inf":
        return -math.inf
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


class _Flow:
    """A parser for one line's inline value: a flow collection or a scalar."""

    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.pos = 0
        self.where = where

    def error(self, what: str) -> _YAMLError:
        return _YAMLError(f"{self.where}: {what} at column {self.pos + 1}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def whole(self, flow: bool) -> Any:
        value = self.value(flow)
        self.skip()
        if self.pos < len(self.text) and not self.text.startswith("#", self.pos):
            raise self.error("unexpected text after the value")
        return value

    def value(self, flow: bool) -> Any:
        self.skip()
        if self.pos >= len(self.text):
            return None
        char = self.text[self.pos]
        if char == "[":
            return self.sequence()
        if char == "{":
            return self.mapping()
        if char == '"':
            return self.quoted()
        return self.plain(flow)

    def sequence(self) -> list[Any]:
        self.pos += 1
        items: list[Any] = []
        while True:
            self.skip()
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return items
            items.append(self.value(flow=True))
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("]", self.pos):
                raise self.error("expected ',' or ']'")

    def mapping(self) -> dict[str, Any]:
        self.pos += 1
        items: dict[str, Any] = {}
        while True:
            self.skip()
            if self.text.startswith("}", self.pos):
                self.pos += 1
                return items
            if self.text.startswith("? ", self.pos):
                self.pos += 2
                self.skip()
            key = self.value(flow=True)
            self.skip()
            if not self.text.startswith(":", self.pos):
                raise self.error("expected ':'")
            self.pos += 1
            items[str(key)] = self.value(flow=True)
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("}", self.pos):
                raise self.error("expected ',' or '}'")

    def quoted(self) -> str:
        text = self.text
        self.pos += 1
        out: list[str] = []
        while True:
            end = self.pos
            while end < len(text) and text[end] not in '"\\':
                end += 1
            out.append(text[self.pos : end])
            if end >= len(text):
                self.pos = end
                raise self.error("unterminated string")
            self.pos = end + 1
            if text[end] == '"':
                return "".join(out)
            code = text[self.pos : self.pos + 1]
            self.pos += 1
            if code in _HEX_DIGITS:
                digits = text[self.pos : self.pos + _HEX_DIGITS[code]]
                if len(digits) != _HEX_DIGITS[code]:
                    raise self.error("short escape")
                out.append(chr(int(digits, 16)))
                self.pos += len(digits)
            elif code in _UNESCAPE:
                out.append(_UNESCAPE[code])
            else:
                raise self.error(f"unknown escape \\{code}")

    def plain(self, flow: bool) -> Any:
        start = self.pos
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if flow and char in ",]}":
                break
            if flow and char == ":" and (self.pos + 1 == len(text) or text[self.pos + 1] == " "):
                break
            if char == "#" and self.pos > start and text[self.pos - 1] == " ":
                break
            self.pos += 1
        return _resolve(text[start : self.pos].strip())


def _split_key(line: _Line, where: str) -> tuple[str, str] | None:
    """("key", "rest of the line") for a mapping entry line, None if it is not one."""
    text = line.text
    if text.startswith('"'):
        parser = _Flow(text, where)
        try:
            key = parser.quoted()
        except _YAMLError:
            return None
        parser.skip()
        if not text.startswith(":", parser.pos):
            return None
        rest = text[parser.pos + 1 :]
        if rest and not rest.startswith(" "):
            return None
        return key, rest.strip()
    if text[:1] in ("[", "{"):
        return None
    index = text.find(": ")
    if index < 0:
        if not text.endswith(":"):
            return None
        index = len(text) - 1
    return text[:index].rstrip(), text[index + 1 :].strip()


def _block(lines: list[_Line], i: int, indent: int, source: str) -> tuple[Any, int]:
    if lines[i].text == "-" or lines[i].text.startswith("- "):
        return _block_sequence(lines, i, indent, source)
    return _block_mapping(lines, i, indent, source)


def _nested(lines: list[_Line], i: int, indent: int, source: str) -> tuple[Any, int]:
    """The block value that starts on the line after an entry with nothing after its ':'."""
    if i < len(lines) and (
        lines[i].indent > indent or (lines[i].indent == indent and lines[i].text.startswith("- "))
    ):
        return _block(lines, i, lines[i].indent, source)
    return None, i


def _block_mapping(lines: list[_Line], i: int, indent: int, source: str) -> tuple[Any, int]:
    result: dict[str, Any] = {}
    while i < len(lines) and lines[i].indent == indent:
        line = lines[i]
        where = f"{source}:{line.number}"
        if line.text.startswith("- "):
            raise _YAMLError(f"{where}: a sequence item inside a mapping")
        if line.text.startswith("? "):
            key = _Flow(line.text[2:], where).whole(flow=False)
            i += 1
            if i >= len(lines) or lines[i].indent != indent or not lines[i].text.startswith(":"):
                raise _YAMLError(f"{where}: an explicit key without its ': value' line")
            rest = lines[i].text[1:].strip()
        else:
            entry = _split_key(line, where)
            if entry is None:
                raise _YAMLError(f"{where}: expected 'key: value'")
            key, rest = entry
        i += 1
        if rest:
            value = _Flow(rest, f"{source}:{lines[i - 1].number}").whole(flow=False)
        else:
            value, i = _nested(lines, i, indent, source)
        result[str(key)] = value
    return result, i


def _block_sequence(lines: list[_Line], i: int, indent: int, source: str) -> tuple[Any, int]:
    items: list[Any] = []
    while (
        i < len(lines)
        and lines[i].indent == indent
        and (lines[i].text == "-" or lines[i].text.startswith("- "))
    ):
        line = lines[i]
        rest = line.text[2:].strip()
        where = f"{source}:{line.number}"
        if not rest:
            value, i = _nested(lines, i + 1, indent, source)
        elif rest.startswith("? ") or _split_key(_Line(0, rest, line.number), where) is not None:
            # "- key: value": a mapping whose first entry shares the item's line.
            lines[i] = _Line(indent + len(line.text) - len(rest), rest, line.number)
            value, i = _block_mapping(lines, i, lines[i].indent, source)
        else:
            value = _Flow(rest, where).whole(flow=False)
            i += 1
        items.append(value)
    return items, i


def load_yaml(text: str, source: str = "<yaml>") -> Any:
    """Parse the YAML subset `dump_yaml` writes (comments and a leading '---' allowed)."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#") or stripped == "---":
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise _YAMLError(f"{source}:{number}: tabs in indentation")
        lines.append(_Line(len(raw) - len(raw.lstrip(" ")), stripped, number))
    if not lines:
        return None
    try:
        value, end = _block(lines, 0, lines[0].indent, source)
    except _YAMLError as exc:
        raise ValueError(
            f"{exc} (install PyYAML to read YAML beyond what export() writes)"
        ) from None
    if end != len(lines):
        raise ValueError(f"{source}:{lines[end].number}: unexpected indentation")
    return value
