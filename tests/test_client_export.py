"""Export files: YAML (PyYAML), JSON and Parquet (pyarrow) round trips of tricky documents,
NaN and ±Inf included, the formats by extension, and a clear error naming a missing extra."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import stepstream
from stepstream._export import export_format, write_document

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


def series_document() -> dict[str, Any]:
    """A run export with points: what a Parquet file must carry."""
    doc = document()
    doc["series"] = [
        {
            "name": "train/loss",
            "kind": "float",
            "count": 5,
            "last_step": 4.5,
            "last": -math.inf,
            "min": -math.inf,
            "max": math.inf,
            "generation": 0,
            "steps": [0.0, 1.0, 2.0, 3.0, 4.5],
            "values": [0.5, math.nan, math.inf, -0.0, -math.inf],
            "timestamps": [1.0, 2.0, 3.0, 4.0, 5.0],
        },
        {
            "name": "train/loss",  # a string series may share a float series' name
            "kind": "string",
            "count": 2,
            "last_step": 1.0,
            "last": "naïve ✓ 😀",
            "generation": 1,
            "steps": [0.0, 1.0],
            "values": ["new\nline", "naïve ✓ 😀"],
            "timestamps": [1.0, 2.0],
        },
        {
            "name": "empty",
            "kind": "float",
            "count": 0,
            "last_step": -math.inf,
            "last": math.nan,
            "min": math.nan,
            "max": math.nan,
            "generation": 0,
            "steps": [],
            "values": [],
            "timestamps": [],
        },
    ]
    return doc


@pytest.mark.parametrize("name", ["run.yaml", "run.yml", "run.json", "run.parquet"])
def test_round_trip_in_every_format(tmp_path: Path, name: str) -> None:
    original = series_document()
    path = tmp_path / name
    write_document(original, path, export_format(path, None))
    loaded = stepstream.load_export(path)
    assert same(loaded, original)
    # Types survive, not only values: NaN, ±Inf and -0.0 stay floats, ints stay ints.
    assert [type(v) for v in loaded["floats"]] == [float] * len(FLOATS + NON_FINITE)
    assert [type(v) for v in loaded["ints"]] == [int] * 3
    assert loaded["strings"] == TRICKY_STRINGS
    assert math.copysign(1.0, loaded["floats"][1]) == -1.0
    values = loaded["series"][0]["values"]
    assert math.isnan(values[1]) and values[2] == math.inf and values[4] == -math.inf
    assert math.copysign(1.0, values[3]) == -1.0


def test_yaml_is_readable_block_style(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    write_document(
        {"run_id": "r1", "config": {"lr": 0.001, "optim": {"name": "adam"}}, "best": math.nan},
        path,
        "yaml",
    )
    assert path.read_text() == (
        "run_id: r1\nconfig:\n  lr: 0.001\n  optim:\n    name: adam\nbest: .nan\n"
    )


def test_parquet_holds_one_row_per_point(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "run.parquet"
    write_document(series_document(), path, "parquet")
    table = pq.read_table(path)
    assert table.column_names == ["series", "kind", "step", "value", "text", "timestamp"]
    assert table.num_rows == 7
    rows = table.to_pylist()
    assert rows[5] == {
        "series": "train/loss",
        "kind": "string",
        "step": 0.0,
        "value": None,
        "text": "new\nline",
        "timestamp": 1.0,
    }


def test_parquet_without_stepstream_metadata(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1.0]}), path)
    with pytest.raises(ValueError) as caught:
        stepstream.load_export(path)
    assert str(caught.value) == f"{path}: not a stepstream export (no stepstream.run metadata)"


@pytest.mark.parametrize(
    ("name", "module", "message"),
    [
        (
            "run.yaml",
            "yaml",
            "Yaml export needs the 'yaml' extra (yaml is not installed):"
            " pip install 'stepstream[yaml]'",
        ),
        (
            "run.parquet",
            "pyarrow.parquet",
            "Parquet export needs the 'parquet' extra (pyarrow.parquet is not installed):"
            " pip install 'stepstream[parquet]'",
        ),
    ],
)
def test_a_missing_extra_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, module: str, message: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    path = tmp_path / name
    for call in (
        lambda: write_document({"kind": "stepstream.run", "series": []}, path, name.split(".")[1]),
        lambda: stepstream.load_export(path),
    ):
        with pytest.raises(stepstream.MissingExtraError) as caught:
            call()
        assert str(caught.value) == message
        assert isinstance(caught.value, ImportError)
        assert caught.value.extra == name.split(".")[1]
    assert not path.exists()


def test_json_needs_no_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    path = tmp_path / "run.json"
    write_document(series_document(), path, "json")
    assert same(stepstream.load_export(path), series_document())


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        ("run.yaml", None, "yaml"),
        ("run.YML", None, "yaml"),
        ("run.json", None, "json"),
        ("run.parquet", None, "parquet"),
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
        "cannot tell the export format from 'run.txt': use a .yaml, .yml, .json or .parquet "
        "file name, or give format='yaml', 'json' or 'parquet'"
    )
    with pytest.raises(stepstream.InvalidArgumentError) as caught:
        export_format(Path("run.yaml"), "toml")
    assert str(caught.value) == "format must be 'yaml', 'json' or 'parquet', got 'toml'"


def test_load_export_reads_json_and_rejects_non_documents(tmp_path: Path) -> None:
    good = tmp_path / "run.json"
    good.write_text('{"run_id": "r", "values": {"best": NaN}}')
    loaded = stepstream.load_export(good)
    assert loaded["run_id"] == "r" and math.isnan(loaded["values"]["best"])
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="an export is a mapping, got list"):
        stepstream.load_export(bad)
