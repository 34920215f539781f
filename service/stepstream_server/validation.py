"""Name rules shared by every entry point (SPEC §1); the rules themselves are
`stepstream.rules`, shared with the client."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stepstream.rules import DEFAULT_PROJECT, id_problem, name_problem

from .errors import ServiceError, invalid
from .limits import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_TAG_BYTES, MAX_TAGS, MAX_TEXT_BYTES


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


def check_document(field: str, encoded_bytes: int, document: dict[str, Any]) -> dict[str, Any]:
    """A config or single-values document within `MAX_CONFIG_BYTES` (its encoded size, known
    before it is converted) and `MAX_CONFIG_DEPTH`."""
    if encoded_bytes > MAX_CONFIG_BYTES:
        raise invalid(
            "CONFIG_TOO_LARGE",
            f"{field} is {encoded_bytes} bytes encoded; the limit is {MAX_CONFIG_BYTES}",
            field=field,
            size=encoded_bytes,
            limit=MAX_CONFIG_BYTES,
        )
    depth = document_depth(document)
    if depth > MAX_CONFIG_DEPTH:
        raise config_too_deep(field, str(depth))
    return document


def config_too_deep(field: str, depth: str) -> ServiceError:
    return invalid(
        "CONFIG_TOO_DEEP",
        f"{field} is nested {depth} levels deep; the limit is {MAX_CONFIG_DEPTH}",
        field=field,
        depth=depth,
        limit=MAX_CONFIG_DEPTH,
    )


def document_depth(document: Any) -> int:
    """Nesting of a JSON-like value: 0 for a scalar, 1 for a flat object or list."""
    deepest, todo = 0, [(document, 0)]
    while todo:
        value, depth = todo.pop()
        children = (
            value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        )
        if isinstance(value, dict | list):
            depth += 1
            deepest = max(deepest, depth)
        todo.extend((child, depth) for child in children)
    return deepest


def check_tags(tags: Sequence[str], *, total: int | None = None) -> None:
    """Each tag a valid name of at most `MAX_TAG_BYTES`; at most `MAX_TAGS` of them (`total`:
    how many the run would have)."""
    count = len(tags) if total is None else total
    if count > MAX_TAGS:
        raise invalid(
            "TOO_MANY_TAGS",
            f"{count} tags; a run has at most {MAX_TAGS}",
            count=count,
            limit=MAX_TAGS,
        )
    for tag in tags:
        size = len(tag.encode("utf-8", "surrogatepass"))
        if size > MAX_TAG_BYTES:
            raise invalid(
                "TAG_TOO_LONG",
                f"tag {tag[:64]!r} is {size} bytes long; the limit is {MAX_TAG_BYTES}",
                size=size,
                limit=MAX_TAG_BYTES,
            )
        check_name("tag", tag)


def check_text(field: str, text: str) -> str:
    """A free text (description, failure reason) of at most `MAX_TEXT_BYTES`."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise invalid(
            "TEXT_TOO_LONG",
            f"{field} is {size} bytes long; the limit is {MAX_TEXT_BYTES}",
            field=field,
            size=size,
            limit=MAX_TEXT_BYTES,
        )
    return text
