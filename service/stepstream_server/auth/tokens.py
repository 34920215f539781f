"""Access tokens: how they are made, what they allow, and how a presented one is checked.

A token reads `sst_<id>_<secret>`: the id (64 random bits, hex) names its row in the store
(store/tokens.py), the secret (256 random bits, URL-safe base64) is stored only as its SHA-256
and compared in constant time. A token is scoped to one project or to every project ("*")
with one role; roles are ordered read < write < admin (each allows what the ones before it
do). Every failure is a `ServiceError` with its reason (the protos list them):

- UNAUTHENTICATED: TOKEN_MISSING (no `authorization: Bearer` credentials), TOKEN_INVALID
  (not a token, unknown, wrong secret, or revoked), TOKEN_EXPIRED;
- PERMISSION_DENIED: PROJECT_NOT_ALLOWED (the token is for another project),
  ROLE_INSUFFICIENT (its role is below the one needed), with `project` and `required_role`
  in the metadata.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass

import grpc

from .. import errors
from ..store.tokens import ALL_PROJECTS, TokenRecord, TokenStore

log = logging.getLogger(__name__)

ROLES = ("read", "write", "admin")
PREFIX = "sst_"
_TOKEN = re.compile(r"sst_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


def rank(role: str) -> int:
    return ROLES.index(role)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(
    project: str, role: str, name: str = "", expires_in: float | None = None
) -> tuple[str, TokenRecord]:
    """A fresh token and the row that stores it (the token itself is not in the row)."""
    if role not in ROLES:
        raise ValueError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    token_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    now = time.time()
    record = TokenRecord(
        token_id=token_id,
        name=name,
        project=project,
        role=role,
        secret_sha256=digest(secret),
        created_at=now,
        expires_at=None if expires_in is None else now + expires_in,
        revoked_at=None,
    )
    return f"{PREFIX}{token_id}_{secret}", record


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a token's scope and role."""

    token_id: str
    project: str  # ALL_PROJECTS: every project
    role: str
    expires_at: float | None = None

    def may(self, project: str, role: str) -> bool:
        return self.project in (ALL_PROJECTS, project) and rank(self.role) >= rank(role)

    def check(self, project: str, role: str) -> None:
        """Raise PERMISSION_DENIED unless this token may act as `role` in `project`."""
        if self.project not in (ALL_PROJECTS, project):
            raise errors.ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "PROJECT_NOT_ALLOWED",
                f"token {self.token_id} is for project {self.project!r}, not {project!r}",
                {"project": project, "required_role": role, "token_id": self.token_id},
            )
        if rank(self.role) < rank(role):
            raise errors.ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "ROLE_INSUFFICIENT",
                f"token {self.token_id} has role {self.role!r} in project {project!r}; "
                f"this needs {role!r}",
                {"project": project, "required_role": role, "token_id": self.token_id},
            )


def unauthenticated(reason: str, message: str, **metadata: str) -> errors.ServiceError:
    return errors.ServiceError(grpc.StatusCode.UNAUTHENTICATED, reason, message, metadata)


def missing() -> errors.ServiceError:
    return unauthenticated(
        "TOKEN_MISSING",
        "this service requires a token: send 'authorization: Bearer <token>' "
        "(client: Run(token=...) or $STEPSTREAM_TOKEN)",
    )


def bearer(header: str | None) -> str | None:
    """The token in an `authorization` value, None when there is none; raises TOKEN_INVALID
    for credentials of another scheme."""
    if header is None or not header.strip():
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthenticated("TOKEN_INVALID", "the authorization value must read 'Bearer <token>'")
    return token.strip()


class Authenticator:
    """Checks presented tokens against the store; one indexed read per check, on the token
    store's own connection (so a revoked token stops working at once)."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens

    async def principal(self, token: str | None) -> Principal:
        if token is None:
            raise missing()
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise unauthenticated("TOKEN_INVALID", "this is not a stepstream token (sst_...)")
        token_id, secret = match.groups()
        try:
            record = await asyncio.to_thread(self.tokens.get, token_id)
        except Exception as exc:  # the store is down or refuses: retryable, like any RPC
            log.warning("cannot check token %s: %s", token_id, type(exc).__name__)
            raise errors.unavailable(
                "STORE_UNAVAILABLE",
                "the token cannot be checked: the store is unavailable; retry",
                detail=type(exc).__name__,
            ) from None
        # Compare a digest even for an unknown id, so timing says nothing about which ids exist.
        stored = record.secret_sha256 if record is not None else "0" * 64
        if not hmac.compare_digest(stored, digest(secret)) or record is None:
            raise unauthenticated("TOKEN_INVALID", "unknown token", token_id=token_id)
        if record.revoked_at is not None:
            raise unauthenticated(
                "TOKEN_INVALID", f"token {token_id} has been revoked", token_id=token_id
            )
        if record.expired():
            raise unauthenticated(
                "TOKEN_EXPIRED",
                f"token {token_id} expired; create a new one (stepstream tokens create)",
                token_id=token_id,
            )
        return Principal(record.token_id, record.project, record.role, record.expires_at)
