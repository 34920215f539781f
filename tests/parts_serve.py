"""`stepstream serve` for the tests of batches committed in parts (test_parts.py): it cuts
every batch of more than 7 points or 3 entries into parts, and, with PARTS_STOP_AFTER=K, stops
dead right after the K-th part that does not finish its batch is durable (it writes
PARTS_MARKER, then blocks its event loop), so that the test can kill -9 it between parts.
The seam is the worker's limits and the moment after a commit; the parts logic is the real one.
The seam is set only when this file runs as a program: test_parts.py imports `SMALL` from it,
and patching on import cut every batch of every later test in the same pytest process."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from stepstream_server import cli, ingest

SMALL = {"max_part_points": 7, "max_part_entries": 3, "always_cut": True}

_init = ingest.IngestWorker.__init__
_part_landed = ingest.IngestWorker._part_landed
_landed = 0


def _small_init(self: ingest.IngestWorker, *args: Any, limits: Any = None, **kw: Any) -> None:
    _init(self, *args, limits=replace(limits or ingest.WorkerLimits(), **SMALL), **kw)


def _stopping_part_landed(self: ingest.IngestWorker, item: Any, outcome: Any) -> int:
    global _landed
    accepted = _part_landed(self, item, outcome)
    stop_after = int(os.environ.get("PARTS_STOP_AFTER", "0"))
    if stop_after and not item.future.done():  # a part landed, its batch is not finished
        _landed += 1
        if _landed == stop_after:
            Path(os.environ["PARTS_MARKER"]).write_text("between parts")
            time.sleep(3600)  # the test kills the process now
    return accepted


if __name__ == "__main__":
    ingest.IngestWorker.__init__ = _small_init  # type: ignore[method-assign]
    ingest.IngestWorker._part_landed = _stopping_part_landed  # type: ignore[method-assign]
    cli.main()
