"""The web view's side of `--auth required`: one aiohttp middleware checks every request
against WEB_RULES (all web routes read), and the login page keeps the token in an HttpOnly,
SameSite=Strict cookie (Secure over HTTPS). The JSON API also takes `Authorization: Bearer`.

A page asked for without a token redirects to /login; a page with a bad token shows the
login page with the reason (401); the API answers JSON errors like every other (401/403).
Static files and the login and logout routes need no token.

Login CSRF: the login and logout POSTs are double-submit checked. Every login page sets a
random value in its own SameSite=Strict cookie (kept while the browser keeps it) and puts the
same value in the form's hidden `csrf` field; a POST whose field is missing or differs from
the cookie (compared in constant time) is refused 403 CSRF_MISSING / CSRF_MISMATCH, so
another site cannot sign a browser in with its own token or out.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import grpc
from aiohttp import web

from .. import errors
from .policy import ProjectOf, project
from .tokens import Authenticator, Principal, bearer

COOKIE = "stepstream_token"
CSRF_COOKIE = "stepstream_csrf"
CSRF_FIELD = "csrf"
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
                return self._login_form(req, req.path_qs, exc, status=401)
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
        self,
        req: web.Request,
        next_path: str,
        err: errors.ServiceError | None,
        *,
        status: int = 200,
    ) -> web.Response:
        """The login page, with this browser's CSRF value in its form (a new one, and its
        cookie, when the browser has none)."""
        from ..web.pages import render

        csrf = req.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        response = render(
            "login.html",
            status,
            err=err,
            next=_safe_next(next_path),
            csrf=csrf,
            signed_in=COOKIE in req.cookies,
        )
        if req.cookies.get(CSRF_COOKIE) != csrf:
            response.set_cookie(
                CSRF_COOKIE,
                csrf,
                httponly=True,
                samesite="Strict",
                secure=self.secure_cookie,
                path="/",
            )
        return response

    async def login_page(self, req: web.Request) -> web.Response:
        return self._login_form(req, req.query.get("next", "/"), None)

    async def login(self, req: web.Request) -> web.StreamResponse:
        form = await req.post()
        next_path = str(form.get("next", "/"))
        refused = _csrf_problem(req, form.get(CSRF_FIELD))
        if refused is not None:
            return self._login_form(req, next_path, refused, status=403)
        token = str(form.get("token", "")).strip() or None
        try:
            principal = await self.authenticator.principal(token)
        except errors.ServiceError as exc:
            if self.on_failure is not None:
                self.on_failure(exc.reason)
            return self._login_form(req, next_path, exc, status=401)
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
        form = await req.post()
        refused = _csrf_problem(req, form.get(CSRF_FIELD))
        if refused is not None:
            return self._login_form(req, "/", refused, status=403)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response


def _csrf_problem(req: web.Request, field: Any) -> errors.ServiceError | None:
    """Why a login/logout POST fails the double-submit check, None when it passes."""
    cookie = req.cookies.get(CSRF_COOKIE, "")
    sent = field if isinstance(field, str) else ""
    if not cookie or not sent:
        missing = "the form's csrf field" if cookie else "the stepstream_csrf cookie"
        return errors.ServiceError(
            grpc.StatusCode.PERMISSION_DENIED,
            "CSRF_MISSING",
            f"{missing} is missing: sign in from this site's login page (reload it)",
        )
    if not hmac.compare_digest(cookie.encode(), sent.encode()):
        return errors.ServiceError(
            grpc.StatusCode.PERMISSION_DENIED,
            "CSRF_MISMATCH",
            "the form's csrf field does not match this browser's stepstream_csrf cookie: "
            "the form did not come from this site's login page (reload it)",
        )
    return None


def _safe_next(path: str) -> str:
    """Where to go after signing in: a path on this site only (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") else "/"
