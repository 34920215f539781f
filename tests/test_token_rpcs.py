"""TokenService over the wire (tokens.proto): admins of a project make, list and revoke its
tokens, no token makes one wider than itself, every validation path answers its exact code and
reason, and the Python functions and `stepstream tokens --address` use it. Real service,
Redis and store (test_auth.py's table covers the bad-token cases of the three RPCs)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

import grpc
import pytest
import stepstream
from secured import Secured, error_info
from stepstream.v1 import runs_pb2, runs_pb2_grpc, tokens_pb2, tokens_pb2_grpc
from stepstream_server.config import Settings
from stepstream_server.server import Service


def stub(s: Secured) -> tokens_pb2_grpc.TokenServiceStub:
    return tokens_pb2_grpc.TokenServiceStub(s.channel)


async def refused(call: Any, request: Any, md: Any) -> tuple[grpc.StatusCode, str, Any]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, metadata=md)
    info = error_info(caught.value)
    return caught.value.code(), info.reason, dict(info.metadata)


async def test_an_admin_makes_a_token_that_works_and_is_listed_without_its_secret(
    secured: Secured,
) -> None:
    made = await stub(secured).CreateToken(
        tokens_pb2.CreateTokenRequest(project="p1", role="read", name="ci"),
        metadata=secured.md(secured.tokens.admin1),
    )
    assert made.token.startswith(f"sst_{made.info.token_id}_")
    assert (made.info.project, made.info.role, made.info.name, made.info.state) == (
        "p1",
        "read",
        "ci",
        "active",
    )
    assert not made.info.HasField("expire_time") and not made.info.HasField("revoke_time")
    runs = runs_pb2_grpc.RunServiceStub(secured.channel)
    await runs.GetRun(
        runs_pb2.GetRunRequest(project="p1", run_id="r1"), metadata=secured.md(made.token)
    )
    listed = await stub(secured).ListTokens(
        tokens_pb2.ListTokensRequest(project="p1"), metadata=secured.md(secured.tokens.admin1)
    )
    assert made.info.token_id in [t.token_id for t in listed.tokens]
    secret = made.token.split("_", 2)[2]
    assert secret not in str(listed) and "sha256" not in str(listed).lower()


async def test_no_token_makes_one_wider_than_itself(secured: Secured) -> None:
    """An admin of p1 makes tokens of p1 only (any role, admin is the highest); only an admin
    of "*" makes "*" tokens; a write token makes none."""
    p1_admin = secured.md(secured.tokens.admin1)
    create = stub(secured).CreateToken
    assert await refused(
        create, tokens_pb2.CreateTokenRequest(project="*", role="read"), p1_admin
    ) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PROJECT_NOT_ALLOWED",
        {"project": "*", "required_role": "admin", "token_id": secured.tokens.admin1[4:20]},
    )
    code, reason, meta = await refused(
        create, tokens_pb2.CreateTokenRequest(project="p2", role="read"), p1_admin
    )
    assert (code, reason, meta["project"]) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PROJECT_NOT_ALLOWED",
        "p2",
    )
    code, reason, meta = await refused(
        create,
        tokens_pb2.CreateTokenRequest(project="p1", role="read"),
        secured.md(secured.tokens.write),
    )
    assert (code, reason, meta["required_role"]) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_INSUFFICIENT",
        "admin",
    )
    made = await create(
        tokens_pb2.CreateTokenRequest(project="p1", role="admin"), metadata=p1_admin
    )
    assert made.info.role == "admin"
    everywhere = await create(
        tokens_pb2.CreateTokenRequest(project="*", role="write"),
        metadata=secured.md(secured.tokens.admin),
    )
    assert everywhere.info.project == "*"
    # An empty project is the default project, as everywhere.
    code, reason, meta = await refused(create, tokens_pb2.CreateTokenRequest(role="read"), p1_admin)
    assert (reason, meta["project"]) == ("PROJECT_NOT_ALLOWED", "default")


async def test_a_token_that_expires_makes_only_tokens_that_expire_no_later(
    secured: Secured,
) -> None:
    """No token makes one that outlives it: a caller whose token expires is refused a token
    without an expiry or with a later one (PERMISSION_DENIED EXPIRY_BEYOND_CALLER, its own
    expiry in the metadata), and makes one that expires sooner."""
    create = stub(secured).CreateToken
    parent_request = tokens_pb2.CreateTokenRequest(project="p1", role="admin")
    parent_request.expires_in.seconds = 3600
    parent = await create(parent_request, metadata=secured.md(secured.tokens.admin))
    expected = (
        grpc.StatusCode.PERMISSION_DENIED,
        "EXPIRY_BEYOND_CALLER",
        {
            "caller_expire_time": parent.info.expire_time.ToJsonString(),
            "token_id": parent.info.token_id,
        },
    )
    never = tokens_pb2.CreateTokenRequest(project="p1", role="admin")
    assert await refused(create, never, secured.md(parent.token)) == expected
    later = tokens_pb2.CreateTokenRequest(project="p1", role="read")
    later.expires_in.seconds = 7200
    assert await refused(create, later, secured.md(parent.token)) == expected
    sooner = tokens_pb2.CreateTokenRequest(project="p1", role="admin")
    sooner.expires_in.seconds = 60
    made = await create(sooner, metadata=secured.md(parent.token))
    assert made.info.expire_time.ToNanoseconds() <= parent.info.expire_time.ToNanoseconds()


@pytest.mark.parametrize(
    ("request_fields", "reason", "metadata"),
    [
        ({"project": "bad project", "role": "read"}, "INVALID_PROJECT", {"field": "project"}),
        ({"project": "p1", "role": "owner"}, "INVALID_ROLE", {"value": "owner"}),
        ({"project": "p1", "role": ""}, "INVALID_ROLE", {"value": ""}),
        ({"project": "p1", "role": "read", "name": "n" * 257}, "NAME_TOO_LONG", {"size": "257"}),
        (
            {"project": "p1", "role": "read", "expires_in": {"seconds": 0}},
            "INVALID_EXPIRY",
            {"value": "0"},
        ),
        (
            {"project": "p1", "role": "read", "expires_in": {"seconds": -5}},
            "INVALID_EXPIRY",
            {"value": "-5"},
        ),
    ],
)
async def test_create_token_validates_its_request(
    secured: Secured, request_fields: dict[str, Any], reason: str, metadata: dict[str, str]
) -> None:
    request = tokens_pb2.CreateTokenRequest()
    for key, value in request_fields.items():
        if key == "expires_in":
            request.expires_in.seconds = value["seconds"]
        else:
            setattr(request, key, value)
    code, got, meta = await refused(
        stub(secured).CreateToken, request, secured.md(secured.tokens.admin)
    )
    assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert metadata.items() <= meta.items()


async def test_a_token_made_with_an_expiry_expires(secured: Secured) -> None:
    request = tokens_pb2.CreateTokenRequest(project="p1", role="read")
    request.expires_in.seconds = 3600
    made = await stub(secured).CreateToken(request, metadata=secured.md(secured.tokens.admin))
    span = made.info.expire_time.ToSeconds() - made.info.create_time.ToSeconds()
    assert span in (3599, 3600)


async def test_listing_shows_only_what_the_caller_administers(secured: Secured) -> None:
    listing = stub(secured).ListTokens

    async def projects(token: str, project: str = "") -> set[str]:
        response = await listing(
            tokens_pb2.ListTokensRequest(project=project), metadata=secured.md(token)
        )
        return {t.project for t in response.tokens}

    assert await projects(secured.tokens.admin1) == {"p1"}  # its own scope, not "*" or p2
    assert await projects(secured.tokens.admin1, "p1") == {"p1"}
    assert await projects(secured.tokens.admin) == {"*", "p1", "p2"}
    assert await projects(secured.tokens.admin, "p2") == {"p2"}
    assert await projects(secured.tokens.admin, "*") == {"*", "p1", "p2"}
    code, reason, meta = await refused(
        listing, tokens_pb2.ListTokensRequest(project="p2"), secured.md(secured.tokens.admin1)
    )
    assert (code, reason, meta["project"]) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PROJECT_NOT_ALLOWED",
        "p2",
    )
    code, reason, meta = await refused(
        listing, tokens_pb2.ListTokensRequest(), secured.md(secured.tokens.read)
    )
    assert (reason, meta["project"], meta["required_role"]) == (
        "ROLE_INSUFFICIENT",
        "p1",
        "admin",
    )


async def test_revoking_needs_admin_on_the_tokens_project(secured: Secured) -> None:
    """A token outside the caller's admin scope is answered exactly as an unknown id, so
    neither its existence nor its project is disclosed (and it is not revoked)."""
    revoke = stub(secured).RevokeToken
    p1_admin = secured.md(secured.tokens.admin1)
    unknown_id = "0123456789abcdef"
    other_id = secured.tokens.other.split("_")[1]  # a p2 token
    everywhere_id = secured.tokens.admin.split("_")[1]  # a "*" token
    for token_id in (unknown_id, other_id, everywhere_id):
        assert await refused(
            revoke, tokens_pb2.RevokeTokenRequest(token_id=token_id), p1_admin
        ) == (
            grpc.StatusCode.NOT_FOUND,
            "TOKEN_NOT_FOUND",
            {"token_id": token_id},
        ), token_id
    # Below admin, every id hears the same: the caller's own scope needs admin.
    for token_id in (unknown_id, other_id, secured.tokens.spare.split("_")[1]):
        assert await refused(
            revoke,
            tokens_pb2.RevokeTokenRequest(token_id=token_id),
            secured.md(secured.tokens.write),
        ) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_INSUFFICIENT",
            {"project": "p1", "required_role": "admin", "token_id": secured.tokens.write[4:20]},
        ), token_id
    # The p2 token was not revoked: it still works.
    await runs_pb2_grpc.RunServiceStub(secured.channel).GetRun(
        runs_pb2.GetRunRequest(project="p2", run_id="parent"),
        metadata=secured.md(secured.tokens.other),
    )
    spare_id = secured.tokens.spare.split("_")[1]
    done = await revoke(
        tokens_pb2.RevokeTokenRequest(token_id=spare_id), metadata=secured.md(secured.tokens.admin1)
    )
    assert (done.info.state, done.already_revoked) == ("revoked", False)
    assert done.info.HasField("revoke_time")
    again = await revoke(
        tokens_pb2.RevokeTokenRequest(token_id=spare_id), metadata=secured.md(secured.tokens.admin1)
    )
    assert again.already_revoked
    code, reason, _ = await refused(
        runs_pb2_grpc.RunServiceStub(secured.channel).GetRun,
        runs_pb2.GetRunRequest(project="p1", run_id="r1"),
        secured.md(secured.tokens.spare),
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


async def test_without_auth_the_token_service_refuses_everything(settings: Settings) -> None:
    """A service without --auth required checks no tokens, so it makes none."""
    service = await Service.start(dataclasses.replace(settings, web_address=None))
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await tokens_pb2_grpc.TokenServiceStub(channel).CreateToken(
                    tokens_pb2.CreateTokenRequest(project="p1", role="admin")
                )
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(caught.value).reason == "AUTH_NOT_REQUIRED"
    finally:
        await service.stop()


async def test_the_python_functions(secured: Secured) -> None:
    address = secured.service.address
    admin = secured.tokens.admin1

    def calls() -> None:
        token, info = stepstream.create_token(
            "p1", "write", name="py", expires="30d", address=address, token=admin
        )
        assert token.startswith(f"sst_{info.token_id}_") and info.state == "active"
        assert info.expires_at is not None
        assert info.expires_at - info.created_at == pytest.approx(30 * 86400, abs=1)
        listed = stepstream.list_tokens(address=address, token=admin)
        assert info.token_id in [t.token_id for t in listed]
        assert {t.project for t in listed} == {"p1"}
        revoked, already = stepstream.revoke_token(info.token_id, address=address, token=admin)
        assert (revoked.state, already) == ("revoked", False)
        assert revoked.revoked_at is not None
        with pytest.raises(stepstream.RPCError) as caught:
            stepstream.list_tokens("p2", address=address, token=admin)
        assert caught.value.reason == "PROJECT_NOT_ALLOWED"
        with pytest.raises(stepstream.InvalidArgumentError, match="expires must be"):
            stepstream.create_token("p1", "read", expires="soon", address=address, token=admin)

    await asyncio.to_thread(calls)


def tokens_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepstream.cli", "tokens", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


async def test_the_cli_manages_tokens_through_a_service(secured: Secured) -> None:
    address = secured.service.address
    admin = secured.tokens.admin1

    def cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return tokens_cli(*args, "--address", address, **kw)

    made = await asyncio.to_thread(
        cli, "create", "--project", "p1", "--role", "read", "--name", "cli", "--token", admin
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    token_id = token.split("_")[1]
    assert f"token {token_id}: role read in 'p1'" in made.stderr
    listed = await asyncio.to_thread(cli, "list", "--json", env={"STEPSTREAM_TOKEN": admin})
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {r["project"] for r in rows} == {"p1"}
    assert [r["name"] for r in rows if r["id"] == token_id] == ["cli"]
    assert token not in listed.stdout
    wider = await asyncio.to_thread(
        cli, "create", "--project", "*", "--role", "read", "--token", admin
    )
    assert wider.returncode == 1 and "[PROJECT_NOT_ALLOWED]" in wider.stderr
    revoked = await asyncio.to_thread(cli, "revoke", token_id, "--token", admin)
    assert revoked.returncode == 0 and f"token {token_id} revoked" in revoked.stdout
    again = await asyncio.to_thread(cli, "revoke", token_id, "--token", admin)
    assert again.returncode == 1 and "already revoked" in again.stderr
    missing = await asyncio.to_thread(cli, "revoke", "0123456789abcdef", "--token", admin)
    assert missing.returncode == 4 and "[TOKEN_NOT_FOUND]" in missing.stderr
    no_token = await asyncio.to_thread(cli, "list")
    assert no_token.returncode == 1 and "[TOKEN_MISSING]" in no_token.stderr
