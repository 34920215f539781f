"""CPython's runtime tuned for a service that keeps many young objects alive for a while and
runs Python on more than one thread: the garbage collector and the GIL's switch interval.

Every queued batch is thousands of tracked objects (its entries, their floors, the judge's
dicts) that live for a group commit or two. With CPython's default thresholds (700, 10, 10)
they are scanned by every young collection they survive, promoted, and then make full
collections frequent; at half load of the latency bench, collections of 20-500 ms landed in
the acknowledgement path, and the full ones scanned everything startup had made (modules,
protobuf descriptors, compiled code: never garbage). `tune()`, called once the service is up,
moves what exists then out of every later collection (`gc.freeze`) and collects the young
generation after 20,000 allocations instead of 700. Cycles are still collected; a young
generation of 20,000 objects is a few MiB at most. Measured in docs/scaling.md.

A wide batch is checked and decoded on a thread (decode.py) while the event loop serves every
other stream, and the store commits on threads. A thread that wants the GIL back after a system
call waits for the holder to drop it, up to the switch interval (5 ms by default): the event loop
waits so after every `epoll` while a batch of 100,000 series decodes, and a light stream's round
trip is tens of such waits. `tune()` makes the interval 0.5 ms (docs/faults.md section 5).
"""

from __future__ import annotations

import gc
import sys

# (young, middle, old): the young generation is collected after this many allocations net of
# deallocations; each older one after this many collections of the one before.
THRESHOLDS = (20_000, 20, 20)
# Seconds a thread holds the GIL while another waits for it (sys.setswitchinterval).
SWITCH_INTERVAL = 0.0005


def tune() -> None:
    """Freeze what exists now out of the collector, raise the thresholds, and shorten the
    GIL's switch interval."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL)
