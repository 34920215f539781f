"""Access tokens over the wire (TokenService): `create_token`, `list_tokens`, `revoke_token`,
with the same connection options as the read functions (address, tls, root_certificates,
client_certificate, client_key, token; each falling back on its environment variable). The
calling token needs role admin in the project concerned (protos/stepstream/v1/tokens.proto);
`stepstream tokens ... --address` uses these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2

from ._exceptions import InvalidArgumentError, RPCError
from ._security import Connection, Unpack
from ._targets import Address, resolve_target
from .rules import parse_duration
from .v1 import tokens_pb2, tokens_pb2_grpc

CALL_TIMEOUT = 30.0
_Response = TypeVar("_Response")


@dataclass(frozen=True)
class TokenInfo:
    """A token as ListTokens shows it: never its secret.

    Attributes:
        token_id: its public id (the 16 hex digits after "sst_").
        name: what it is for.
        project: the project it acts in; "*" for every project.
        role: "read", "write" or "admin".
        created_at / expires_at / revoked_at: seconds since the Unix epoch (None: never / not).
        state: "active", "expired" or "revoked".
    """

    token_id: str
    name: str
    project: str
    role: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    state: str


def _seconds(message: Any, field: str) -> float | None:
    if not message.HasField(field):
        return None
    return float(getattr(message, field).ToNanoseconds()) / 1e9


def _info(message: tokens_pb2.TokenInfo) -> TokenInfo:
    return TokenInfo(
        token_id=message.token_id,
        name=message.name,
        project=message.project,
        role=message.role,
        created_at=_seconds(message, "create_time") or 0.0,
        expires_at=_seconds(message, "expire_time"),
        revoked_at=_seconds(message, "revoke_time"),
        state=message.state,
    )


def _call(
    address: Address | None,
    connection: Connection,
    call: Callable[[tokens_pb2_grpc.TokenServiceStub], _Response],
) -> _Response:
    target = resolve_target(address, **connection)
    channel = target.channel(0)
    try:
        return call(tokens_pb2_grpc.TokenServiceStub(channel))
    except grpc.RpcError as exc:
        raise RPCError.from_grpc(exc) from None
    finally:
        channel.close()


def create_token(
    project: str,
    role: str,
    *,
    name: str = "",
    expires: float | str | None = None,
    address: Address | None = None,
    **connection: Unpack[Connection],
) -> tuple[str, TokenInfo]:
    """Make a token with `role` ("read", "write", "admin") in `project` ("*": every project);
    returns the token (shown only now: keep it secret) and its row. `expires` is seconds or a
    duration like "30d", "12h"; None: until revoked. The calling token needs admin there."""
    request = tokens_pb2.CreateTokenRequest(project=project, role=role, name=name)
    if expires is not None:
        try:
            seconds = parse_duration(expires) if isinstance(expires, str) else float(expires)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc).replace("--expires", "expires")) from None
        request.expires_in.CopyFrom(
            duration_pb2.Duration(seconds=int(seconds), nanos=int(seconds % 1 * 1e9))
        )
    response = _call(
        address, connection, lambda stub: stub.CreateToken(request, timeout=CALL_TIMEOUT)
    )
    return response.token, _info(response.info)


def list_tokens(
    project: str | None = None,
    *,
    address: Address | None = None,
    **connection: Unpack[Connection],
) -> list[TokenInfo]:
    """The tokens of `project` ("*": of every project; None: every token the caller
    administers), oldest first, never their secrets."""
    request = tokens_pb2.ListTokensRequest(project=project or "")
    response = _call(
        address, connection, lambda stub: stub.ListTokens(request, timeout=CALL_TIMEOUT)
    )
    return [_info(t) for t in response.tokens]


def revoke_token(
    token_id: str,
    *,
    address: Address | None = None,
    **connection: Unpack[Connection],
) -> tuple[TokenInfo, bool]:
    """Revoke a token by its id: it stops working on the next call (an open stream within a
    second). Returns its row and whether it had been revoked already."""
    request = tokens_pb2.RevokeTokenRequest(token_id=token_id)
    response = _call(
        address, connection, lambda stub: stub.RevokeToken(request, timeout=CALL_TIMEOUT)
    )
    return _info(response.info), response.already_revoked
