"""The committed generated code matches protos/ (regenerate with `make protos`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    committed = ROOT / "client" / "stepstream" / "v1"
    fresh = tmp_path / "stepstream" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.is_file())
    assert names == sorted(p.name for p in committed.iterdir() if p.is_file())
    drifted = [n for n in names if (fresh / n).read_bytes() != (committed / n).read_bytes()]
    assert not drifted, f"generated code is stale, run `make protos`: {drifted}"


def test_buf_lint_passes(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "proto_deps.py"),
            str(ROOT / "build" / "protodeps"),
        ],
        check=True,
    )
    buf = Path(sys.executable).parent / "buf"
    result = subprocess.run([str(buf), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
