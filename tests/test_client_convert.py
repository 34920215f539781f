"""Conversions between protobuf messages and the client's plain values."""

from __future__ import annotations

import datetime
import json
import math
import re
from typing import Any

import grpc
import pytest
import stepstream
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from stepstream import configjson
from stepstream._convert import (
    config_json,
    ingest_error_from_rejection,
    ingest_error_from_status,
    plain_config,
    run_info_from_proto,
    summary_from_proto,
)
from stepstream.v1 import ingest_pb2, runs_pb2


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"lr": 0.001, "name": "resnet", "pretrained": True, "seed": None},
        {"optim": {"betas": [0.9, 0.999], "eps": 1e-8, "nested": {"deep": {"x": "y"}}}},
        {"layers": [[1.5, 2.5], [], {"a": [None, False, "s"]}]},
        {"empty": {}, "none_list": [], "sys/description": "baseline"},
        {"unicode/ключ": "значение ✓", "-0": -0.0, "big": 2.0**53},
        {"batch_size": 64, "epochs": 3, "whole": 3.0, "neg": -(2**63), "top": 2**63 - 1},
        {"loss": math.inf, "low": -math.inf, "grid": [1, 2.0, -math.inf, {"x": math.inf}]},
        # Mappings that look like the tags themselves stay mappings.
        {"$float": "NaN", "tagged": {"$float": "NaN"}, "obj": {"$object": {"$float": 1}}},
        {"two": {"$float": "NaN", "other": 1}, "flag": {"$object": []}},
    ],
)
def test_typed_json_round_trip_keeps_every_type(config: dict[str, Any]) -> None:
    text = config_json(config)
    back = configjson.loads(text)
    assert back == config
    assert _types(back) == _types(config)
    # The service answers in the same encoding: through a Run message and back.
    info = run_info_from_proto(runs_pb2.Run(run_id="r", config_json=text, values_json=text))
    assert info.config == config and _types(info.config) == _types(config)
    assert info.values == config


def _types(value: Any) -> Any:
    """The shape of `value` with every leaf replaced by its type (== ignores 3 vs 3.0)."""
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_types(item) for item in value]
    return type(value)


def test_nan_survives_and_ints_stay_ints() -> None:
    back = configjson.loads(config_json({"lr": math.nan, "epochs": 10, "shape": (3, 224)}))
    assert math.isnan(back["lr"]) and back["epochs"] == 10 and type(back["epochs"]) is int
    assert back["shape"] == [3, 224] and all(type(x) is int for x in back["shape"])


def test_the_encoding_is_strict_json() -> None:
    text = config_json({"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1, "e": 1.0})
    assert json.loads(text, parse_constant=lambda name: pytest.fail(name)) == {
        "a": {"$float": "NaN"},
        "b": {"$float": "Infinity"},
        "c": {"$float": "-Infinity"},
        "d": 1,
        "e": 1.0,
    }
    assert '"e":1.0' in text
    assert config_json({"$object": 1}) == '{"$object":{"$object":1}}'


def test_numpy_scalars_become_python_numbers() -> None:
    numpy = pytest.importorskip("numpy")
    back = plain_config({"n": numpy.int64(7), "x": numpy.float32(0.5), "b": numpy.bool_(True)})
    assert back == {"n": 7, "x": 0.5, "b": True}
    assert (type(back["n"]), type(back["x"])) == (int, float)


def test_an_older_service_answers_a_struct() -> None:
    message = runs_pb2.Run(run_id="r")
    message.config.update({"epochs": 3, "lr": 0.1})
    info = run_info_from_proto(message)
    assert info.config == {"epochs": 3.0, "lr": 0.1} and type(info.config["epochs"]) is float


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("lr=1", "config must be a dict, got str"),
        ({"": 1}, "config key '' is empty"),
        ({"a\x00": 1}, "config key 'a\\x00' contains a NUL character"),
        ({3: 1}, "config key must be a str, got int: 3"),
        (
            {"optim": {"betas": [0.9, {0.1}]}},
            "config['optim']['betas'][1] has unsupported type set; use None, bool, int, float, "
            "str, list, tuple or dict",
        ),
        ({"optim": {1: "x"}}, "config['optim'] has a key of type int (1); keys must be str"),
        (
            {"seed": 2**63},
            f"config['seed'] = {2**63} is outside the 64-bit integer range (-2**63 .. 2**63-1); "
            "store it as a str",
        ),
        (
            {"seed": [-(2**63) - 1]},
            f"config['seed'][0] = {-(2**63) - 1} is outside the 64-bit integer range "
            "(-2**63 .. 2**63-1); store it as a str",
        ),
        (
            {"data": b"bytes"},
            "config['data'] has unsupported type bytes; use None, bool, int, float, str, list, "
            "tuple or dict",
        ),
    ],
)
def test_bad_configs_name_the_entry(config: Any, message: str) -> None:
    with pytest.raises(stepstream.InvalidArgumentError, match=f"^{re.escape(message)}$"):
        config_json(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "must be a JSON object, got an array"),
        ("3", "must be a JSON object, got a number"),
        ('{"$float": "NaN"}', "must be a JSON object, got a number"),
        ('{"a": NaN}', "has the bare constant NaN; spell it {'$float': 'NaN'}"),
        ('{"a": {"$float": "nan"}}', "has {'$float': 'nan'}; the tag takes 'NaN', 'Infinity' or"),
        ('{"a": {"$object": 3}}', "has {'$object': ...} around a int; the tag wraps an object"),
        ('{"a": 9223372036854775808}', "has the integer 9223372036854775808 which is outside"),
        ('{"a": ', "is not JSON (Expecting value: line 1 column 7 (char 6))"),
    ],
)
def test_text_that_is_not_typed_json(text: str, message: str) -> None:
    with pytest.raises(configjson.TypedJSONError, match=f"^{re.escape(message)}"):
        configjson.loads(text)


def test_deep_text_is_too_deep_not_a_crash() -> None:
    with pytest.raises(configjson.TypedJSONTooDeep):
        configjson.loads('{"a":' * 100_000 + "1" + "}" * 100_000)


def _timestamp(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


def _status(code: grpc.StatusCode, message: str, reason: str) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="stepstream"))
    return status_pb2.Status(code=code.value[0], message=message, details=[detail])


def test_run_info_from_proto() -> None:
    message = runs_pb2.Run(
        project="vision",
        run_id="child",
        experiment="sweep",
        state=runs_pb2.RUN_STATE_FAILED,
        tags=["a", "b"],
        description="desc",
        current_incarnation_id="inc-2",
        failure_reason="RuntimeError('boom')",
        create_time=_timestamp(1_700_000_000),
    )
    message.config.update({"lr": 0.1})
    message.values.update({"best": 0.9})
    message.experiment_head = True
    message.url = "http://127.0.0.1:8081/runs/vision/child"
    message.incarnations.add(
        incarnation_id="inc-1",
        run_id="child",
        parent_incarnation_id="parent-inc",
        parent_run_id="parent",
        fork_step=100.5,
        origin=runs_pb2.INCARNATION_ORIGIN_FORKED,
        archived=True,
    )
    message.incarnations.add(
        incarnation_id="inc-2",
        run_id="child",
        parent_incarnation_id="inc-1",
        parent_run_id="child",
        fork_step=0.0,
        origin=runs_pb2.INCARNATION_ORIGIN_REWOUND,
    )
    info = run_info_from_proto(message)
    assert isinstance(info, stepstream.RunInfo)
    assert (info.run_id, info.project, info.experiment, info.state) == (
        "child",
        "vision",
        "sweep",
        "FAILED",
    )
    assert info.tags == ["a", "b"] and info.config == {"lr": 0.1}
    assert info.values == {"best": 0.9} and info.experiment_head
    assert (info.url, info.experiment_url) == ("http://127.0.0.1:8081/runs/vision/child", None)
    assert info.incarnation_id == "inc-2"
    assert info.failure_reason == "RuntimeError('boom')"
    assert info.create_time == datetime.datetime.fromtimestamp(
        1_700_000_000, tz=datetime.timezone.utc
    )
    assert info.update_time is None
    first, second = info.incarnations
    assert (first.origin, first.parent_run_id, first.fork_step, first.archived) == (
        "FORKED",
        "parent",
        100.5,
        True,
    )
    assert (second.origin, second.parent_incarnation_id, second.fork_step) == (
        "REWOUND",
        "inc-1",
        0.0,
    )


def test_run_info_defaults() -> None:
    message = runs_pb2.Run(run_id="r", state=runs_pb2.RUN_STATE_RUNNING)
    message.incarnations.add(incarnation_id="i", run_id="r", origin=1)
    info = run_info_from_proto(message)
    assert info.experiment is None and info.failure_reason is None and info.state == "RUNNING"
    assert (info.values, info.experiment_head, info.url, info.experiment_url) == (
        {},
        False,
        None,
        None,
    )
    (only,) = info.incarnations
    assert (only.parent_incarnation_id, only.parent_run_id, only.fork_step) == (None, None, None)


def test_series_summary_from_proto() -> None:
    summary = summary_from_proto(
        runs_pb2.SeriesSummary(
            name="loss",
            count=3,
            last_step=2.0,
            last=math.inf,
            min=0.1,
            max=math.inf,
            generation=2,
        )
    )
    assert summary == stepstream.SeriesSummary(
        name="loss",
        string_series=False,
        count=3,
        last_step=2.0,
        last=math.inf,
        min=0.1,
        max=math.inf,
        generation=2,
    )


def test_ingest_error_from_rejection() -> None:
    rejection = ingest_pb2.SeriesRejection(
        series="train/loss",
        reason="STEP_NOT_INCREASING",
        message="steps 3..5 are not above the floor 10",
        count=3,
        first_step=3,
        last_step=5,
        floor=10,
    )
    error = ingest_error_from_rejection(rejection, sequence=42)
    assert error == stepstream.IngestError(
        series="train/loss",
        reason="STEP_NOT_INCREASING",
        message="steps 3..5 are not above the floor 10",
        count=3,
        first_step=3.0,
        last_step=5.0,
        floor=10.0,
        sequence=42,
    )
    assert str(error) == (
        "STEP_NOT_INCREASING (series 'train/loss', 3 points): steps 3..5 are not above the floor 10"
    )


def test_ingest_error_from_batch_status() -> None:
    status = _status(grpc.StatusCode.FAILED_PRECONDITION, "run is stopped", "RUN_NOT_ACTIVE")
    error = ingest_error_from_status(status, sequence=7, count=500)
    assert (error.series, error.reason, error.message, error.count, error.sequence) == (
        "",
        "RUN_NOT_ACTIVE",
        "run is stopped",
        500,
        7,
    )
    assert math.isnan(error.first_step) and math.isnan(error.floor)
    bare = status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message="oops")
    assert ingest_error_from_status(bare, sequence=8, count=1).reason == "INTERNAL"
