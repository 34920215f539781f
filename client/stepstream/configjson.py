"""Typed JSON: how a run's config and single values travel (`config_json`, `values_json` in
runs.proto), shared by the service and this client like `rules`.

A protobuf Struct holds every number as a double, so `{"epochs": 3}` came back as 3.0 and NaN
could not be written at all. Typed JSON is a JSON object (RFC 8259, UTF-8) that keeps each
value's type:

- an integer (a JSON number without fraction or exponent, e.g. `3`) is an int, at most 64 bits
  signed; any other number (`3.0`, `1e-08`) is a float, so a whole float keeps its `.0`;
- a non-finite float is the one-key object `{"$float": "NaN"}`, `{"$float": "Infinity"}` or
  `{"$float": "-Infinity"}`;
- a mapping that is itself exactly one key `"$float"` or `"$object"` is wrapped as
  `{"$object": {...}}`, so no user mapping is ever read as a tag;
- true/false, null, strings, arrays and every other object are themselves.

`dumps` writes a document already made of dict, list, str, int, float, bool and None (the
client checks what a user gives first); `loads` reads one back, raising TypedJSONError (a
ValueError) for text that breaks these rules.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

FLOAT_TAG = "$float"
OBJECT_TAG = "$object"
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class TypedJSONError(ValueError):
    """Text that is not typed JSON; the message says why (a phrase after the field name)."""


class TypedJSONTooDeep(TypedJSONError):
    """Nested deeper than Python can read (far past any config bound)."""


def int_problem(value: int) -> str | None:
    """Why an int cannot travel as typed JSON, or None."""
    if INT_MIN <= value <= INT_MAX:
        return None
    return "is outside the 64-bit integer range (-2**63 .. 2**63-1)"


def _spelling(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _tag(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {FLOAT_TAG: _spelling(value)}
    if isinstance(value, dict):
        out = {key: _tag(item) for key, item in value.items()}
        return {OBJECT_TAG: out} if len(out) == 1 and next(iter(out)) in _TAGS else out
    if isinstance(value, list):
        return [_tag(item) for item in value]
    return value


_TAGS = (FLOAT_TAG, OBJECT_TAG)


def dumps(document: Mapping[str, Any]) -> str:
    """`document` as typed JSON text (compact)."""
    return json.dumps(
        _tag(dict(document)), allow_nan=False, ensure_ascii=False, separators=(",", ":")
    )


def _reject_constant(name: str) -> Any:
    raise TypedJSONError(f"has the bare constant {name}; spell it {{{FLOAT_TAG!r}: {name!r}}}")


def _untag(value: Any, *, wrapped: bool = False) -> Any:
    if isinstance(value, dict):
        if not wrapped and len(value) == 1:
            key, inner = next(iter(value.items()))
            if key == FLOAT_TAG:
                if not isinstance(inner, str) or inner not in _NONFINITE:
                    raise TypedJSONError(
                        f"has {{{FLOAT_TAG!r}: {inner!r}}}; the tag takes 'NaN', 'Infinity' "
                        "or '-Infinity'"
                    )
                return _NONFINITE[inner]
            if key == OBJECT_TAG:
                if not isinstance(inner, dict):
                    raise TypedJSONError(
                        f"has {{{OBJECT_TAG!r}: ...}} around a {type(inner).__name__}; the tag "
                        "wraps an object"
                    )
                return _untag(inner, wrapped=True)
        return {key: _untag(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_untag(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        problem = int_problem(value)
        if problem is not None:
            raise TypedJSONError(f"has the integer {value} which {problem}")
    return value


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def loads(text: str) -> dict[str, Any]:
    """The document typed JSON `text` holds (an object at the top)."""
    try:
        document = _untag(json.loads(text, parse_constant=_reject_constant))
    except RecursionError:
        raise TypedJSONTooDeep("is nested too deep to read") from None
    except TypedJSONError:
        raise
    except ValueError as exc:  # json.JSONDecodeError, or an integer of thousands of digits
        raise TypedJSONError(f"is not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise TypedJSONError(f"must be a JSON object, got {_json_kind(document)}")
    return document
