"""What each RPC and web route needs: one table per surface, read by the interceptor
(interceptor.py) and the web middleware (web.py), so no handler checks anything itself.

A rule gives the role a call needs and where its project comes from: a RunService request's
`project` (or its selector's), the `open` message of an AppendPoints stream, and for what
names an incarnation (reads by `incarnation_id`, forks from `fork_incarnation_id`) the project
that incarnation belongs to, looked up in the store: forking from a parent in another project
needs read there, and write in the child's project.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from stepstream.rules import DEFAULT_PROJECT

# (project, role) pairs a call needs, every one of them.
Needs = list[tuple[str, str]]
# The project of an incarnation, None when there is no such incarnation.
ProjectOf = Callable[[str], Awaitable[str | None]]


def project(name: str) -> str:
    return name or DEFAULT_PROJECT


async def _plain(role: str, request: Any, project_of: ProjectOf) -> Needs:
    return [(project(request.project), role)]


async def _create(request: Any, project_of: ProjectOf) -> Needs:
    needs = [(project(request.project), "write")]
    if request.fork_incarnation_id:
        parent = await project_of(request.fork_incarnation_id)
        if parent is not None:  # no such incarnation: CreateRun says INCARNATION_NOT_FOUND
            needs.append((parent, "read"))
    return needs


async def _selector(request: Any, project_of: ProjectOf) -> Needs:
    sel = request.selector
    if sel.incarnation_id and not (sel.run_id or sel.experiment):
        owner = await project_of(sel.incarnation_id)
        if owner is not None:
            return [(owner, "read")]
    return [(project(sel.project), "read")]


async def _open(request: Any, project_of: ProjectOf) -> Needs:
    # The first message of an AppendPoints stream; one that is not an `open` is refused by
    # the stream itself (STREAM_NOT_OPEN) and can write nothing.
    if request.WhichOneof("kind") != "open":
        return []
    return [(project(request.open.project), "write")]


@dataclass(frozen=True)
class Rule:
    # For a streaming request, the needs come from its first message.
    needs: Callable[[Any, ProjectOf], Awaitable[Needs]]


def _role(role: str) -> Rule:
    async def needs(request: Any, project_of: ProjectOf) -> Needs:
        return await _plain(role, request, project_of)

    return Rule(needs)


RUNS = "/stepstream.v1.RunService/"
RPC_RULES: dict[str, Rule] = {
    "/stepstream.v1.IngestService/AppendPoints": Rule(_open),
    RUNS + "CreateRun": Rule(_create),
    RUNS + "GetRun": _role("read"),
    RUNS + "ListRuns": _role("read"),
    RUNS + "StopRun": _role("write"),
    RUNS + "FinishRun": _role("write"),
    RUNS + "FailRun": _role("write"),
    RUNS + "ResumeRun": _role("write"),
    RUNS + "RewindRun": _role("write"),
    RUNS + "UpdateRunConfig": _role("write"),
    RUNS + "UpdateRunTags": _role("write"),
    RUNS + "ListSeries": Rule(_selector),
    RUNS + "ReadSeries": Rule(_selector),
}
# Any valid token will do: the schema is no secret, but the port is not open to everyone.
TOKEN_ONLY_PREFIXES = ("/grpc.reflection.",)
# Load balancers and orchestrators probe health without credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
