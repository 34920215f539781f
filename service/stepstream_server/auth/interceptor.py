"""The gRPC side of `--auth required`: one `grpc.aio.ServerInterceptor` checks every call
against policy.RPC_RULES before its handler runs (for AppendPoints, once its `open` message
has arrived). A refused call ends with the reason's status and ErrorInfo; the handler never
sees it. A stream's token is checked again once RECHECK_SECONDS have passed (and at once when
it expires): a revoked or expired token ends its stream after the answers of what the handler
already took (docs/security.md). The checked token's Principal is `current_principal()` in
the handler (the token service filters by it). Tokens are never logged."""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from .. import errors
from ..servicer import abort
from ..store.tokens import ALL_PROJECTS
from .policy import OPEN_PREFIXES, RPC_RULES, TOKEN_ONLY_PREFIXES, Lookup, Rule
from .tokens import Authenticator, Principal, bearer

log = logging.getLogger(__name__)

Counter = Callable[[str], None]

# How long an open stream writes on one check of its token: a revocation ends it within this
# time (a token's expiry, at once). No store read per request.
RECHECK_SECONDS = 1.0

_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "stepstream_principal", default=None
)


def current_principal() -> Principal | None:
    """The Principal of the call being handled (None without --auth)."""
    return _PRINCIPAL.get()


def _token(details: grpc.HandlerCallDetails) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == "authorization":
            return bearer(value if isinstance(value, str) else value.decode())
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """`lookup` finds the project of an incarnation or a token in the store; `on_failure`
    (optional) counts refusals by reason (metrics)."""

    def __init__(
        self, authenticator: Authenticator, lookup: Lookup, on_failure: Counter | None = None
    ) -> None:
        self.authenticator = authenticator
        self.lookup = lookup
        self.on_failure = on_failure

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        try:
            token = _token(details)
        except errors.ServiceError as exc:
            return self._refusing(handler, exc)
        rule = RPC_RULES.get(method)
        if rule is None and not method.startswith(TOKEN_ONLY_PREFIXES):
            rule = _ADMIN_EVERYWHERE  # a method with no rule: fail closed
        return self._guarded(handler, token, rule)

    async def _check(self, token: str | None, rule: Rule | None, request: Any) -> Principal:
        principal: Principal = await self.authenticator.principal(token)
        _PRINCIPAL.set(principal)
        if rule is None:
            return principal
        if type(request).__name__ == "Malformed":  # answered INVALID_ARGUMENT by the handler
            return principal
        for project, role in await rule.needs(request, self.lookup, principal):
            principal.check(project, role)
        return principal

    def _refused(self, exc: errors.ServiceError) -> None:
        if self.on_failure is not None:
            self.on_failure(exc.reason)

    def _refusing(self, handler: Any, exc: errors.ServiceError) -> Any:
        async def refuse(request: Any, context: Any) -> Any:
            self._refused(exc)
            await abort(context, exc)

        async def refuse_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            self._refused(exc)
            await abort(context, exc)
            yield  # pragma: no cover - abort raises

        return _rebuilt(handler, refuse, refuse_stream)

    def _guarded(self, handler: Any, token: str | None, rule: Rule | None) -> Any:
        check = self._check

        async def failed(context: Any, exc: errors.ServiceError) -> None:
            self._refused(exc)
            await abort(context, exc)

        if handler.unary_unary is not None:
            behavior: Any = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                try:
                    await check(token, rule, request)
                except errors.ServiceError as exc:
                    await failed(context, exc)
                return await behavior(request, context)

            return _rebuilt(handler, unary, None)
        if handler.unary_stream is not None:
            behavior = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    await check(token, rule, request)
                except errors.ServiceError as exc:
                    await failed(context, exc)
                async for response in behavior(request, context):
                    yield response

            return _rebuilt(handler, None, unary_stream)
        behavior = handler.stream_stream
        streaming = handler.stream_unary

        authenticator = self.authenticator

        async def recheck() -> None:
            try:
                await authenticator.principal(token)
            except errors.ServiceError as exc:
                self._refused(exc)  # counted now: the stream ends once its answers are out
                raise

        async def first_then_rest(requests: AsyncIterator[Any], context: Any) -> _Replay:
            """The requests again, once the first one (the only one the rule reads) passed."""
            rest = requests.__aiter__()
            try:
                first = await rest.__anext__()
            except StopAsyncIteration:
                await check(token, None, None)  # an empty stream still needs a token
                return _Replay(_TAKEN, _empty(), None, None)
            principal = await check(token, rule, first)
            return _Replay(first, rest, recheck, principal)

        if behavior is not None:
            stream_behavior = behavior

            async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    replay = await first_then_rest(requests, context)
                except errors.ServiceError as exc:
                    await failed(context, exc)
                async for response in stream_behavior(replay, context):
                    yield response
                if replay.refused is not None:  # every request it took is answered
                    await abort(context, replay.refused)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        assert streaming is not None

        async def stream_unary(requests: Any, context: Any) -> Any:
            try:
                replay = await first_then_rest(requests, context)
            except errors.ServiceError as exc:
                await failed(context, exc)
            response = await streaming(replay, context)
            if replay.refused is not None:
                await abort(context, replay.refused)
            return response

        return grpc.stream_unary_rpc_method_handler(
            stream_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _Replay:
    """`first`, then the rest of the stream straight from gRPC's own iterator (no generator in
    between), each request handed over only while the token holds: once RECHECK_SECONDS have
    passed since the last check, or the token's expiry, a request that arrives waits for
    `recheck` (one store read). A refused check ends the requests (the handler answers what it
    took, as on a half-close) and is kept in `refused` for the interceptor to end the call
    with; the request that found it is dropped: nothing after a failed check is stored."""

    __slots__ = ("_due", "_expires_at", "_first", "_recheck", "_rest", "refused")

    def __init__(
        self,
        first: Any,
        rest: AsyncIterator[Any],
        recheck: Callable[[], Awaitable[None]] | None,
        principal: Principal | None,
    ) -> None:
        self._first: Any = first
        self._rest = rest
        self._recheck = recheck
        self._due = time.monotonic() + RECHECK_SECONDS
        self._expires_at = principal.expires_at if principal is not None else None
        self.refused: errors.ServiceError | None = None

    def __aiter__(self) -> _Replay:
        return self

    async def __anext__(self) -> Any:
        first = self._first
        if first is not _TAKEN:
            self._first = _TAKEN
            return first
        if self.refused is not None:
            raise StopAsyncIteration
        request = await self._rest.__anext__()
        if self._recheck is not None and (
            time.monotonic() >= self._due
            or (self._expires_at is not None and time.time() >= self._expires_at)
        ):
            try:
                await self._recheck()
            except errors.ServiceError as exc:
                self.refused = exc
                raise StopAsyncIteration from None
            self._due = time.monotonic() + RECHECK_SECONDS
        return request


_TAKEN = object()


async def _empty() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover


async def _admin_everywhere(
    request: Any, lookup: Lookup, principal: Principal
) -> list[tuple[str, str]]:
    return [(ALL_PROJECTS, "admin")]


_ADMIN_EVERYWHERE = Rule(_admin_everywhere)


def _rebuilt(handler: Any, unary: Any, streaming: Any) -> Any:
    """A handler of the same kind and (de)serializers as `handler` with new behaviour."""
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(streaming, **kw)
