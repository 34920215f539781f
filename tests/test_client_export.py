"""Run exports without a YAML library: the client's YAML writer, its reader, and (when PyYAML
is installed) PyYAML reading the same text to the same values."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import stepstream
from stepstream._export import dump_yaml, export_format, load_yaml

TRICKY_STRINGS = [
    "",
    "plain",
    "train/loss",
    "run-1.2_x",
    "true",
    "No",
    "null",
    "~",
    "y",
    "123",
    "-1.5",
    "1e5",
    ".inf",
    ".NaN",
    "0x1F",
    "1:20",
    "2024-01-01",
    "a: b",
    "a:b",
    "- x",
    "-",
    "#c",
    "a #c",
    "[x]",
    "{y}",
    "x, y",
    'quote"s',
    "back\\slash",
    "tab\there",
    "new\nline",
    "cr\rlf",
    "\x00\x07\x1b\x7f",
    "nel\x85",
    "line\u2028para\u2029",
    "\ufeffbom",
    "naïve ✓ 😀",
    " leading",
    "trailing ",
    "@at",
    "`tick`",
    "%pct",
    "!bang",
    "&anchor",
    "*alias",
    "|pipe",
    ">gt",
    "'single'",
    "? q",
    "<<",
]
FLOATS = [0.0, -0.0, 1.0, 0.1, 1e-05, 1e16, 1.5e300, 5e-324, 123456789.123, -2.5e-7]
NON_FINITE = [math.nan, math.inf, -math.inf]


def document() -> dict[str, Any]:
    return {
        "kind": "stepstream.run",
        "version": 1,
        "none": None,
        "flags": [True, False],
        "strings": TRICKY_STRINGS,
        "floats": FLOATS + NON_FINITE,
        "ints": [0, -1, 2**53],
        "by_value": {s: s for s in TRICKY_STRINGS if s},
        "empty_dict": {},
        "empty_list": [],
        "nested": {"optim": {"name": "adam", "betas": [0.9, 0.999], "deep": {"x": {}}}},
        "matrix": [[1.0, 2.0], [], [[3.0]]],
        "mixed": [{"a": 1.0}, "b", [{"c": None}], {}],
        "records": [
            {"incarnation_id": "inc-1", "fork_step": None, "tags": ["a", "b"]},
            {"incarnation_id": "inc-2", "fork_step": 200.0, "nested": {"k": "v"}},
            {"only": {"deeper": [{"x": 1}]}},
        ],
        "k" * 1024: "a key of 1024 bytes",
        "é" * 512: {"nested under": "a long non-ASCII key"},
        "long list": {"m" * 1020: [1.0]},
        "flow long key": [{"z" * 1100: 1.0}],
    }


def same(a: object, b: object) -> bool:
    """Equal, NaN included (json.dumps writes NaN the same way on both sides)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_yaml_round_trip_through_the_clients_reader() -> None:
    original = document()
    text = dump_yaml(original)
    assert same(load_yaml(text), original)
    # Types survive, not only values.
    parsed = load_yaml(text)
    assert [type(v) for v in parsed["floats"]] == [float] * len(FLOATS + NON_FINITE)
    assert [type(v) for v in parsed["ints"]] == [int] * 3
    assert parsed["strings"] == TRICKY_STRINGS
    assert math.copysign(1.0, parsed["floats"][1]) == -1.0


def test_pyyaml_reads_the_same_values() -> None:
    yaml = pytest.importorskip("yaml")
    original = document()
    assert same(yaml.safe_load(dump_yaml(original)), original)


def test_yaml_is_readable_block_style() -> None:
    text = dump_yaml(
        {
            "run_id": "r1",
            "state": "RUNNING",
            "description": "a: b",
            "config": {"lr": 0.001, "optim": {"name": "adam"}},
            "tags": ["a", "b"],
            "history": [{"incarnation_id": "inc-1", "fork_step": None}],
            "values": {},
        }
    )
    assert text == (
        "run_id: r1\n"
        "state: RUNNING\n"
        'description: "a: b"\n'
        "config:\n"
        "  lr: 0.001\n"
        "  optim:\n"
        "    name: adam\n"
        'tags: ["a", "b"]\n'
        "history:\n"
        "  - incarnation_id: inc-1\n"
        "    fork_step: null\n"
        "values: {}\n"
    )


def test_reader_accepts_common_hand_edits() -> None:
    text = (
        "---\n"
        "# a comment\n"
        "name: run  # trailing comment\n"
        "list:\n"
        "- 1\n"
        "- two\n"
        "- {a: 1, b: [x, y]}\n"
        "flag: True\n"
        "nothing:\n"
        "spaced:   [ 1 , 2 ]\n"
    )
    assert load_yaml(text) == {
        "name": "run",
        "list": [1, "two", {"a": 1, "b": ["x", "y"]}],
        "flag": True,
        "nothing": None,
        "spaced": [1, 2],
    }


@pytest.mark.parametrize(
    "text",
    ["a: [1, 2\n", 'a: "open\n', "a: 1\n  b: 2\n", "just text\n", "a: {b 1}\n", 'a: "\\q"\n'],
)
def test_reader_rejects_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match=r"install PyYAML|unexpected indentation"):
        load_yaml(text)


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        ("run.yaml", None, "yaml"),
        ("run.YML", None, "yaml"),
        ("run.json", None, "json"),
        ("run.json", "yaml", "yaml"),
        ("run", "json", "json"),
    ],
)
def test_export_format(name: str, fmt: str | None, expected: str) -> None:
    assert export_format(Path(name), fmt) == expected


def test_export_format_errors() -> None:
    with pytest.raises(stepstream.InvalidArgumentError) as caught:
        export_format(Path("run.txt"), None)
    assert str(caught.value) == (
        "cannot tell the export format from 'run.txt': use a .yaml, .yml or .json file name, "
        "or give format='yaml' or format='json'"
    )
    with pytest.raises(stepstream.InvalidArgumentError, match=r"^format must be 'yaml' or 'json'"):
        export_format(Path("run.yaml"), "toml")


def test_load_export_reads_json_and_rejects_non_documents(tmp_path: Path) -> None:
    good = tmp_path / "run.json"
    good.write_text('{"run_id": "r", "values": {"best": NaN}}')
    loaded = stepstream.load_export(good)
    assert loaded["run_id"] == "r" and math.isnan(loaded["values"]["best"])
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="an export is a mapping, got list"):
        stepstream.load_export(bad)
