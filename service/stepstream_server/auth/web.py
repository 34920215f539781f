"""The web view's side of `--auth required`: one aiohttp middleware checks every request
against WEB_RULES (all web routes read), and the login page keeps the token in an HttpOnly,
SameSite=Strict cookie (Secure over HTTPS). The JSON API also takes `Authorization: Bearer`.

A page asked for without a token redirects to /login; a page with a bad token shows the
login page with the reason (401); the API answers JSON errors like every other (401/403).
Static files and the login and logout routes need no token.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from .. import errors
from .policy import ProjectOf, project
from .tokens import Authenticator, Principal, bearer

COOKIE = "stepstream_token"
PRINCIPAL = web.RequestKey("stepstream.principal", Principal)  # set by the middleware
OPEN_PATHS = ("/login", "/logout")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _from_path(req: web.Request) -> str:
    return req.match_info.get("project", "")


def _from_query(req: web.Request) -> str:
    return req.query.get("project", "")


# Route (aiohttp's canonical path) -> where the project of a request comes from. Every route
# reads; /api/series and /api/summaries may name an incarnation (its own project is checked).
WEB_RULES: dict[str, Callable[[web.Request], str]] = {
    "/": _from_query,
    "/compare": _from_query,
    "/runs/{project}/{run_id}": _from_path,
    "/experiments/{project}/{experiment}": _from_path,
    "/lineage/{project}/{run_id}": _from_path,
    "/api/runs": _from_query,
    "/api/runs/{project}/{run_id}": _from_path,
    "/api/series": _from_query,
    "/api/summaries": _from_query,
    "/api/lineage/{project}/{run_id}": _from_path,
}
SELECTOR_ROUTES = ("/api/series", "/api/summaries")


def may_read(req: web.Request, project_name: str) -> bool:
    """Whether the request's token may read `project_name` (always, without --auth)."""
    principal = req.get(PRINCIPAL)
    return principal is None or principal.may(project_name, "read")


class WebGuard:
    """The middleware and the login routes, over the service's Authenticator."""

    def __init__(
        self,
        authenticator: Authenticator,
        project_of: ProjectOf,
        *,
        secure_cookie: bool,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.project_of = project_of
        self.secure_cookie = secure_cookie
        self.on_failure = on_failure

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/login", self.login_page),
            web.post("/login", self.login),
            web.post("/logout", self.logout),
        ]

    @web.middleware
    async def middleware(self, req: web.Request, handler: Handler) -> web.StreamResponse:
        if req.path in OPEN_PATHS or req.path.startswith("/static/"):
            return await handler(req)
        api = req.path.startswith("/api/")
        try:
            from_header = bearer(req.headers.get("Authorization"))
            token = from_header or req.cookies.get(COOKIE) or None
            if token is None and not api:
                raise web.HTTPSeeOther(f"/login?next={quote(req.path_qs, safe='')}")
            principal = await self.authenticator.principal(token)
            await self._check(req, principal)
        except errors.ServiceError as exc:
            if self.on_failure is not None:
                self.on_failure(exc.reason)
            if exc.code.name == "UNAUTHENTICATED" and not api:
                return self._login_form(req.path_qs, exc, status=401)
            raise
        req[PRINCIPAL] = principal
        return await handler(req)

    async def _check(self, req: web.Request, principal: Principal) -> None:
        resource = req.match_info.route.resource
        route = resource.canonical if resource is not None else ""
        where = WEB_RULES.get(route)
        if where is None:  # no such page (404 follows) or a route with no rule
            return
        incarnation = req.query.get("incarnation_id", "")
        if route in SELECTOR_ROUTES and incarnation and not req.query.get("run_id"):
            owner = await self.project_of(incarnation)
            if owner is not None:
                principal.check(owner, "read")
                return
        principal.check(project(where(req)), "read")

    def _login_form(
        self, next_path: str, err: errors.ServiceError | None, *, status: int = 200
    ) -> web.Response:
        from ..web.pages import render

        return render("login.html", status, err=err, next=_safe_next(next_path))

    async def login_page(self, req: web.Request) -> web.Response:
        return self._login_form(req.query.get("next", "/"), None)

    async def login(self, req: web.Request) -> web.StreamResponse:
        form = await req.post()
        token = str(form.get("token", "")).strip() or None
        next_path = str(form.get("next", "/"))
        try:
            principal = await self.authenticator.principal(token)
        except errors.ServiceError as exc:
            if self.on_failure is not None:
                self.on_failure(exc.reason)
            return self._login_form(next_path, exc, status=401)
        response = web.HTTPSeeOther(_safe_next(next_path))
        max_age: Any = None  # a session cookie, unless the token expires
        if principal.expires_at is not None:
            max_age = max(0, int(principal.expires_at - time.time()))
        response.set_cookie(
            COOKIE,
            token or "",
            httponly=True,
            samesite="Strict",
            secure=self.secure_cookie,
            path="/",
            max_age=max_age,
        )
        raise response

    async def logout(self, req: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response


def _safe_next(path: str) -> str:
    """Where to go after signing in: a path on this site only (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") else "/"
