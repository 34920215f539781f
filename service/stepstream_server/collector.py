"""CPython's garbage collector, tuned for a service that keeps many young objects alive for a
while.

Every queued batch is thousands of tracked objects (its entries, their floors, the judge's
dicts) that live for a group commit or two. With CPython's default thresholds (700, 10, 10)
they are scanned by every young collection they survive, promoted, and then make full
collections frequent; at half load of the latency bench, collections of 20-500 ms landed in
the acknowledgement path, and the full ones scanned everything startup had made (modules,
protobuf descriptors, compiled code: never garbage). `tune()`, called once the service is up,
moves what exists then out of every later collection (`gc.freeze`) and collects the young
generation after 20,000 allocations instead of 700. Cycles are still collected; a young
generation of 20,000 objects is a few MiB at most. Measured in docs/scaling.md.
"""

from __future__ import annotations

import gc

# (young, middle, old): the young generation is collected after this many allocations net of
# deallocations; each older one after this many collections of the one before.
THRESHOLDS = (20_000, 20, 20)


def tune() -> None:
    """Freeze what exists now out of the collector and raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
