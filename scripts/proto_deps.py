"""Copy the google/rpc protos our protos import (from googleapis-common-protos) for buf.

Usage: python scripts/proto_deps.py OUT_DIR
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import sysconfig

NEEDED = ["google/rpc/status.proto", "google/rpc/error_details.proto"]

if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1])
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    for rel in NEEDED:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(site / rel, out / rel)
