"""The gRPC side of `--auth required`: one `grpc.aio.ServerInterceptor` checks every call
against policy.RPC_RULES before its handler runs (for AppendPoints, once its `open` message
has arrived). A refused call ends with the reason's status and ErrorInfo; the handler never
sees it. Tokens are never logged."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from .. import errors
from ..servicer import abort
from ..store.tokens import ALL_PROJECTS
from .policy import OPEN_PREFIXES, RPC_RULES, TOKEN_ONLY_PREFIXES, ProjectOf, Rule
from .tokens import Authenticator, Principal, bearer

log = logging.getLogger(__name__)

Counter = Callable[[str], None]


def _token(details: grpc.HandlerCallDetails) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == "authorization":
            return bearer(value if isinstance(value, str) else value.decode())
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """`project_of` looks an incarnation's project up in the store; `on_failure` (optional)
    counts refusals by reason (metrics)."""

    def __init__(
        self, authenticator: Authenticator, project_of: ProjectOf, on_failure: Counter | None = None
    ) -> None:
        self.authenticator = authenticator
        self.project_of = project_of
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

    async def _check(self, token: str | None, rule: Rule | None, request: Any) -> None:
        principal: Principal = await self.authenticator.principal(token)
        if rule is None:
            return
        if type(request).__name__ == "Malformed":  # answered INVALID_ARGUMENT by the handler
            return
        for project, role in await rule.needs(request, self.project_of):
            principal.check(project, role)

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

        async def first_then_rest(requests: AsyncIterator[Any], context: Any) -> Any:
            """The requests again, once the first one (the only one the rule reads) passed."""
            rest = requests.__aiter__()
            try:
                first = await rest.__anext__()
            except StopAsyncIteration:
                await check(token, None, None)  # an empty stream still needs a token
                return _empty()
            await check(token, rule, first)
            return _Replay(first, rest)

        if behavior is not None:
            stream_behavior = behavior

            async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    replay = await first_then_rest(requests, context)
                except errors.ServiceError as exc:
                    await failed(context, exc)
                async for response in stream_behavior(replay, context):
                    yield response

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
            return await streaming(replay, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _Replay:
    """`first`, then the rest of the stream straight from gRPC's own iterator: after the first
    message nothing of the interceptor runs per request (no generator in between)."""

    __slots__ = ("_first", "_rest")

    def __init__(self, first: Any, rest: AsyncIterator[Any]) -> None:
        self._first: Any = first
        self._rest = rest

    def __aiter__(self) -> _Replay:
        return self

    def __anext__(self) -> Awaitable[Any]:
        first = self._first
        if first is _TAKEN:
            return self._rest.__anext__()
        self._first = _TAKEN
        return _value(first)


_TAKEN = object()


async def _value(value: Any) -> Any:
    return value


async def _empty() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover


async def _admin_everywhere(request: Any, project_of: ProjectOf) -> list[tuple[str, str]]:
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
