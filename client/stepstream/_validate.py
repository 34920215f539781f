"""Local argument checks: each raises InvalidArgumentError naming the offending field."""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from ._exceptions import InvalidArgumentError
from .rules import ID_RULE, id_problem, name_problem


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_name(name: object, what: str) -> str:
    """Check a series or attribute name (`stepstream.rules.name_problem`).

    `what` names the field in the message, e.g. "series name" or "config key".
    """
    if not isinstance(name, str):
        raise InvalidArgumentError(f"{what} must be a str, got {type(name).__name__}: {name!r}")
    problem = name_problem(name)
    if problem is not None:
        raise InvalidArgumentError(f"{what} {_shorten(name)!r} {problem}")
    return name


def check_id(value: object, what: str) -> str:
    """Check a project, run or writer ID (`stepstream.rules.id_problem`)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a str, got {type(value).__name__}: {value!r}")
    problem = id_problem(value)
    if problem is not None:
        raise InvalidArgumentError(f"{what} {_shorten(value)!r} {problem}")
    return value


def check_real(value: object, what: str) -> float:
    """Return `value` as a finite float, or raise naming `what` ("step", "timestamp", ...)."""
    # Exact float and int first: the common case, without the (slower) ABC check.
    real = type(value) is float or type(value) is int
    if real or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        number = float(value)  # type: ignore[arg-type]
    else:
        raise InvalidArgumentError(
            f"{what} must be a real number, got {type(value).__name__}: {_shorten(repr(value))}"
        )
    if not math.isfinite(number):
        raise InvalidArgumentError(f"{what} must be finite, got {number!r}")
    return number


def check_positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{what} must be a positive int, got {value!r}")
    return value


def check_positive_float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidArgumentError(f"{what} must be a positive number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{what} must be finite, got {value!r}")
    return float(value)


def check_tags(tags: Any, what: str = "tags") -> list[str]:
    """Accept one tag (a str) or an iterable of tags; each a non-empty str."""
    if tags is None:
        return []
    if isinstance(tags, str):
        items = [tags]
    elif isinstance(tags, (bytes, bytearray)) or not hasattr(tags, "__iter__"):
        raise InvalidArgumentError(
            f"{what} must be a str or an iterable of str, got {type(tags).__name__}"
        )
    else:
        items = list(tags)
    for tag in items:
        check_name(tag, f"tag in {what}")
    return items


RUN_MOMENT_FORMAT = "'<run_id>?_step=<N>'"
RUN_MOMENT_EXAMPLE = "'my-run?_step=200'"
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_run_moment(value: object, what: str) -> tuple[str, float]:
    """Parse W&B's `fork_from` / `resume_from` string `"<run_id>?_step=<N>"`.

    Exactly one key, `_step`; N a finite decimal number (fractional and negative allowed, like
    every step). Returns (run_id, step); raises InvalidArgumentError quoting the expected
    format and saying what is wrong.
    """
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"{what} must be a str {RUN_MOMENT_FORMAT} (e.g. {RUN_MOMENT_EXAMPLE}), "
            f"got {type(value).__name__}: {_shorten(repr(value))}"
        )

    def bad(detail: str) -> InvalidArgumentError:
        return InvalidArgumentError(
            f"{what} {_shorten(value)!r} is not {RUN_MOMENT_FORMAT} "
            f"(e.g. {RUN_MOMENT_EXAMPLE}): {detail}"
        )

    run_id, mark, query = value.partition("?")
    if not mark:
        raise bad("there is no '?_step=<N>' after the run ID")
    if not run_id:
        raise bad("the run ID before '?' is empty")
    if id_problem(run_id) is not None:
        raise bad(f"the run ID {_shorten(run_id)!r} must be {ID_RULE}")
    if not query:
        raise bad("nothing follows '?'")
    pairs = query.split("&")
    keys = [pair.partition("=")[0] for pair in pairs]
    if len(pairs) > 1:
        quoted = ", ".join(repr(_shorten(key, 20)) for key in keys)
        raise bad(f"it has {len(pairs)} keys ({quoted}); exactly one, _step, is allowed")
    key, _, number = query.partition("=")
    if key != "_step":
        raise bad(f"the key must be _step, got {_shorten(key)!r}")
    if not number:
        raise bad("_step has no value")
    if not _NUMBER_RE.fullmatch(number):
        lowered = number.lower().lstrip("+-")
        if lowered in ("inf", "infinity", "nan"):
            raise bad(f"_step must be finite, got {_shorten(number)!r}")
        raise bad(f"_step must be a number, got {_shorten(number)!r}")
    step = float(number)
    if not math.isfinite(step):  # e.g. 1e999
        raise bad(f"_step must be finite, got {_shorten(number)!r}")
    return run_id, step
