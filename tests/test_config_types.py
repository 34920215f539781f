"""Exact config types (SPEC glossary "attribute"): ints, floats (NaN and +-Inf), bools, None,
strs, nested lists and mappings round-trip through create, update, save, rewind merge, fork with
inherit_configs, get, export and the web view, on both stores; older clients that send a Struct
keep working; typed JSON that breaks the rules gets its precise error and changes nothing."""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import stepstream
import test_seeds
from google.protobuf import struct_pb2
from stepstream import configjson
from stepstream.v1 import runs_pb2
from stepstream_server import limits
from stepstream_server.config import Settings
from test_bounds import nested, rpc_info

pytestmark = pytest.mark.stores("sqlite", "postgresql")
address = test_seeds.address  # the real service (both stores), its web view on
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Every type a config keeps; == alone cannot tell 3 from 3.0 or NaN from NaN: see same().
CONFIG: dict[str, Any] = {
    "batch_size": 64,
    "epochs": 3,
    "lr": 3e-4,
    "warmup": 1.0,
    "negative_zero": -0.0,
    "seed": -(2**63),
    "max_id": 2**63 - 1,
    "diverged": math.nan,
    "clip": math.inf,
    "floor": -math.inf,
    "pretrained": True,
    "frozen": False,
    "resume": None,
    "name": "resnet",
    "nan_text": "NaN",
    "layers": [64, 128.0, None, [True, "x", [math.nan]]],
    "optim": {"betas": [0.9, 0.999], "eps": 1e-8, "steps": 10, "deep": {"x": {"y": [1, 2]}}},
    "empty": {},
    "none_list": [],
    "$float": "NaN",  # a mapping shaped like the encoding's own tags stays a mapping
    "tagged": {"$object": {"$float": 1}},
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, web_address="127.0.0.1:0")


def same(a: Any, b: Any) -> bool:
    """Equal with the same types throughout, NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def test_same_tells_the_types_apart() -> None:
    assert same(CONFIG, json.loads(json.dumps(CONFIG)))
    assert not same({"a": 3}, {"a": 3.0}) and not same({"a": [1]}, {"a": [True]})
    assert not same({"a": 0.0}, {"a": -0.0})


def test_create_get_and_the_handle_keep_every_type(address: str) -> None:
    with stepstream.Run("typed", address=address, config=CONFIG) as run:
        assert same(run.config, CONFIG)
        assert same(run.get_run().config, CONFIG)
    assert same(stepstream.get_run("typed", address=address).config, CONFIG)
    assert same(stepstream.list_runs(address=address)[0].config, CONFIG)
    with stepstream.Run("typed", address=address, resume=True) as again:
        assert same(again.config, CONFIG)


def test_updates_save_and_single_values_keep_types(address: str) -> None:
    with stepstream.Run("updates", address=address, config={"lr": 0.1}) as run:
        run.log_configs({"epochs": 3, "warmup": 2.0, "grid": [1, 2.5, math.inf]})
        run.log_metric("best_epoch", 7, single_value=True)
        run.log_metric("best_loss", math.nan, single_value=True)
        run.wait()
        run.config["batch"] = 64
        run.config["dropout"] = None
        run.save()
        expected = {
            "lr": 0.1,
            "epochs": 3,
            "warmup": 2.0,
            "grid": [1, 2.5, math.inf],
            "batch": 64,
            "dropout": None,
        }
        assert same(run.config, expected)
        info = stepstream.get_run("updates", address=address)
        assert same(info.config, expected)
        assert same(info.values, {"best_epoch": 7, "best_loss": math.nan})
        run.config["epochs"] = 3.0  # == 3, but another type: save() sends it
        run.save()
        assert type(stepstream.get_run("updates", address=address).config["epochs"]) is float


def test_rewind_merge_and_fork_inherit_keep_types(address: str) -> None:
    with stepstream.Run("parent", address=address, config={"epochs": 3, "lr": 0.5}) as run:
        run.log_metric("best", 4, single_value=True)
        run.log_metrics({"loss": 1.0}, step=0)
        run.log_metrics({"loss": 0.5}, step=1)
    with stepstream.Run(
        address=address, resume_from="parent?_step=0", config={"warmup": 10, "nan": math.nan}
    ) as rewound:
        merged = {"epochs": 3, "lr": 0.5, "warmup": 10, "nan": math.nan}
        assert same(rewound.config, merged)
    with stepstream.Run(
        "child", address=address, fork_from="parent?_step=0", inherit_configs=True
    ) as child:
        assert same(child.config, merged)
        assert same(child.values, {"best": 4})
    assert same(stepstream.get_run("child", address=address).config, merged)


def test_exports_keep_types(address: str, tmp_path: Path) -> None:
    with stepstream.Run("exported", address=address, config=CONFIG) as run:
        run.log_metric("best_epoch", 7, single_value=True)
        run.log_metrics({"loss": 1.0}, step=0)
    handle = stepstream.get_run("exported", address=address)
    for name in ("run.json", "run.yaml", "run.parquet"):
        if name.endswith(".parquet"):
            pytest.importorskip("pyarrow")
        document = stepstream.load_export(handle.export(tmp_path / name))
        assert same(document["config"], CONFIG), name
        assert same(document["values"], {"best_epoch": 7}), name


def test_the_web_view_shows_the_types(address: str) -> None:
    config = {"batch_size": 64, "warmup": 64.0, "loss": math.nan, "text": "NaN", "on": True}
    with stepstream.Run("web", address=address, config=config) as run:
        url = run.get_run_url()
    assert url is not None
    with OPENER.open(url, timeout=30) as response:
        page = html.unescape(response.read().decode())
    assert '"batch_size": 64,' in page and '"warmup": 64.0,' in page
    assert '"loss": NaN,' in page and '"text": "NaN",' in page
    index = url.split("/runs/")[0] + "/?config=batch_size,warmup,loss,on"
    with OPENER.open(index, timeout=30) as response:
        table = response.read().decode()
    cells = re.findall(r'<td data-sort="[^"]*">([^<]*)</td>', table)
    assert cells[-4:] == ["64", "64.0", "NaN", "true"]


def test_bad_config_is_refused_before_anything_is_sent(address: str) -> None:
    with pytest.raises(
        stepstream.InvalidArgumentError,
        match=re.escape("config['optim'] has a key of type int (1); keys must be str"),
    ):
        stepstream.Run("bad-key", address=address, config={"optim": {1: "x"}})
    with pytest.raises(stepstream.RPCError) as err:
        stepstream.get_run("bad-key", address=address)
    assert err.value.reason == "RUN_NOT_FOUND"
    with stepstream.Run("deep", address=address) as run:
        with pytest.raises(
            stepstream.InvalidArgumentError,
            match=re.escape("config['seed'] = 18446744073709551616 is outside the 64-bit"),
        ):
            run.log_configs({"seed": 2**64})
        with pytest.raises(stepstream.RPCError) as too_deep:
            run.config["deep"] = nested(limits.MAX_CONFIG_DEPTH)
            run.save()
        assert too_deep.value.reason == "CONFIG_TOO_DEEP"
        assert too_deep.value.metadata == {
            "field": "config",
            "depth": str(limits.MAX_CONFIG_DEPTH + 1),
            "limit": str(limits.MAX_CONFIG_DEPTH),
        }


# ---- the wire: old clients' Struct, and typed JSON that breaks the rules -------------------


def struct(document: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(document)
    return message


async def test_an_old_client_sending_a_struct_keeps_working(runs: Any) -> None:
    created = await runs.CreateRun(
        runs_pb2.CreateRunRequest(run_id="old", config=struct({"epochs": 3, "lr": 0.1}))
    )
    # It reads back what it sent: a Struct, whose numbers are doubles.
    assert dict(created.run.config) == {"epochs": 3.0, "lr": 0.1}
    assert same(configjson.loads(created.run.config_json), {"epochs": 3.0, "lr": 0.1})
    await runs.UpdateRunConfig(
        runs_pb2.UpdateRunConfigRequest(
            run_id="old", config=struct({"batch": 64}), values=struct({"best": 0.5})
        )
    )
    diverged = struct_pb2.Struct()
    diverged.fields["loss"].number_value = math.nan  # a Struct can carry NaN: it is kept
    rewound = await runs.RewindRun(runs_pb2.RewindRunRequest(run_id="old", step=0, config=diverged))
    config = configjson.loads(rewound.run.config_json)
    assert same(config, {"epochs": 3.0, "lr": 0.1, "batch": 64.0, "loss": math.nan})
    assert math.isnan(rewound.run.config.fields["loss"].number_value)
    assert dict(rewound.run.values) == {"best": 0.5}
    # A new client's typed JSON beside an old client's Struct: the typed JSON is used.
    both = await runs.UpdateRunConfig(
        runs_pb2.UpdateRunConfigRequest(
            run_id="old", config=struct({"epochs": 99}), config_json='{"epochs":4}'
        )
    )
    assert configjson.loads(both.run.config_json)["epochs"] == 4
    assert both.run.config.fields["epochs"].number_value == 4.0


def _requests(text: str) -> list[Any]:
    return [
        lambda runs: runs.CreateRun(runs_pb2.CreateRunRequest(run_id="n", config_json=text)),
        lambda runs: runs.UpdateRunConfig(
            runs_pb2.UpdateRunConfigRequest(run_id="r1", config_json=text)
        ),
        lambda runs: runs.RewindRun(
            runs_pb2.RewindRunRequest(run_id="r1", step=1, config_json=text)
        ),
    ]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["create", "update", "rewind"])
@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ('{"lr": NaN}', "has the bare constant NaN; spell it {'$float': 'NaN'}"),
        ("[1, 2]", "must be a JSON object, got an array"),
        ('{"lr": 0.1', "is not JSON (Expecting ',' delimiter: line 1 column 11 (char 10))"),
        (
            '{"x": {"$float": "nan"}}',
            "has {'$float': 'nan'}; the tag takes 'NaN', 'Infinity' or '-Infinity'",
        ),
        (
            '{"x": 9223372036854775808}',
            "has the integer 9223372036854775808 which is outside the 64-bit integer range "
            "(-2**63 .. 2**63-1)",
        ),
    ],
)
async def test_typed_json_that_breaks_the_rules(
    runs: Any, which: int, text: str, detail: str
) -> None:
    await runs.CreateRun(runs_pb2.CreateRunRequest(run_id="r1", config_json='{"lr":0.1}'))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _requests(text)[which](runs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f"INVALID_CONFIG: config_json {detail}"
    info = rpc_info(err.value)
    assert (info.reason, dict(info.metadata)) == (
        "INVALID_CONFIG",
        {"field": "config_json", "detail": detail},
    )
    await _unchanged(runs)


async def _unchanged(runs: Any) -> None:
    run = (await runs.GetRun(runs_pb2.GetRunRequest(run_id="r1"))).run
    assert (run.config_json, len(run.incarnations)) == ('{"lr":0.1}', 1)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await runs.GetRun(runs_pb2.GetRunRequest(run_id="n"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("which", [0, 1, 2], ids=["create", "update", "rewind"])
async def test_typed_json_bounds(runs: Any, which: int) -> None:
    await runs.CreateRun(runs_pb2.CreateRunRequest(run_id="r1", config_json='{"lr":0.1}'))
    depth = limits.MAX_CONFIG_DEPTH
    deep = configjson.dumps(nested(depth + 1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _requests(deep)[which](runs)
    assert (rpc_info(err.value).reason, dict(rpc_info(err.value).metadata)) == (
        "CONFIG_TOO_DEEP",
        {"field": "config", "depth": str(depth + 1), "limit": str(depth)},
    )
    # Far past what Python's JSON reader can nest: the same reason, never a crash.
    abyss = '{"a":' * 100_000 + "1" + "}" * 100_000
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _requests(abyss)[which](runs)
    assert (rpc_info(err.value).reason, dict(rpc_info(err.value).metadata)) == (
        "CONFIG_TOO_DEEP",
        {"field": "config", "depth": f"more than {depth}", "limit": str(depth)},
    )
    big = configjson.dumps({"big": "x" * limits.MAX_CONFIG_BYTES})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _requests(big)[which](runs)
    size = len(big.encode())
    assert (rpc_info(err.value).reason, dict(rpc_info(err.value).metadata)) == (
        "CONFIG_TOO_LARGE",
        {"field": "config", "size": str(size), "limit": str(limits.MAX_CONFIG_BYTES)},
    )
    bad_key = '{"": 1}'
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _requests(bad_key)[which](runs)
    assert (rpc_info(err.value).reason, dict(rpc_info(err.value).metadata)) == (
        "INVALID_NAME",
        {"field": "config key"},
    )
    await _unchanged(runs)
    # Within the bounds, the same request goes through with its types.
    ok = await _requests(configjson.dumps({"deep": nested(depth - 1), "n": 1}))[which](runs)
    assert same(configjson.loads(ok.run.config_json)["n"], 1)


async def test_typed_single_values_over_the_wire(runs: Any) -> None:
    await runs.CreateRun(runs_pb2.CreateRunRequest(run_id="r1"))
    text = configjson.dumps({"best": 7, "loss": -math.inf})
    done = await runs.UpdateRunConfig(
        runs_pb2.UpdateRunConfigRequest(run_id="r1", values_json=text)
    )
    assert same(configjson.loads(done.run.values_json), {"best": 7, "loss": -math.inf})
    assert dict(done.run.values) == {"best": 7.0, "loss": -math.inf}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await runs.UpdateRunConfig(runs_pb2.UpdateRunConfigRequest(run_id="r1", values_json="7"))
    assert (rpc_info(err.value).reason, dict(rpc_info(err.value).metadata)) == (
        "INVALID_CONFIG",
        {"field": "values_json", "detail": "must be a JSON object, got a number"},
    )
