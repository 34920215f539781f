"""Name rules shared by every entry point (SPEC §1)."""

from __future__ import annotations

import re

from .errors import ServiceError, invalid

MAX_NAME_BYTES = 1024
DEFAULT_PROJECT = "default"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
ID_RULE = "1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit"


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid series or attribute name, or None when it is."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size == 0:
        return "is empty"
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long; the limit is {MAX_NAME_BYTES}"
    if "\x00" in name:
        return "contains a NUL character"
    return None


def check_name(field: str, name: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise invalid("INVALID_NAME", f"{field} {name[:64]!r} {problem}", field=field)
    return name


def check_id(field: str, value: str, reason: str) -> str:
    if not _ID.fullmatch(value):
        raise invalid(
            reason, f"{field} {value[:140]!r} must be {ID_RULE}", field=field, value=value[:140]
        )
    return value


def project_of(project: str) -> str:
    return check_id("project", project or DEFAULT_PROJECT, "INVALID_PROJECT")


def run_id_of(run_id: str) -> str:
    if not run_id:
        raise invalid("INVALID_RUN_ID", "run_id is required", field="run_id")
    return check_id("run_id", run_id, "INVALID_RUN_ID")


def experiment_of(experiment: str) -> str:
    return "" if not experiment else check_name("experiment", experiment)


def require(condition: bool, error: ServiceError) -> None:
    if not condition:
        raise error
