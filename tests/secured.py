"""A service with `--auth required` and a token of every kind in its store (test_auth.py,
test_auth_streams.py, test_token_rpcs.py use it)."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from stepstream.v1 import runs_pb2, runs_pb2_grpc
from stepstream_server.auth import SecuritySettings
from stepstream_server.auth.tokens import new_token
from stepstream_server.config import Settings
from stepstream_server.server import Service
from stepstream_server.store.tokens import TokenStore

REVOKED_AT = 1.0


@dataclasses.dataclass
class Tokens:
    admin: str  # admin in every project
    write: str  # write in p1
    read: str  # read in p1
    other: str  # write in p2
    expired: str
    revoked: str
    unknown: str  # well-formed, never stored
    admin1: str  # admin in p1
    spare: str  # read in p1, for RevokeToken to revoke

    def case(self, name: str) -> str | None:
        return None if name == "none" else getattr(self, name)


def make_tokens(store_url: str) -> Tokens:
    tokens = TokenStore(store_url)
    try:

        def add(project: str, role: str, **changes: Any) -> str:
            token, record = new_token(project, role, name=f"{project}-{role}")
            tokens.add(dataclasses.replace(record, **changes))
            return token

        unknown, _ = new_token("p1", "write")
        return Tokens(
            admin=add("*", "admin"),
            write=add("p1", "write"),
            read=add("p1", "read"),
            other=add("p2", "write"),
            expired=add("p1", "write", expires_at=time.time() - 1),
            revoked=add("p1", "write", revoked_at=REVOKED_AT),
            unknown=unknown,
            admin1=add("p1", "admin"),
            spare=add("p1", "read"),
        )
    finally:
        tokens.close()


@pytest.fixture
def auth_settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, web_address="127.0.0.1:0", security=SecuritySettings(auth="required")
    )


@dataclasses.dataclass
class Secured:
    service: Service
    tokens: Tokens
    channel: grpc.aio.Channel
    p1_incarnation: str
    p2_incarnation: str

    def md(self, token: str | None) -> tuple[tuple[str, str], ...]:
        return () if token is None else (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def secured(auth_settings: Settings) -> AsyncIterator[Secured]:
    service = await Service.start(auth_settings)
    try:
        tokens = make_tokens(auth_settings.store_url)
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = runs_pb2_grpc.RunServiceStub(channel)
            admin = (("authorization", f"Bearer {tokens.admin}"),)
            incarnations = []
            for project, run_id in (("p1", "r1"), ("p2", "parent")):
                resp = await stub.CreateRun(
                    runs_pb2.CreateRunRequest(project=project, run_id=run_id, experiment="e1"),
                    metadata=admin,
                )
                incarnations.append(resp.run.current_incarnation_id)
            yield Secured(service, tokens, channel, *incarnations)
    finally:
        await service.stop()


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    raise AssertionError(f"no ErrorInfo in {err}")


def csrf_field(page: str) -> str:
    """The CSRF value in a login page's form."""
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match is not None, page
    return match.group(1)
