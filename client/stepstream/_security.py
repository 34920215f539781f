"""How the client's channels authenticate: TLS (system roots, or a CA file), a client
certificate for mTLS, and a token sent as `authorization: Bearer <token>` on every call.

Every channel the client builds (Run's, the read functions', the CLI's) takes the same keyword
arguments, each falling back on an environment variable:

    tls=True                 TLS with the system's roots          $STEPSTREAM_TLS=1
    root_certificates=PATH   TLS trusting this CA (PEM; implies tls)  $STEPSTREAM_TLS_CA
    client_certificate=PATH  mTLS: this certificate chain (PEM)   $STEPSTREAM_TLS_CERT
    client_key=PATH          ... and its key (PEM)                $STEPSTREAM_TLS_KEY
    token="sst_..."          the access token                     $STEPSTREAM_TOKEN

Paths may also be the PEM bytes themselves.
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import grpc
import grpc.aio

from ._exceptions import InvalidArgumentError

# typing.Unpack types the security keywords of the read functions. Python 3.10 has none at
# run time (no dependency for it): annotations stay unevaluated strings there, and type
# checkers take it from typing_extensions.
if sys.version_info >= (3, 11):
    from typing import Unpack
elif TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Unpack

__all__ = ["Connection", "Pem", "Security", "Unpack", "resolve_security"]

TLS_ENV = "STEPSTREAM_TLS"
CA_ENV = "STEPSTREAM_TLS_CA"
CERT_ENV = "STEPSTREAM_TLS_CERT"
KEY_ENV = "STEPSTREAM_TLS_KEY"
TOKEN_ENV = "STEPSTREAM_TOKEN"

Pem = str | os.PathLike[str] | bytes


class Connection(TypedDict, total=False):
    """The security keyword arguments of Run, the read functions and resolve_target."""

    tls: bool | None
    root_certificates: Pem | None
    client_certificate: Pem | None
    client_key: Pem | None
    token: str | None


@dataclass(frozen=True)
class Security:
    """Resolved credentials: PEM bytes, and the token (never shown by repr)."""

    tls: bool = False
    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None
    token: str | None = None

    def __repr__(self) -> str:
        return (
            f"Security(tls={self.tls}, root_certificates={self.root_certificates is not None},"
            f" client_certificate={self.client_certificate is not None},"
            f" token={'set' if self.token else None})"
        )

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.client_key,
            certificate_chain=self.client_certificate,
        )

    def channel(self, target: str, options: Sequence[tuple[str, Any]]) -> grpc.Channel:
        if self.tls:
            channel = grpc.secure_channel(target, self._credentials(), options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        if self.token:
            channel = grpc.intercept_channel(channel, _SyncBearer(self.token))
        return channel

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The token as call metadata: what bidirectional streams must pass themselves (an
        asyncio stream-stream interceptor would route every write through a queue and two
        tasks, and return from write() before the request is sent)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def aio_channel(self, target: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        """Unary and server-streaming calls get the token from interceptors; a stream-stream
        call passes `metadata` (the sender's AppendPoints does)."""
        interceptors = _aio_bearer(self.token) if self.token else None
        if self.tls:
            return grpc.aio.secure_channel(
                target, self._credentials(), options=options, interceptors=interceptors
            )
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def _pem(value: Pem | None, what: str, env: str) -> bytes | None:
    if value is None:
        text = os.environ.get(env, "").strip()
        if not text:
            return None
        value, what = text, f"${env}"
    if isinstance(value, bytes):
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise InvalidArgumentError(
            f"{what} must be a path or PEM bytes, got {type(value).__name__}"
        )
    path = Path(value)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(
            f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}"
        ) from None


def resolve_security(
    *,
    tls: bool | None = None,
    root_certificates: Pem | None = None,
    client_certificate: Pem | None = None,
    client_key: Pem | None = None,
    token: str | None = None,
) -> Security:
    """Credentials from the arguments, else from the environment (see the module doc).
    Raises InvalidArgumentError naming the argument that cannot be used."""
    if tls is not None and not isinstance(tls, bool):
        raise InvalidArgumentError(f"tls must be True, False or None, got {tls!r}")
    roots = _pem(root_certificates, "root_certificates", CA_ENV)
    cert = _pem(client_certificate, "client_certificate", CERT_ENV)
    key = _pem(client_key, "client_key", KEY_ENV)
    if (cert is None) != (key is None):
        raise InvalidArgumentError(
            "client_certificate and client_key go together: give both or neither"
            f" (or ${CERT_ENV} and ${KEY_ENV})"
        )
    if tls is False and (root_certificates is not None or client_certificate is not None):
        raise InvalidArgumentError("tls=False contradicts root_certificates/client_certificate")
    if tls is None:
        tls = os.environ.get(TLS_ENV, "").strip().lower() in ("1", "true", "yes")
        tls = tls or roots is not None or cert is not None
    elif tls is False:  # plain text, whatever the environment says about certificates
        roots = cert = key = None
    if token is None:
        token = os.environ.get(TOKEN_ENV, "").strip() or None
    elif not isinstance(token, str) or not token.strip() or any(c.isspace() for c in token):
        raise InvalidArgumentError("token must be a non-empty string without spaces")
    return Security(tls, roots, cert, key, token)


# -- the token on every call -----------------------------------------------------------------


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


def _with_token(metadata: Any, token: str) -> list[tuple[str, str | bytes]]:
    return [*(metadata or ()), ("authorization", f"Bearer {token}")]


class _SyncBearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, d: Any) -> _Details:
        return _Details(
            d.method,
            d.timeout,
            _with_token(d.metadata, self._token),
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def _aio_details(d: Any, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(d.metadata or ()))
    metadata.add("authorization", f"Bearer {token}")
    return grpc.aio.ClientCallDetails(
        d.method, d.timeout, metadata, d.credentials, d.wait_for_ready
    )


def _aio_bearer(token: str) -> Any:
    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return await continuation(_aio_details(details, token), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
        async def intercept_unary_stream(
            self, continuation: Any, details: Any, request: Any
        ) -> Any:
            return await continuation(_aio_details(details, token), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
        async def intercept_stream_unary(
            self, continuation: Any, details: Any, requests: Any
        ) -> Any:
            return await continuation(_aio_details(details, token), requests)

    return [UnaryUnary(), UnaryStream(), StreamUnary()]
