"""The `stepstream` command through real subprocesses against a real service: every command,
--json parsed, and the errors (unknown run, unreachable service, a bad argument) with their
exit codes."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import stepstream
from conftest import free_port
from served import address  # noqa: F401

STEPSTREAM = shutil.which("stepstream", path=str(Path(sys.executable).parent))


def cli(
    *args: str, at: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STEPSTREAM_ADDRESS"}
    if at is not None:
        env["STEPSTREAM_ADDRESS"] = at
    assert STEPSTREAM is not None, "the stepstream console script is not installed"
    return subprocess.run(
        [STEPSTREAM, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def logged(address: str) -> Iterator[str]:  # noqa: F811
    with stepstream.Run(
        "cli-run", address=address, experiment_name="cli-exp", config={"lr": 0.1}, tags=["t"]
    ) as run:
        for step in range(10):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        run.log_metrics({"loss": math.nan}, step=10)
        run.log_metrics({"loss": math.inf}, step=11)
        run.log_strings({"console": "hello"}, step=0)
    other = stepstream.Run("cli-open", address=address, experiment_name="cli-other")
    other.wait()
    yield address
    other.close()


def test_help_lists_every_command() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("runs", "series", "serve"):
        assert command in result.stdout


def test_runs_list_table_json_and_filters(logged: str) -> None:
    table = cli("runs", "list", at=logged)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "RUN_ID",
        "EXPERIMENT",
        "STATE",
        "CREATED",
        "TAGS",
    ]
    assert "cli-run" in table.stdout and "cli-open" in table.stdout
    result = cli("runs", "list", "--json", "--experiment", "cli-exp", at=logged)
    runs = json.loads(result.stdout)
    assert [(r["run_id"], r["state"], r["config"], r["tags"]) for r in runs] == [
        ("cli-run", "FINISHED", {"lr": 0.1}, ["t"])
    ]
    running = json.loads(cli("runs", "list", "--json", "--state", "running", at=logged).stdout)
    assert "cli-open" in {r["run_id"] for r in running}
    assert "cli-run" not in {r["run_id"] for r in running}


def test_runs_show(logged: str) -> None:
    result = cli("runs", "show", "cli-run", "--address", logged)
    assert result.returncode == 0, result.stderr
    for text in ("FINISHED", "lr = 0.1", "lineage", "CREATED", "loss", "console", "hello"):
        assert text in result.stdout
    document = json.loads(cli("runs", "show", "cli-run", "--json", at=logged).stdout)
    summary = {s["name"]: s for s in document["series"]}
    assert summary["loss"]["count"] == 12 and summary["loss"]["last"] == math.inf
    assert document["lineage"][0]["origin"] == "CREATED"


@pytest.mark.parametrize("name", ["run.json", "run.yaml", "run.parquet"])
def test_runs_export(logged: str, tmp_path: Path, name: str) -> None:
    result = cli("runs", "export", "cli-run", name, "--series", at=logged, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name
    document = stepstream.load_export(tmp_path / name)
    loss = next(s for s in document["series"] if s["name"] == "loss")
    assert loss["steps"] == [float(i) for i in range(12)]
    assert math.isnan(loss["values"][10]) and loss["values"][11] == math.inf
    assert document["state"] == "FINISHED"


def test_series_table_csv_json(logged: str) -> None:
    table = cli("series", "cli-run", "loss", at=logged)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["STEP", "VALUE", "TIMESTAMP"] and len(lines) == 13
    assert lines[-2].split()[:2] == ["10", "nan"] and lines[-1].split()[:2] == ["11", "inf"]
    rows = list(
        csv.reader(io.StringIO(cli("series", "cli-run", "loss", "--csv", at=logged).stdout))
    )
    assert rows[0] == ["step", "value", "timestamp"] and rows[1][:2] == ["0.0", "1.0"]
    points = json.loads(
        cli("series", "cli-run", "loss", "--json", "--max-points", "5", at=logged).stdout
    )
    assert points["kind"] == "float" and len(points["steps"]) <= 5
    assert any(math.isnan(v) for v in points["values"]) and math.inf in points["values"]
    strings = json.loads(cli("series", "cli-run", "console", "--json", at=logged).stdout)
    assert (strings["kind"], strings["values"]) == ("string", ["hello"])


def test_unknown_run_and_series_exit_4(logged: str) -> None:
    for args in (
        ("runs", "show", "nope"),
        ("runs", "export", "nope", "x.json"),
        ("series", "nope", "loss"),
    ):
        result = cli(*args, at=logged)
        assert result.returncode == 4, (args, result.stderr)
        assert result.stderr == "stepstream: run 'nope' not found in project 'default'\n"
    result = cli("series", "cli-run", "missing", at=logged)
    assert result.returncode == 4
    assert result.stderr == (
        "stepstream: run 'cli-run' has no series 'missing' (it has: console, loss)\n"
    )


def test_unreachable_service_exits_3() -> None:
    where = f"127.0.0.1:{free_port()}"
    result = cli("runs", "list", at=where)
    assert result.returncode == 3
    assert result.stderr.startswith(
        f"stepstream: cannot reach the stepstream service at {where} (UNAVAILABLE: "
    )
    assert result.stderr.endswith(
        "Is `stepstream serve` running there? Set --address or $STEPSTREAM_ADDRESS.\n"
    )


def test_bad_arguments_exit_2(logged: str) -> None:
    result = cli("series", "cli-run", "loss", "--max-points", "2", at=logged)
    assert result.returncode == 2
    assert result.stderr == "stepstream: max_points must be at least 5, got 2\n"
    result = cli("runs", "show", "bad id", at=logged)
    assert result.returncode == 2
    assert result.stderr == (
        "stepstream: RUN 'bad id' must be 1-128 characters of [A-Za-z0-9._:-], starting with a"
        " letter or digit\n"
    )
    assert cli("runs", "list", "--state", "LOST").returncode == 2  # argparse's own usage error


def test_serve_is_handed_to_the_service() -> None:
    result = cli("serve", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: stepstream serve")
    assert "--data-dir" in result.stdout


def test_serve_without_the_service_says_how_to_install_it() -> None:
    code = (
        "import sys; sys.modules['stepstream_server'] = None\n"  # as if not installed
        "from stepstream.cli import main; main(['serve'])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == (
        "stepstream: `stepstream serve` needs the service, which is not installed here:"
        " pip install stepstream-server (from a checkout: pip install . , or make run)\n"
    )
