"""Local argument checks: bad input fails immediately, before anything is sent, with a message
naming the field. No service needed: every check runs before the first RPC."""

from __future__ import annotations

import math
import re
import socket
import time
from typing import Any

import grpc
import pytest
import stepstream
from stepstream import _records
from stepstream._records import Column, RecordMaker, Rows

InvalidArgumentError = stepstream.InvalidArgumentError


def _unused_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _raises(message: str) -> Any:
    """pytest.raises for an InvalidArgumentError with exactly this message."""
    return pytest.raises(InvalidArgumentError, match=f"^{re.escape(message)}$")


# ---- Run(...) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"fork_run_id": "parent"},
            "fork_run_id and fork_step must be given together "
            "(got fork_run_id='parent', fork_step=None)",
        ),
        (
            {"fork_step": 10},
            "fork_run_id and fork_step must be given together (got fork_run_id=None, fork_step=10)",
        ),
        ({"fork_run_id": "parent", "fork_step": math.nan}, "fork_step must be finite, got nan"),
        (
            {"fork_run_id": "a b", "fork_step": 1},
            "fork_run_id 'a b' must be 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit",
        ),
        ({"resume": True}, "resume=True needs the run_id of the run to attach to"),
        (
            {"fork_incarnation_id": "inc-1"},
            "fork_incarnation_id needs fork_step (got fork_incarnation_id='inc-1', fork_step=None)",
        ),
        (
            {"fork_incarnation_id": "inc-1", "fork_run_id": "p", "fork_step": 1},
            "give fork_run_id or fork_incarnation_id, not both (got fork_run_id='p', "
            "fork_incarnation_id='inc-1')",
        ),
        (
            {"fork_incarnation_id": "inc 1", "fork_step": 1},
            "fork_incarnation_id 'inc 1' must be 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit",
        ),
        (
            {"fork_incarnation_id": "inc-1", "fork_step": math.inf},
            "fork_step must be finite, got inf",
        ),
        (
            {"inherit_configs": True},
            "inherit_configs=True needs a fork: give fork_run_id, fork_incarnation_id or fork_from",
        ),
        (
            {"config": {"sys/description": 3}},
            "config['sys/description'] sets the description and must be a str, got int",
        ),
        (
            {"writer_id": ""},
            "writer_id '' must be 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit",
        ),
        ({"config": [("lr", 1)]}, "config must be a dict, got list"),
        (
            {"config": {"lr": {1e-3, 1e-4}}},
            "config['lr'] has unsupported type set; use None, bool, int, float, str, list, tuple "
            "or dict",
        ),
        ({"config": {"": 1}}, "config key '' is empty"),
        ({"tags": 3}, "tags must be a str or an iterable of str, got int"),
        ({"tags": ["ok", ""]}, "tag in tags '' is empty"),
        ({"description": 3}, "description must be a str, got int"),
        ({"max_queued_points": 0}, "max_queued_points must be a positive int, got 0"),
        (
            {"max_batch_points": 200_000},
            "max_batch_points must be at most 100000 (the service's limit), got 200000",
        ),
        ({"max_inflight_batches": 1.5}, "max_inflight_batches must be a positive int, got 1.5"),
        ({"connect_timeout": -1}, "connect_timeout must be a positive number of seconds, got -1"),
        ({"on_error": "print"}, "on_error must be callable, got 'print'"),
    ],
)
def test_run_rejects_bad_arguments_before_any_rpc(kwargs: dict[str, Any], message: str) -> None:
    with _raises(message) as caught:
        stepstream.Run(**kwargs, address=_unused_address())
    assert isinstance(caught.value, ValueError)


def test_run_id_is_checked() -> None:
    with _raises(
        "run_id 'has/slash' must be 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit"
    ):
        stepstream.Run("has/slash")
    with _raises("run_id must be a str, got int: 5"):
        stepstream.Run(5)  # type: ignore[arg-type]


def test_run_fails_fast_without_a_service() -> None:
    address = _unused_address()
    started = time.monotonic()
    with pytest.raises(stepstream.RPCError) as caught:
        stepstream.Run("r1", address=address, connect_timeout=0.5, on_unavailable="raise")
    assert time.monotonic() - started < 5
    assert caught.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert f"no answer from the stepstream service at {address} within 0.5 s" in str(caught.value)


def test_default_address_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from stepstream._targets import resolve_address

    monkeypatch.delenv("STEPSTREAM_ADDRESS", raising=False)
    assert resolve_address(None) == "127.0.0.1:50051"
    monkeypatch.setenv("STEPSTREAM_ADDRESS", "metrics:7000")
    assert resolve_address(None) == "metrics:7000"
    assert resolve_address("other:1") == "other:1"


# ---- log calls (RecordMaker does all of a log call's work before queueing) ----------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "series name '' is empty"),
        ("a\x00b", "series name 'a\\x00b' contains a NUL character"),
        ("x" * 1025, "series name '" + "x" * 59 + "…' is 1025 bytes long; the limit is 1024"),
        ("é" * 513, "series name '" + "é" * 59 + "…' is 1026 bytes long; the limit is 1024"),
        ("bad\ud800", "series name 'bad\\ud800' is not valid UTF-8 (surrogates not allowed)"),
        (7, "series name must be a str, got int: 7"),
    ],
)
def test_bad_series_names(name: Any, message: str) -> None:
    maker = RecordMaker()
    with _raises(message):
        maker.float_rows({"ok": 1.0, name: 1.0}, 1, None)
    with _raises(message):
        maker.float_values(name, 1.0, 1, None)
    with _raises(message):
        maker.string_rows({name: "line"}, 1, None)


def test_longest_names_are_accepted() -> None:
    maker = RecordMaker()
    rows = maker.float_rows({"x" * 1024: 1.0, "é" * 512: 2.0, "train/loss": 3.0}, 0, None)
    assert rows is not None and rows.points == 3


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (math.nan, "step must be finite, got nan"),
        (math.inf, "step must be finite, got inf"),
        (-math.inf, "step must be finite, got -inf"),
        ("3", "step must be a real number, got str: '3'"),
        (True, "step must be a real number, got bool: True"),
        ([1], "step must be a real number, got list: [1]"),
    ],
)
def test_bad_steps(step: Any, message: str) -> None:
    maker = RecordMaker()
    with _raises(message):
        maker.float_rows({"a": 1.0}, step, None)
    with _raises(message):
        maker.float_values("a", [1.0, 2.0], step, None)
    with _raises(message):
        maker.string_rows({"a": "x"}, step, None)


def test_fractional_and_integer_steps_become_floats() -> None:
    maker = RecordMaker()
    rows = maker.float_rows({"a": 1, "b": 2}, 100.1, None)
    assert isinstance(rows, Rows) and rows.step == 100.1
    rows = maker.float_rows({"a": 1, "b": 2}, 7, None)
    assert isinstance(rows, Rows) and rows.step == 7.0 and type(rows.step) is float
    # A one-key call is a Point, (step, time, name, value): the same conversions.
    point = maker.float_rows({"a": 1}, 7, None)
    assert type(point) is tuple and point[0] == 7.0 and type(point[0]) is float
    assert point[2:] == ("a", 1.0) and type(point[3]) is float


def test_bad_timestamp() -> None:
    with _raises("timestamp must be finite, got nan"):
        RecordMaker().float_rows({"a": 1.0}, 1, math.nan)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0.5", "value of 'loss' must be a real number, got str: '0.5'"),
        (None, "value of 'loss' must be a real number, got NoneType: None"),
        (2**1100, "value of 'loss' must be a real number, got int: " + repr(2**1100)[:60]),
        ([1.0, "x"], "value of 'loss[1]' must be a real number, got str: 'x'"),
        ({"a": 1.0}, "value of 'loss' must be a real number, got dict: {'a': 1.0}"),
        (b"ab", "value of 'loss' must be a real number, got bytes: b'ab'"),
        ({1.0, 2.0}, "value of 'loss' must be a real number, got set: {1.0, 2.0}"),
    ],
)
def test_bad_values_in_log_metrics(value: Any, message: str) -> None:
    with _raises(message):
        RecordMaker().float_rows({"acc": 1.0, "loss": value}, 1, None)


def test_lists_in_log_metrics_become_columns() -> None:
    """DigitalHub: a list in log_metrics is appended at consecutive steps, a number once."""
    maker = RecordMaker()
    records = maker.float_rows({"loss": [0.1, 0.05], "epoch": 10, "empty": []}, 5, 1.5)
    assert isinstance(records, list)
    rows, column = records
    assert isinstance(rows, Rows) and isinstance(column, Column)
    assert (rows.keys, rows.step, rows.time, rows.overwrite) == (("epoch",), 5.0, 1.5, False)
    assert (column.name, column.first_step, column.points) == ("loss", 5.0, 2)
    only_lists = maker.float_rows({"a": (1.0,), "b": [2.0, 3.0]}, None, None, overwrite=True)
    assert isinstance(only_lists, list)
    assert [(c.name, c.first_step, c.points, c.overwrite) for c in only_lists] == [  # type: ignore[union-attr]
        ("a", None, 1, True),
        ("b", None, 2, True),
    ]


def test_non_finite_values_are_accepted() -> None:
    rows = RecordMaker().float_rows({"a": math.nan, "b": math.inf, "c": -math.inf}, 1, None)
    assert rows is not None and rows.points == 3


def test_log_metric_values() -> None:
    maker = RecordMaker()
    single = maker.float_values("x", 0.5, 3, None)
    assert type(single) is tuple and single[0] == 3.0 and single[2:] == ("x", 0.5)
    overwriting = maker.float_values("x", 0.5, 3, None, overwrite=True)
    assert isinstance(overwriting, Rows) and overwriting.keys == ("x",) and overwriting.overwrite
    column = maker.float_values("x", [1, 2.5, 3], 10, None)
    assert isinstance(column, Column)
    assert (column.first_step, column.points) == (10.0, 3)
    assigned = maker.float_values("x", (v for v in [1.0, 2.0]), None, None)
    assert isinstance(assigned, Column) and assigned.first_step is None
    assert maker.float_values("x", [], 3, None) is None
    with _raises("value of 'x[1]' must be a real number, got str: 'a'"):
        maker.float_values("x", [1.0, "a"], None, None)
    with _raises("value of 'x' must be a real number, got str: 'abc'"):
        maker.float_values("x", "abc", None, None)


def test_log_strings_values() -> None:
    maker = RecordMaker()
    with _raises("value of string series 'console' must be a str, got int"):
        maker.string_rows({"console": 3}, 1, None)
    with _raises("value of string series 'console' is not valid UTF-8 (surrogates not allowed)"):
        maker.string_rows({"console": "x\udc80"}, 1, None)
    rows = maker.string_rows({"console": "naïve ✓"}, None, None)
    assert rows is not None and rows.values == ("naïve ✓",)


def test_empty_dicts_log_nothing() -> None:
    maker = RecordMaker()
    assert maker.float_rows({}, 1, None) is None
    assert maker.string_rows({}, 1, None) is None


def test_each_name_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[object] = []
    original = _records.check_name

    def counting(name: object, what: str) -> str:
        checked.append(name)
        return original(name, what)

    monkeypatch.setattr(_records, "check_name", counting)
    maker = RecordMaker()
    data = {f"layer{i}/grad": float(i) for i in range(100)}
    for step in range(5):
        maker.float_rows(data, step, None)
    maker.float_rows({**data, "new": 1.0}, 5, None)
    maker.float_values("layer3/grad", 1.0, 6, None)
    assert sorted(checked, key=str) == sorted([*data, "new"], key=str)


def test_repeated_key_sets_share_one_tuple() -> None:
    maker = RecordMaker()
    first = maker.float_rows({"a": 1.0, "b": 2.0}, 1, None)
    second = maker.float_rows({"a": 3.0, "b": 4.0}, 2, None)
    assert first is not None and second is not None
    assert first.keys is second.keys


def test_a_rejected_name_is_not_remembered() -> None:
    maker = RecordMaker()
    with pytest.raises(InvalidArgumentError):
        maker.float_rows({"ok": 1.0, "": 2.0}, 1, None)
    with pytest.raises(InvalidArgumentError):
        maker.float_rows({"ok": 1.0, "": 2.0}, 2, None)
