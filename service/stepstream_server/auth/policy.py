"""What each RPC and web route needs: one table per surface, read by the interceptor
(interceptor.py) and the web middleware (web.py), so no handler checks anything itself.

A rule gives the role a call needs and where its project comes from: a RunService request's
`project` (or its selector's), the `open` message of an AppendPoints stream, and for what
names an incarnation (reads by `incarnation_id`, forks from `fork_incarnation_id`) the project
that incarnation belongs to, looked up in the store: forking from a parent in another project
needs read there, and write in the child's project. Tokens are managed by admins of the
project concerned: the new token's project (so no token makes one wider than itself; its
expiry, the other half of that rule, is token_service.py's), the listed project (empty: the
caller's own scope). RevokeToken needs admin in the caller's own scope, and its handler finds
only tokens the caller administers, as a listing shows only those: a token outside that scope
is TOKEN_NOT_FOUND like an unknown id, so neither its existence nor its project is disclosed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from stepstream.rules import DEFAULT_PROJECT
from stepstream.v1 import ingest_pb2

from .tokens import Principal

# (project, role) pairs a call needs, every one of them.
Needs = list[tuple[str, str]]
# The project of an incarnation, None when there is no such thing.
ProjectOf = Callable[[str], Awaitable[str | None]]


@dataclass(frozen=True)
class Lookup:
    """What a rule may look up in the store."""

    incarnation_project: ProjectOf


def project(name: str) -> str:
    return name or DEFAULT_PROJECT


async def _plain(role: str, request: Any, lookup: Lookup, principal: Principal) -> Needs:
    return [(project(request.project), role)]


async def _create(request: Any, lookup: Lookup, principal: Principal) -> Needs:
    needs = [(project(request.project), "write")]
    if request.fork_incarnation_id:
        parent = await lookup.incarnation_project(request.fork_incarnation_id)
        if parent is not None:  # no such incarnation: CreateRun says INCARNATION_NOT_FOUND
            needs.append((parent, "read"))
    return needs


async def _selector(request: Any, lookup: Lookup, principal: Principal) -> Needs:
    sel = request.selector
    if sel.incarnation_id and not (sel.run_id or sel.experiment):
        owner = await lookup.incarnation_project(sel.incarnation_id)
        if owner is not None:
            return [(owner, "read")]
    return [(project(sel.project), "read")]


async def _open(request: Any, lookup: Lookup, principal: Principal) -> Needs:
    # The first message of an AppendPoints stream; one that is not an `open` (a batch, or
    # what decoding made of the bytes: Oversized, Malformed, Unparsed) is refused by the
    # stream itself (its bound's reason, MALFORMED_REQUEST, STREAM_NOT_OPEN), which then
    # ends: it can write nothing, and no `open` is ever taken after it (servicer.py `_read`).
    if not isinstance(request, ingest_pb2.AppendPointsRequest):
        return []
    if request.WhichOneof("kind") != "open":
        return []
    return [(project(request.open.project), "write")]


async def _new_token(request: Any, lookup: Lookup, principal: Principal) -> Needs:
    # Admin where the new token acts: "*" only for an admin of "*" (Principal.check), so no
    # token makes one wider than itself (admin is the highest role: any role is within it).
    return [(project(request.project), "admin")]


async def _listed(request: Any, lookup: Lookup, principal: Principal) -> Needs:
    # Empty: the caller's own scope, filtered by `administers` in the handler.
    return [(request.project or principal.project, "admin")]


async def _revoked(request: Any, lookup: Lookup, principal: Principal) -> Needs:
    # Admin of its own scope; the handler finds only tokens it `administers` (TOKEN_NOT_FOUND
    # otherwise), so every id outside that scope is answered alike.
    return [(principal.project, "admin")]


def administers(principal: Principal, token_project: str) -> bool:
    """Whether `principal` may see and revoke the tokens of `token_project`."""
    return principal.may(token_project, "admin")


@dataclass(frozen=True)
class Rule:
    # For a streaming request, the needs come from its first message.
    needs: Callable[[Any, Lookup, Principal], Awaitable[Needs]]


def _role(role: str) -> Rule:
    async def needs(request: Any, lookup: Lookup, principal: Principal) -> Needs:
        return await _plain(role, request, lookup, principal)

    return Rule(needs)


RUNS = "/stepstream.v1.RunService/"
TOKENS = "/stepstream.v1.TokenService/"
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
    TOKENS + "CreateToken": Rule(_new_token),
    TOKENS + "ListTokens": Rule(_listed),
    TOKENS + "RevokeToken": Rule(_revoked),
}
# Any valid token will do: the schema is no secret, but the port is not open to everyone.
TOKEN_ONLY_PREFIXES = ("/grpc.reflection.",)
# Load balancers and orchestrators probe health without credentials.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
