"""The web view's HTTP side (SPEC §7): an `aiohttp.web` application on the service's event
loop, GET only. JSON under `/api/` (api.py), HTML pages from Jinja2 templates (pages.py),
static files (this package's `static/`, with uPlot built in by `make assets`). Pages send a
Content-Security-Policy that allows no inline script, so a name that slipped through escaping
still could not run."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import errors
from ..reading import Reader
from ..runs import RunManager
from .api import Api, error_json
from .links import base_url, split_address
from .pages import Pages, error_page

if TYPE_CHECKING:
    from ..auth import Security

log = logging.getLogger(__name__)

STOP_TIMEOUT = 5.0  # for requests amid a store read when the view stops
COMMON_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def static_dir() -> Path:
    return Path(str(resources.files(__name__.rpartition(".")[0]) / "static"))


@web.middleware
async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A domain error becomes JSON under /api/, an HTML page elsewhere."""
    try:
        return await handler(request)
    except errors.ServiceError as exc:
        return error_json(exc) if request.path.startswith("/api/") else error_page(exc)


class EarlyClose(logging.Filter):
    """A browser that closes a connection before its answer is written (a page left while it
    loads, a cancelled fetch) is no error of the service: aiohttp's error record of it (with a
    traceback, in some versions and paths) becomes one debug line of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ConnectionError):
            log.debug("web client closed the connection early: %s", exc)
            return False
        return True


EARLY_CLOSE = EarlyClose()


async def headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(COMMON_HEADERS)
    if response.content_type == "text/html":
        response.headers["Content-Security-Policy"] = PAGE_POLICY


class WebView:
    """The web view over RunManager and Reader; `start()` binds, `stop()` closes."""

    def __init__(self, runs: RunManager, reader: Reader, security: Security | None = None) -> None:
        self.runs = runs
        self.reader = reader
        self.url = ""
        self.port = 0
        guard = security.web_guard if security is not None else None
        middlewares: list[Any] = [answer_errors]
        if guard is not None:
            middlewares.append(guard.middleware)
        self.app = web.Application(middlewares=middlewares)
        self.app.on_response_prepare.append(headers)
        if guard is not None:  # the login page and the checks of --auth required
            self.app.add_routes(guard.routes())
        self.app.add_routes(Api(self).routes())
        self.app.add_routes(Pages(self).routes())
        self.app.router.add_static("/static", static_dir(), append_version=False)
        self._runner: web.AppRunner | None = None

    @classmethod
    async def start(
        cls, address: str, runs: RunManager, reader: Reader, security: Security | None = None
    ) -> WebView:
        host, port = split_address(address)
        view = cls(runs, reader, security)
        if EARLY_CLOSE not in logging.getLogger("aiohttp.server").filters:
            logging.getLogger("aiohttp.server").addFilter(EARLY_CLOSE)
        ssl_context = security.ssl_context if security is not None else None
        runner = web.AppRunner(view.app, access_log=None, shutdown_timeout=STOP_TIMEOUT)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        view._runner = runner
        view.port = int(runner.addresses[0][1])
        view.url = base_url(host, view.port, https=ssl_context is not None)
        return view

    async def stop(self) -> None:
        """Stop listening and end the connections still open."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        await runner.cleanup()
