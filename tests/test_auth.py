"""`--auth required`: project-scoped tokens checked on every RPC and every web route, against a
real service (grpc.aio on a free port, the embedded Redis, the store) with tokens in its store.

The table tests send each RPC and each route with no token, an unknown, an expired and a
revoked token, a token of another project and a read-only token, and expect the exact code
and ErrorInfo reason (with the project and role needed); the tables are checked against the
protos' services and the web app's routes, so an RPC or a route added without a rule fails."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from secured import Secured, csrf_field, error_info, make_tokens
from stepstream.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
)
from stepstream_server.auth import SecuritySettings, check_binding
from stepstream_server.auth.policy import RPC_RULES
from stepstream_server.auth.tokens import new_token
from stepstream_server.auth.web import WEB_RULES
from stepstream_server.config import Settings
from stepstream_server.server import Service
from stepstream_server.store.tokens import TokenStore

OPEN_ROUTES = {"/login", "/logout"}

# -- every RPC --------------------------------------------------------------------------------

Call = Callable[[Secured, tuple[tuple[str, str], ...]], Any]


def unary(method: str, request: Callable[[Secured], Any], stub: Any = None) -> Call:
    async def call(s: Secured, md: tuple[tuple[str, str], ...]) -> Any:
        service = (stub or runs_pb2_grpc.RunServiceStub)(s.channel)
        return await getattr(service, method)(request(s), metadata=md)

    return call


def token_rpc(method: str, request: Callable[[Secured], Any]) -> Call:
    return unary(method, request, tokens_pb2_grpc.TokenServiceStub)


def token_id(token: str) -> str:
    return token.split("_")[1]


def streaming(method: str, request: Callable[[Secured], Any]) -> Call:
    async def call(s: Secured, md: tuple[tuple[str, str], ...]) -> Any:
        stub = runs_pb2_grpc.RunServiceStub(s.channel)
        return [r async for r in getattr(stub, method)(request(s), metadata=md)]

    return call


async def append(s: Secured, md: tuple[tuple[str, str], ...]) -> Any:
    call = ingest_pb2_grpc.IngestServiceStub(s.channel).AppendPoints(metadata=md)
    await call.write(
        ingest_pb2.AppendPointsRequest(
            open=ingest_pb2.OpenStream(project="p1", run_id="r1", writer_id="w1")
        )
    )
    response = await call.read()
    if response is grpc.aio.EOF:
        await call  # raises the call's error
    await call.done_writing()
    return response


def selector(s: Secured) -> runs_pb2.SeriesSelector:
    return runs_pb2.SeriesSelector(project="p1", run_id="r1")


# method -> (role it needs in p1, how to call it on p1's run r1)
RPCS: dict[str, tuple[str, Call]] = {
    "IngestService/AppendPoints": ("write", append),
    "RunService/CreateRun": (
        "write",
        unary("CreateRun", lambda s: runs_pb2.CreateRunRequest(project="p1", run_id="new")),
    ),
    "RunService/GetRun": (
        "read",
        unary("GetRun", lambda s: runs_pb2.GetRunRequest(project="p1", run_id="r1")),
    ),
    "RunService/ListRuns": (
        "read",
        unary("ListRuns", lambda s: runs_pb2.ListRunsRequest(project="p1")),
    ),
    "RunService/StopRun": (
        "write",
        unary("StopRun", lambda s: runs_pb2.StopRunRequest(project="p1", run_id="r1")),
    ),
    "RunService/FinishRun": (
        "write",
        unary("FinishRun", lambda s: runs_pb2.FinishRunRequest(project="p1", run_id="r1")),
    ),
    "RunService/FailRun": (
        "write",
        unary("FailRun", lambda s: runs_pb2.FailRunRequest(project="p1", run_id="r1")),
    ),
    "RunService/ResumeRun": (
        "write",
        unary("ResumeRun", lambda s: runs_pb2.ResumeRunRequest(project="p1", run_id="r1")),
    ),
    "RunService/RewindRun": (
        "write",
        unary(
            "RewindRun",
            lambda s: runs_pb2.RewindRunRequest(project="p1", run_id="r1", step=0),
        ),
    ),
    "RunService/UpdateRunConfig": (
        "write",
        unary(
            "UpdateRunConfig",
            lambda s: runs_pb2.UpdateRunConfigRequest(project="p1", run_id="r1"),
        ),
    ),
    "RunService/UpdateRunTags": (
        "write",
        unary(
            "UpdateRunTags",
            lambda s: runs_pb2.UpdateRunTagsRequest(project="p1", run_id="r1", add=["t"]),
        ),
    ),
    "RunService/ListSeries": (
        "read",
        unary("ListSeries", lambda s: runs_pb2.ListSeriesRequest(selector=selector(s))),
    ),
    "RunService/ReadSeries": (
        "read",
        streaming("ReadSeries", lambda s: runs_pb2.ReadSeriesRequest(selector=selector(s))),
    ),
    "TokenService/CreateToken": (
        "admin",
        token_rpc(
            "CreateToken", lambda s: tokens_pb2.CreateTokenRequest(project="p1", role="read")
        ),
    ),
    "TokenService/ListTokens": (
        "admin",
        token_rpc("ListTokens", lambda s: tokens_pb2.ListTokensRequest(project="p1")),
    ),
    "TokenService/RevokeToken": (
        "admin",
        token_rpc(
            "RevokeToken",
            lambda s: tokens_pb2.RevokeTokenRequest(token_id=token_id(s.tokens.spare)),
        ),
    ),
}

# case -> (code, reason) for a call that needs `role`; None: allowed.
REFUSED = {
    "none": (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING"),
    "unknown": (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"),
    "expired": (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED"),
    "revoked": (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"),
    "other": (grpc.StatusCode.PERMISSION_DENIED, "PROJECT_NOT_ALLOWED"),
}


def expected(case: str, role: str) -> tuple[grpc.StatusCode, str] | None:
    if case == "read":
        return (grpc.StatusCode.PERMISSION_DENIED, "ROLE_INSUFFICIENT") if role != "read" else None
    return REFUSED.get(case)


def test_the_table_covers_every_rpc() -> None:
    methods = {
        f"{service.name}/{method.name}"
        for module in (ingest_pb2, runs_pb2, tokens_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(RPCS) == methods
    assert {m.removeprefix("/stepstream.v1.") for m in RPC_RULES} == methods


@pytest.mark.parametrize("method", sorted(RPCS))
@pytest.mark.parametrize("case", ["none", "unknown", "expired", "revoked", "other", "read"])
async def test_every_rpc_checks_its_token(secured: Secured, method: str, case: str) -> None:
    role, call = RPCS[method]
    want, project = expected(case, role), "p1"
    if (method, case) == ("TokenService/RevokeToken", "other"):
        # RevokeToken needs admin in the caller's own scope, never names the revoked token's
        # project (test_token_rpcs.py): the p2 write token is refused in p2.
        want, project = (grpc.StatusCode.PERMISSION_DENIED, "ROLE_INSUFFICIENT"), "p2"
    if want is None:  # a read-only token on a read: allowed
        await call(secured, secured.md(secured.tokens.read))
        return
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(secured, secured.md(secured.tokens.case(case)))
    assert (caught.value.code(), error_info(caught.value).reason) == want
    info = error_info(caught.value)
    assert info.domain == "stepstream.dev"
    if want[0] is grpc.StatusCode.PERMISSION_DENIED:
        assert info.metadata["project"] == project
        assert info.metadata["required_role"] == role


@pytest.mark.parametrize("method", sorted(RPCS))
async def test_a_token_of_the_project_with_the_role_passes_every_check(
    secured: Secured, method: str
) -> None:
    """The token checks let a right token through (a write token, an admin one where the call
    needs admin); whatever the call answers then is the handler's (e.g. NOT_FOUND), never an
    auth reason."""
    role, call = RPCS[method]
    token = secured.tokens.admin1 if role == "admin" else secured.tokens.write
    try:
        await call(secured, secured.md(token))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() not in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        ), exc


async def test_credentials_of_another_scheme_are_token_invalid(secured: Secured) -> None:
    stub = runs_pb2_grpc.RunServiceStub(secured.channel)
    for value in ("Basic dXNlcjpwYXNz", "Bearer", "sst_not-a-token"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListRuns(
                runs_pb2.ListRunsRequest(project="p1"), metadata=(("authorization", value),)
            )
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert error_info(caught.value).reason == "TOKEN_INVALID"


async def test_the_default_project_is_the_project_of_an_empty_one(secured: Secured) -> None:
    stub = runs_pb2_grpc.RunServiceStub(secured.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListRuns(runs_pb2.ListRunsRequest(), metadata=secured.md(secured.tokens.write))
    info = error_info(caught.value)
    assert (info.reason, info.metadata["project"]) == ("PROJECT_NOT_ALLOWED", "default")


async def test_forking_from_another_project_needs_read_there(secured: Secured) -> None:
    stub = runs_pb2_grpc.RunServiceStub(secured.channel)
    fork = runs_pb2.CreateRunRequest(
        project="p1", run_id="child", fork_incarnation_id=secured.p2_incarnation, fork_step=0
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateRun(fork, metadata=secured.md(secured.tokens.write))
    info = error_info(caught.value)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert (info.reason, info.metadata["project"], info.metadata["required_role"]) == (
        "PROJECT_NOT_ALLOWED",
        "p2",
        "read",
    )
    resp = await stub.CreateRun(fork, metadata=secured.md(secured.tokens.admin))
    assert resp.run.incarnations[0].parent_run_id == "parent"


async def test_reading_an_incarnation_checks_the_project_it_belongs_to(secured: Secured) -> None:
    stub = runs_pb2_grpc.RunServiceStub(secured.channel)
    # The selector says p1, but the incarnation is p2's.
    sel = runs_pb2.SeriesSelector(project="p1", incarnation_id=secured.p2_incarnation)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListSeries(
            runs_pb2.ListSeriesRequest(selector=sel), metadata=secured.md(secured.tokens.read)
        )
    info = error_info(caught.value)
    assert (info.reason, info.metadata["project"]) == ("PROJECT_NOT_ALLOWED", "p2")
    own = runs_pb2.SeriesSelector(incarnation_id=secured.p1_incarnation)
    await stub.ListSeries(
        runs_pb2.ListSeriesRequest(selector=own), metadata=secured.md(secured.tokens.read)
    )


async def test_health_needs_no_token(secured: Secured) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    resp = await health_pb2_grpc.HealthStub(secured.channel).Check(
        health_pb2.HealthCheckRequest(service="")
    )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_malformed_request_with_a_valid_token_is_invalid_argument(
    secured: Secured,
) -> None:
    call = secured.channel.unary_unary("/stepstream.v1.RunService/GetRun")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"\xff\xff\xff", metadata=secured.md(secured.tokens.read))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"\xff\xff\xff")
    assert error_info(caught.value).reason == "TOKEN_MISSING"


async def test_the_client_sends_its_token(secured: Secured) -> None:
    import stepstream

    address = secured.service.address

    def run() -> list[str]:
        with stepstream.Run(
            "client", project="p1", address=address, token=secured.tokens.write
        ) as r:
            r.log_metrics({"loss": 1.0}, step=1)
        series = stepstream.read_series(
            "client", "loss", project="p1", address=address, token=secured.tokens.read
        )
        assert series.values == [1.0]
        return [
            i.run_id
            for i in stepstream.list_runs(project="p1", address=address, token=secured.tokens.read)
        ]

    assert "client" in await asyncio.to_thread(run)

    def refused() -> stepstream.RPCError:
        with pytest.raises(stepstream.RPCError) as caught:
            stepstream.Run("client2", project="p1", address=address, token=secured.tokens.read)
        return caught.value

    err = await asyncio.to_thread(refused)
    assert (err.reason, err.metadata["required_role"]) == ("ROLE_INSUFFICIENT", "write")


# -- every web route --------------------------------------------------------------------------

# route -> a URL of it on p1's run r1
ROUTES = {
    "/": "/?project=p1",
    "/compare": "/compare?project=p1&run=r1",
    "/runs/{project}/{run_id}": "/runs/p1/r1",
    "/experiments/{project}/{experiment}": "/experiments/p1/e1",
    "/lineage/{project}/{run_id}": "/lineage/p1/r1",
    "/api/runs": "/api/runs?project=p1",
    "/api/runs/{project}/{run_id}": "/api/runs/p1/r1",
    "/api/series": "/api/series?project=p1&run_id=r1&name=loss",
    "/api/summaries": "/api/summaries?project=p1&run_id=r1",
    "/api/lineage/{project}/{run_id}": "/api/lineage/p1/r1",
}
HTTP = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}


def test_the_web_table_covers_every_route(secured_app_routes: set[str]) -> None:
    assert set(ROUTES) == set(WEB_RULES) == secured_app_routes - OPEN_ROUTES


@pytest.fixture
def secured_app_routes() -> set[str]:
    from stepstream_server.web.app import WebView

    app = WebView(None, None).app  # type: ignore[arg-type]
    return {
        r.resource.canonical
        for r in app.router.routes()
        if r.resource is not None and not r.resource.canonical.startswith("/static")
    } | OPEN_ROUTES


async def web_get(
    s: Secured, url: str, *, header: str | None = None, cookie: str | None = None
) -> tuple[int, str, Any]:
    assert s.service.web is not None
    headers = {"Authorization": f"Bearer {header}"} if header else {}
    cookies = {"stepstream_token": cookie} if cookie else {}
    async with (
        aiohttp.ClientSession(cookies=cookies) as http,
        http.get(s.service.web.url + url, headers=headers, allow_redirects=False) as resp,
    ):
        return resp.status, await resp.text(), resp.headers


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("case", ["none", "unknown", "expired", "revoked", "other", "read"])
async def test_every_web_route_checks_its_token(secured: Secured, route: str, case: str) -> None:
    url = ROUTES[route]
    api = url.startswith("/api/")
    token = secured.tokens.case(case)
    if api:  # the JSON API takes the bearer header
        status, body, headers = await web_get(secured, url, header=token)
    else:  # pages take the login cookie
        status, body, headers = await web_get(secured, url, cookie=token)
    want = expected(case, "read")
    if want is None:
        assert status == 200, body
        return
    code, reason = want
    if not api and case == "none":
        assert status == 303
        assert headers["Location"].startswith("/login?next=")
        return
    assert status == HTTP[code.name], body
    if api:
        error = json.loads(body)["error"]
        assert (error["status"], error["reason"]) == (code.name, reason)
        if code is grpc.StatusCode.PERMISSION_DENIED:
            assert error["metadata"]["project"] == "p1"
            assert error["metadata"]["required_role"] == "read"
    else:
        assert reason in body


async def test_login_keeps_the_token_in_an_httponly_samesite_cookie(secured: Secured) -> None:
    assert secured.service.web is not None
    base = secured.service.web.url
    # unsafe: keep cookies of an IP address (the service's 127.0.0.1)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(base + "/login?next=/runs/p1/r1") as resp:
            page = await resp.text()
            assert resp.status == 200 and 'name="token"' in page
            csrf_cookie = resp.headers["Set-Cookie"]
        assert csrf_cookie.startswith("stepstream_csrf=")
        assert "HttpOnly" in csrf_cookie and "SameSite=Strict" in csrf_cookie
        csrf = csrf_field(page)
        async with http.post(
            base + "/login",
            data={"token": secured.tokens.unknown, "next": "/runs/p1/r1", "csrf": csrf},
            allow_redirects=False,
        ) as resp:
            page = await resp.text()
            assert resp.status == 401 and "TOKEN_INVALID" in page
            assert csrf_field(page) == csrf  # the browser keeps its value
        async with http.post(
            base + "/login",
            data={"token": secured.tokens.read, "next": "/runs/p1/r1", "csrf": csrf},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/runs/p1/r1"
            cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        async with http.get(base + "/runs/p1/r1", allow_redirects=False) as resp:
            assert resp.status == 200
        async with http.get(base + "/login") as resp:
            assert 'action="/logout"' in await resp.text()  # signed in: a sign-out form
        async with http.post(base + "/logout", data={"csrf": csrf}, allow_redirects=False) as resp:
            assert resp.status == 303
        async with http.get(base + "/runs/p1/r1", allow_redirects=False) as resp:
            assert resp.status == 303


async def login_post(
    s: Secured, path: str, data: dict[str, str], cookies: dict[str, str]
) -> tuple[int, str, list[str]]:
    """Status, body and the cookies set (names) of a POST to the login or logout route."""
    assert s.service.web is not None
    async with (
        aiohttp.ClientSession(cookies=cookies) as http,
        http.post(s.service.web.url + path, data=data, allow_redirects=False) as resp,
    ):
        return resp.status, await resp.text(), list(resp.cookies)


@pytest.mark.parametrize("path", ["/login", "/logout"])
@pytest.mark.parametrize(
    ("cookie", "field", "reason", "message"),
    [
        (None, None, "CSRF_MISSING", "the stepstream_csrf cookie is missing"),
        (None, "v" * 43, "CSRF_MISSING", "the stepstream_csrf cookie is missing"),
        ("v" * 43, None, "CSRF_MISSING", "the form&#39;s csrf field is missing"),
        ("v" * 43, "w" * 43, "CSRF_MISMATCH", "does not match this browser"),
        ("v" * 43, "v" * 42, "CSRF_MISMATCH", "does not match this browser"),
    ],
)
async def test_login_and_logout_posts_need_the_csrf_double_submit(
    secured: Secured,
    path: str,
    cookie: str | None,
    field: str | None,
    reason: str,
    message: str,
) -> None:
    """A POST without the CSRF cookie, without the field, or with the two different is 403
    with the reason and what is wrong; a refused login sets no token cookie, a refused
    logout leaves the session signed in."""
    cookies = {"stepstream_token": secured.tokens.read}
    if cookie is not None:
        cookies["stepstream_csrf"] = cookie
    data = {"token": secured.tokens.read, "next": "/"}
    if field is not None:
        data["csrf"] = field
    status, body, set_cookies = await login_post(secured, path, data, cookies)
    assert status == 403, body
    assert reason in body and message in body, body
    assert "stepstream_token" not in set_cookies  # neither set (login) nor deleted (logout)
    good = await login_post(
        secured, path, {**data, "csrf": "v" * 43}, {"stepstream_csrf": "v" * 43}
    )
    assert good[0] == 303


async def test_login_never_redirects_off_the_site(secured: Secured) -> None:
    csrf = {"stepstream_csrf": "v" * 43}
    data = {"token": secured.tokens.read, "next": "//evil.example/", "csrf": "v" * 43}
    assert secured.service.web is not None
    async with (
        aiohttp.ClientSession(cookies=csrf) as http,
        http.post(secured.service.web.url + "/login", data=data, allow_redirects=False) as resp,
    ):
        assert resp.headers["Location"] == "/"


async def test_the_project_list_shows_only_what_the_token_may_read(secured: Secured) -> None:
    _, body, _ = await web_get(secured, "/?project=p1", cookie=secured.tokens.read)
    assert "Other projects" not in body
    _, body, _ = await web_get(secured, "/?project=p1", cookie=secured.tokens.admin)
    assert re.search(r"Other projects: .*p2", body)


# -- tokens in the store, by the CLI -----------------------------------------------------------


def tokens_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepstream.cli", "tokens", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_tokens_create_list_revoke(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = tokens_cli(data, "create", "--project", "p1", "--role", "write", "--name", "ci")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert re.fullmatch(r"sst_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", token)
    token_id = token.split("_")[1]
    listed = tokens_cli(data, "list", "--json")
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["project"], r["role"], r["state"], r["name"]) for r in rows] == [
        (token_id, "p1", "write", "active", "ci")
    ]
    # Only the hash is stored.
    store = TokenStore(Settings(data_dir=data).store_url)
    try:
        record = store.get(token_id)
        assert record is not None and token.split("_", 2)[2] not in repr(record)
    finally:
        store.close()
    assert token not in listed.stdout and token not in tokens_cli(data, "list").stdout
    assert tokens_cli(data, "revoke", token_id).returncode == 0
    assert json.loads(tokens_cli(data, "list", "--json").stdout)[0]["state"] == "revoked"
    again = tokens_cli(data, "revoke", token_id)
    assert again.returncode == 1 and "already revoked" in again.stderr
    missing = tokens_cli(data, "revoke", "0123456789abcdef")
    assert missing.returncode == 4 and "does not exist" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--project", "p1", "--role", "write", "--expires", "soon"], "--expires must be"),
        (["--project", "p1", "--role", "write", "--expires", "0d"], "--expires must be"),
        (["--project", "bad project", "--role", "read"], "--project 'bad project'"),
        (["--project", "p1", "--role", "owner"], "invalid choice: 'owner'"),
    ],
)
def test_tokens_create_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = tokens_cli(tmp_path / "data", "create", *args)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "data").exists() or "sst_" not in result.stdout


def test_tokens_expire(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = tokens_cli(data, "create", "--project", "*", "--role", "read", "--expires", "30d")
    row = json.loads(tokens_cli(data, "list", "--json").stdout)[0]
    assert made.returncode == 0
    assert row["project"] == "*"
    assert row["expires_at"] - row["created_at"] == pytest.approx(30 * 86400)


@pytest.mark.stores("sqlite", "postgresql")
async def test_tokens_live_in_either_store(auth_settings: Settings, store_kind: str) -> None:
    service = await Service.start(auth_settings)
    try:
        tokens = make_tokens(auth_settings.store_url)
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = runs_pb2_grpc.RunServiceStub(channel)
            await stub.ListRuns(
                runs_pb2.ListRunsRequest(project="p1"),
                metadata=(("authorization", f"Bearer {tokens.read}"),),
            )
            store = TokenStore(auth_settings.store_url)
            try:
                token_id = tokens.read.split("_")[1]
                assert store.revoke(token_id, time.time())
            finally:
                store.close()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListRuns(
                    runs_pb2.ListRunsRequest(project="p1"),
                    metadata=(("authorization", f"Bearer {tokens.read}"),),
                )
            assert error_info(caught.value).reason == "TOKEN_INVALID"
    finally:
        await service.stop()


# -- where the service may listen, and what it logs -------------------------------------------


@pytest.mark.parametrize(
    ("flag", "address"),
    [
        ("--address", "0.0.0.0:50051"),
        ("--address", "10.1.2.3:50051"),
        ("--web-address", "[::]:8080"),
    ],
)
def test_a_non_loopback_bind_needs_auth_or_insecure(flag: str, address: str) -> None:
    binds = {"--address": "127.0.0.1:50051", flag: address}
    with pytest.raises(
        ValueError, match=f"{re.escape(flag)} {re.escape(address)} is not a loopback"
    ):
        check_binding(SecuritySettings(), binds)
    check_binding(SecuritySettings(auth="required"), binds)
    check_binding(SecuritySettings(insecure=True), binds)


def test_loopback_binds_need_nothing() -> None:
    for address in ("127.0.0.1:1", "localhost:1", "[::1]:1", "127.3.4.5:1", "unix:/tmp/s"):
        check_binding(SecuritySettings(), {"--address": address})


def test_serve_refuses_a_non_loopback_address_and_says_why(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stepstream_server.cli",
            "serve",
            "--address",
            "0.0.0.0:0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "--address 0.0.0.0:0 is not a loopback address" in result.stderr
    assert "--auth required" in result.stderr and "--insecure" in result.stderr


def test_tokens_never_appear_in_the_service_log(tmp_path: Path) -> None:
    from conftest import free_port
    from procs import ServiceProcess

    data = tmp_path / "data"
    token = tokens_cli(data, "create", "--project", "p1", "--role", "write").stdout.strip()
    bad, _ = new_token("p1", "write")
    svc = ServiceProcess(
        data, None, free_port(), extra=["--auth", "required", "--log-level", "DEBUG"]
    ).start()
    try:
        import stepstream

        with stepstream.Run("logged", project="p1", address=svc.address, token=token) as run:
            run.log_metrics({"loss": 0.5}, step=1)
        for attempt in (bad, token[:-1] + "x", "garbage"):
            with pytest.raises(stepstream.RPCError):
                stepstream.list_runs(project="p1", address=svc.address, token=attempt)
        with pytest.raises(stepstream.RPCError):
            stepstream.list_runs(project="p2", address=svc.address, token=token)
    finally:
        svc.terminate()
    log = (tmp_path / f"service-{svc.port}.log").read_text()
    assert "stepstream listening" in log  # the log was captured
    for secret in (token, token.split("_")[2], bad, bad.split("_")[2]):
        assert secret not in log


async def test_the_cli_sends_its_token(secured: Secured, monkeypatch: pytest.MonkeyPatch) -> None:
    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run(
            [sys.executable, "-m", "stepstream.cli", "runs", "list", "--project", "p1",
             "--address", secured.service.address, *args],
            capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
        )  # fmt: skip

    good = await asyncio.to_thread(cli, "--token", secured.tokens.read)
    assert good.returncode == 0 and "r1" in good.stdout, good.stderr
    from_env = await asyncio.to_thread(cli, env={"STEPSTREAM_TOKEN": secured.tokens.read})
    assert from_env.returncode == 0 and "r1" in from_env.stdout, from_env.stderr
    missing = await asyncio.to_thread(cli)
    assert missing.returncode == 1 and "[TOKEN_MISSING]" in missing.stderr
    other = await asyncio.to_thread(cli, "--token", secured.tokens.other)
    assert other.returncode == 1 and "[PROJECT_NOT_ALLOWED]" in other.stderr


async def test_a_token_the_store_cannot_check_is_unavailable_and_retryable(
    secured: Secured,
) -> None:
    """The token store's connection is gone (closed under the service): the call fails with
    UNAVAILABLE STORE_UNAVAILABLE, the one code clients retry, never as a token error."""
    assert secured.service.security is not None and secured.service.security.tokens is not None
    secured.service.security.tokens.close()
    stub = runs_pb2_grpc.RunServiceStub(secured.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListRuns(
            runs_pb2.ListRunsRequest(project="p1"), metadata=secured.md(secured.tokens.read)
        )
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "STORE_UNAVAILABLE"
