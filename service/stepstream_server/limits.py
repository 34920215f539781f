"""Every bound the service puts on a request, in one place (the rules the client shares, such
as the points per batch and the name rule, live in `stepstream.rules` and are re-exported here).

Each bound is checked where the request is first seen and answered `INVALID_ARGUMENT` with its
own reason and the limit in the ErrorInfo metadata (`limit`). The ingest bounds are chosen so
that a batch the client builds (at most `MAX_BATCH_POINTS` points, every entry holding at least
one point) can never exceed them, and so that decoding and judging one maximal batch never holds
the event loop long: large requests are parsed, and large batches checked, decoded and judged,
off the loop (`OFFLOAD_ENTRIES`, wire.py).
"""

from __future__ import annotations

from stepstream.rules import MAX_BATCH_NAME_BYTES as MAX_BATCH_NAME_BYTES
from stepstream.rules import MAX_BATCH_POINTS as MAX_BATCH_POINTS

# -- ingest: one PointBatch ------------------------------------------------------------------

# Points (values) in one batch, over every entry: MAX_BATCH_POINTS, from stepstream.rules.
# float_series + string_series + float_blocks messages in one batch; counted on the raw bytes
# before the batch is parsed, so a request of millions of empty entries costs a bounded scan.
MAX_BATCH_ENTRIES = 100_000
# Series names in one FloatBlock, and series (entries plus block names) in one batch.
MAX_BLOCK_NAMES = 100_000
MAX_BATCH_SERIES = 100_000
# UTF-8 bytes of every series name in one batch, together: MAX_BATCH_NAME_BYTES, from
# stepstream.rules (the client cuts its batches to stay within it).
# A batch with more series than this is checked and decoded on a thread, and a group with more
# entries judged on one, not on the event loop (decode.py, judge.py).
OFFLOAD_ENTRIES = 2_000

# -- runs: config, values, tags --------------------------------------------------------------

# Nesting of a config (or single values) document: a scalar is depth 0, {"a": 1} depth 1.
MAX_CONFIG_DEPTH = 20
# The config (or single values) of one request, encoded as compact JSON.
MAX_CONFIG_BYTES = 1024 * 1024
# Tags of a run, and the UTF-8 bytes of one tag.
MAX_TAGS = 1_000
MAX_TAG_BYTES = 256
# A run's description, and a failure reason.
MAX_TEXT_BYTES = 64 * 1024

# -- reading ---------------------------------------------------------------------------------

# ListSeries page size: 0 means the default; larger values are lowered to the maximum (AIP-158).
DEFAULT_PAGE_SIZE = 1_000
MAX_PAGE_SIZE = 10_000

# -- memory ----------------------------------------------------------------------------------

# Series IDs the SQLite store keeps in memory (least recently written forgotten first; a miss
# costs one indexed read). About 200 bytes each: 100,000 is ~20 MB whatever the runs' width.
SERIES_ID_CACHE = 100_000
