"""Generate Python code and type stubs for protos/stepstream/v1 into a directory.

Usage: python scripts/gen_protos.py OUT_DIR

`make protos` writes into client/ (the committed code); the drift test writes into a temporary
directory and compares.
"""

from __future__ import annotations

import pathlib
import sys
import sysconfig

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc for every stepstream proto; return the .proto files it compiled."""
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(PROTOS.glob("stepstream/v1/*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    site = pathlib.Path(sysconfig.get_paths()["purelib"])  # google/rpc/*.proto live here
    bindir = pathlib.Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"-I{site}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(s.relative_to(PROTOS)) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = out / "stepstream" / "v1"
    (package / "__init__.py").write_text(
        '"""Generated protobuf and gRPC code for stepstream.v1."""\n'
    )
    (package / "py.typed").touch()
    return sources


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "client"
    for src in generate(target):
        print(f"generated {src.relative_to(PROTOS)} -> {target}")
