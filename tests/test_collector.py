"""`stepstream serve` tunes CPython's runtime once it is up (collector.py): what startup made
is frozen out of every later collection, the young generation is collected less often, and the
GIL's switch interval is shorter. Checked in a fresh interpreter, so this test process keeps its
own settings."""

from __future__ import annotations

import json
import subprocess
import sys

from stepstream_server import collector

PROBE = """
import gc, json, sys
from stepstream_server import collector
before = gc.get_freeze_count()
interval = sys.getswitchinterval()
collector.tune()
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(),
                  "thresholds": gc.get_threshold(), "interval": [interval, sys.getswitchinterval()]}))
"""


def test_tune_freezes_startup_objects_raises_the_thresholds_and_shortens_the_switch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    found = json.loads(done.stdout)
    assert found["before"] == 0 and found["frozen"] > 1_000
    assert tuple(found["thresholds"]) == collector.THRESHOLDS
    assert found["interval"] == [0.005, collector.SWITCH_INTERVAL]
