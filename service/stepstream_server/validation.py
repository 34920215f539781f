"""Name rules shared by every entry point (SPEC §1); the rules themselves are
`stepstream.rules`, shared with the client."""

from __future__ import annotations

from stepstream.rules import DEFAULT_PROJECT, id_problem, name_problem

from .errors import ServiceError, invalid


def check_name(field: str, name: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise invalid("INVALID_NAME", f"{field} {name[:64]!r} {problem}", field=field)
    return name


def check_id(field: str, value: str, reason: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise invalid(reason, f"{field} {value[:140]!r} {problem}", field=field, value=value[:140])
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
