"""TokenService (protos/stepstream/v1/tokens.proto): tokens made, listed and revoked over the
wire by admins. Who may do what is policy.py's (the interceptor checked it before a handler
runs); a handler validates the request, keeps a new token within its caller's expiry, finds
only tokens the caller `administers` (policy.py) when listing or revoking, and works on the
token table (store/tokens.py), as `stepstream tokens` does on the store directly."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from stepstream.v1 import tokens_pb2, tokens_pb2_grpc

from .. import errors
from ..servicer import abort
from ..store.tokens import ALL_PROJECTS, TokenRecord, TokenStore
from ..validation import check_id
from .interceptor import current_principal
from .policy import administers, project
from .tokens import ROLES, Principal, new_token

MAX_NAME_BYTES = 256


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def token_info(record: TokenRecord) -> tokens_pb2.TokenInfo:
    """A token's row as TokenInfo: never its secret or the secret's hash."""
    return tokens_pb2.TokenInfo(
        token_id=record.token_id,
        name=record.name,
        project=record.project,
        role=record.role,
        create_time=_timestamp(record.created_at),
        expire_time=_timestamp(record.expires_at),
        revoke_time=_timestamp(record.revoked_at),
        state=record.state(),
    )


def _new_token_project(name: str) -> str:
    if name == ALL_PROJECTS:
        return name
    return check_id("project", project(name), "INVALID_PROJECT")


def _within_expiry(caller: Principal, record: TokenRecord) -> None:
    """A caller whose token expires makes only tokens that expire no later than it does: one
    without an expiry, or with a later one, would outlive it (and its revocation)."""
    if caller.expires_at is None:
        return
    if record.expires_at is None or record.expires_at > caller.expires_at:
        limit = _timestamp(caller.expires_at)
        assert limit is not None
        raise errors.ServiceError(
            grpc.StatusCode.PERMISSION_DENIED,
            "EXPIRY_BEYOND_CALLER",
            f"token {caller.token_id} expires at {limit.ToJsonString()}; a token it makes "
            "must expire no later (set expires_in)",
            {"caller_expire_time": limit.ToJsonString(), "token_id": caller.token_id},
        )


class TokenServicer(tokens_pb2_grpc.TokenServiceServicer):
    """`tokens` is the service's token table; None without --auth required, where every RPC
    is refused (AUTH_NOT_REQUIRED): a token made there would check nothing."""

    def __init__(self, tokens: TokenStore | None) -> None:
        self.tokens = tokens

    def _caller(self) -> tuple[TokenStore, Principal]:
        principal = current_principal()
        if self.tokens is None or principal is None:
            raise errors.failed_precondition(
                "AUTH_NOT_REQUIRED",
                "this service runs without --auth required: it checks no tokens, so it makes "
                "none (use `stepstream tokens` on its store)",
            )
        return self.tokens, principal

    async def CreateToken(
        self, request: tokens_pb2.CreateTokenRequest, context: Any
    ) -> tokens_pb2.CreateTokenResponse:
        try:
            tokens, principal = self._caller()  # the interceptor checked: admin in `scope`
            scope = _new_token_project(request.project)
            if request.role not in ROLES:
                raise errors.invalid(
                    "INVALID_ROLE",
                    f"role must be one of {', '.join(ROLES)}, got {request.role[:40]!r}",
                    value=request.role[:40],
                )
            size = len(request.name.encode())
            if size > MAX_NAME_BYTES:
                raise errors.invalid(
                    "NAME_TOO_LONG",
                    f"name is {size} bytes; at most {MAX_NAME_BYTES}",
                    size=size,
                    limit=MAX_NAME_BYTES,
                )
            expires_in = None
            if request.HasField("expires_in"):
                expires_in = request.expires_in.ToTimedelta().total_seconds()
                if expires_in <= 0:
                    raise errors.invalid(
                        "INVALID_EXPIRY",
                        f"expires_in must be positive, got {expires_in:g} s",
                        value=f"{expires_in:g}",
                    )
            token, record = new_token(scope, request.role, request.name, expires_in)
            _within_expiry(principal, record)
            await asyncio.to_thread(tokens.add, record)
        except errors.ServiceError as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises
        return tokens_pb2.CreateTokenResponse(token=token, info=token_info(record))

    async def ListTokens(
        self, request: tokens_pb2.ListTokensRequest, context: Any
    ) -> tokens_pb2.ListTokensResponse:
        try:
            tokens, principal = self._caller()
            records = await asyncio.to_thread(tokens.list)
        except errors.ServiceError as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises
        wanted = request.project
        shown = [
            r
            for r in records
            if administers(principal, r.project)
            and (not wanted or wanted == ALL_PROJECTS or r.project == wanted)
        ]
        return tokens_pb2.ListTokensResponse(tokens=[token_info(r) for r in shown])

    async def RevokeToken(
        self, request: tokens_pb2.RevokeTokenRequest, context: Any
    ) -> tokens_pb2.RevokeTokenResponse:
        try:
            tokens, principal = self._caller()
            found = await asyncio.to_thread(tokens.get, request.token_id)
            # Outside the caller's scope: answered as an unknown id (a token's project never
            # changes, so the revoke below acts only on what was checked here).
            if found is None or not administers(principal, found.project):
                raise errors.not_found(
                    "TOKEN_NOT_FOUND",
                    f"no token has id {request.token_id[:40]!r}",
                    token_id=request.token_id[:40],
                )
            revoked = await asyncio.to_thread(tokens.revoke, request.token_id, time.time())
            record = await asyncio.to_thread(tokens.get, request.token_id) or found
        except errors.ServiceError as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises
        return tokens_pb2.RevokeTokenResponse(info=token_info(record), already_revoked=not revoked)
