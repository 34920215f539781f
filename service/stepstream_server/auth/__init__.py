"""Security of a running service: TLS (tls.py), tokens (tokens.py, store/tokens.py) and the
checks on every RPC (interceptor.py) and web request (web.py) that `--auth required` turns on.
`Security.start` builds what `server.py` hooks in; the rules live in policy.py."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from ..store import AsyncStore
from ..store.tokens import TokenStore
from .interceptor import AuthInterceptor
from .policy import Lookup
from .settings import SecuritySettings, check_binding
from .tls import bind, server_credentials, server_ssl_context
from .tokens import Authenticator
from .web import WebGuard

__all__ = ["Security", "SecuritySettings", "check_binding", "preflight"]


def preflight(
    settings: SecuritySettings, binds: dict[str, str], metrics_address: str | None = None
) -> None:
    """What can be refused before the service starts anything: the flags together, where it
    listens (check_binding), and the TLS files (read and parsed). Raises ValueError."""
    check_binding(settings, binds, metrics_address)
    server_ssl_context(settings)
    server_credentials(settings)


@dataclass
class Security:
    settings: SecuritySettings
    tokens: TokenStore | None
    interceptors: list[Any]
    web_guard: WebGuard | None
    ssl_context: ssl.SSLContext | None

    @classmethod
    async def start(
        cls,
        settings: SecuritySettings,
        store_url: str,
        store: AsyncStore,
        on_failure: Callable[[str], None] | None = None,
    ) -> Security:
        """After the store is open (its migrations made the token table)."""
        ssl_context = server_ssl_context(settings)
        if not settings.auth_required:
            return cls(settings, None, [], None, ssl_context)

        async def project_of(incarnation_id: str) -> str | None:
            inc = await store.read(lambda s: s.get_incarnation(incarnation_id))
            return None if inc is None else inc.project

        tokens = await asyncio.to_thread(TokenStore, store_url)

        authenticator = Authenticator(tokens)
        return cls(
            settings,
            tokens,
            [AuthInterceptor(authenticator, Lookup(project_of), on_failure)],
            WebGuard(authenticator, project_of, secure_cookie=settings.tls, on_failure=on_failure),
            ssl_context,
        )

    def bind(self, server: grpc.aio.Server, address: str) -> int:
        return bind(server, address, self.settings)

    async def close(self) -> None:
        if self.tokens is not None:
            await asyncio.to_thread(self.tokens.close)
