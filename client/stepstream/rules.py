"""The wire rules the service and every client share: ID and name patterns, limits, keys.

The service (`stepstream_server.validation`, `decode`, `servicer`, `reading`) and this client
(`stepstream._validate`, `_run`) both import them from here, and the `.proto` comments state the
same values for clients in other languages. Each `*_problem` function says why a value breaks a
rule (a phrase to put after the value in a message), or returns None when it is valid.
"""

from __future__ import annotations

import re

# project, run_id and writer_id: a letter or digit first, then [A-Za-z0-9._:-], 128 at most.
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
ID_RULE = "1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit"
# Series and attribute names, config keys, tags, experiment names.
MAX_NAME_BYTES = 1024
DEFAULT_PROJECT = "default"
# The attribute that holds a run's description (a config entry under this key sets it).
DESCRIPTION_KEY = "sys/description"
# Points (values) in one PointBatch, float_series, string_series and float_blocks together.
MAX_BATCH_POINTS = 100_000
# UTF-8 bytes of every series name in one PointBatch together (entries' names and blocks'
# names, each time it appears). The client cuts batches to stay within it (`_name_bytes`).
MAX_BATCH_NAME_BYTES = 8 * 1024 * 1024
# Responses one AppendPoints stream may owe before the service stops reading its requests.
MAX_INFLIGHT_PER_STREAM = 64
# Points in one ReadSeriesResponse message.
POINTS_PER_MESSAGE = 65_536
# Points each downsampling bucket keeps at most (first, last, min, max, first NaN); the
# smallest ReadSeriesRequest.max_points.
MIN_DOWNSAMPLE = 5

_ID = re.compile(ID_PATTERN)


def id_problem(value: str) -> str | None:
    """Why `value` is not a valid project, run or writer ID, or None when it is."""
    return None if _ID.fullmatch(value) else f"must be {ID_RULE}"


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid series or attribute name, or None when it is."""
    if not name:
        return "is empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return f"is not valid UTF-8 ({exc.reason})"
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long; the limit is {MAX_NAME_BYTES}"
    if "\x00" in name:
        return "contains a NUL character"
    return None


# A token's lifetime as `stepstream tokens create --expires` and `create_token` take it.
_DURATION = re.compile(r"([0-9]+)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """ "30d", "12h", "90m", "3600s", "2w" -> seconds; ValueError for anything else."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(
            f"--expires must be a positive number with a unit s, m, h, d or w (e.g. 30d), "
            f"got {text!r}"
        )
    return int(match.group(1)) * _SECONDS[match.group(2)]
