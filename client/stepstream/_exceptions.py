"""Exceptions raised by stepstream.

Every exception the client raises on purpose derives from `StepstreamError`::

    StepstreamError
    ├── RPCError               a call to the service failed: gRPC `code`, AIP-193 `reason`,
    │                          `metadata` and `message`
    ├── InvalidArgumentError   bad input caught locally, before anything is sent
    │                          (also a ValueError)
    ├── RunClosedError         the Run was closed (or its sender stopped for good)
    │                          (also a RuntimeError)
    ├── WaitTimeoutError       wait() or close() ran out of time (also a TimeoutError)
    └── MissingExtraError      a feature needs an optional extra that is not installed,
                               e.g. `pip install 'stepstream[yaml]'` (also an ImportError)

gRPC's own `grpc.RpcError` never escapes: it is translated into `RPCError` once, where a call
is made (`RPCError.from_grpc`), by unpacking the `google.rpc.Status` that the service puts in
the `grpc-status-details-bin` trailing metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "InvalidArgumentError",
    "MissingExtraError",
    "RPCError",
    "RunClosedError",
    "StepstreamError",
    "WaitTimeoutError",
]

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


class StepstreamError(Exception):
    """Base class of every error stepstream raises."""


class InvalidArgumentError(StepstreamError, ValueError):
    """An argument was rejected locally; the message names the offending field."""


class RunClosedError(StepstreamError, RuntimeError):
    """The Run is closed, so it cannot log or change anything any more."""


class WaitTimeoutError(StepstreamError, TimeoutError):
    """`wait()` or `close()` gave up before everything was acknowledged."""


class PointsRejectedError(StepstreamError):
    """With `Run(on_rejection="raise")`: the service rejected points, raised at the next log
    call. `error` is the first rejection (an IngestError: series, reason, count, steps)."""

    def __init__(self, error: Any) -> None:
        self.error = error
        super().__init__(f"the service rejected points: {error}")


class MissingExtraError(StepstreamError, ImportError):
    """A feature needs an optional extra of the client that is not installed.

    Attributes:
        extra: the extra to install, e.g. "yaml" for `pip install 'stepstream[yaml]'`.
    """

    def __init__(self, feature: str, extra: str, module: str) -> None:
        self.extra = extra
        super().__init__(
            f"{feature} needs the {extra!r} extra ({module} is not installed):"
            f" pip install 'stepstream[{extra}]'",
            name=module,
        )


class RPCError(StepstreamError):
    """A call to the stepstream service failed.

    Attributes:
        code: the gRPC status code, e.g. `grpc.StatusCode.NOT_FOUND`.
        message: the human-readable message from the service.
        reason: the AIP-193 `ErrorInfo.reason` (UPPER_SNAKE, e.g. `RUN_NOT_FOUND`), or "" when
            the service sent none (e.g. a connection failure).
        domain: the `ErrorInfo.domain`, or "".
        metadata: the `ErrorInfo.metadata`: every value the message quotes.
    """

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        return f"{text} [{self.reason}]" if self.reason else text

    def __repr__(self) -> str:
        return (
            f"RPCError(code={self.code.name}, message={self.message!r}, reason={self.reason!r}, "
            f"metadata={self.metadata!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle their args by default; keep every attribute instead.
        return (
            _rebuild_rpc_error,
            (self.code.name, self.message, self.reason, self.domain, self.metadata),
        )

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> RPCError:
        """Build an RPCError from a `google.rpc.Status` (as carried in an AppendPoints answer)."""
        code = _CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
        reason, domain, metadata = _error_info(status)
        return cls(code, status.message, reason=reason, domain=domain, metadata=metadata)

    @classmethod
    def from_grpc(cls, error: grpc.RpcError) -> RPCError:
        """Translate a `grpc.RpcError` (sync or asyncio) into an RPCError.

        The status code and message come from the call; reason, domain and metadata from the
        `google.rpc.Status` in the trailing metadata, when the service sent one.
        """
        code = _call_attr(error, "code")
        details = _call_attr(error, "details")
        trailers = _call_attr(error, "trailing_metadata")
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
        message = details if isinstance(details, str) else str(error)
        status = _status_from_trailers(trailers)
        if status is None:
            return cls(code, message)
        reason, domain, metadata = _error_info(status)
        return cls(code, status.message or message, reason=reason, domain=domain, metadata=metadata)


def reworded(error: RPCError, message: str) -> RPCError:
    """`error` (its code, reason, domain and metadata) with the client's own message."""
    return RPCError(
        error.code, message, reason=error.reason, domain=error.domain, metadata=error.metadata
    )


def _rebuild_rpc_error(
    code: str, message: str, reason: str, domain: str, metadata: dict[str, str]
) -> RPCError:
    return RPCError(grpc.StatusCode[code], message, reason=reason, domain=domain, metadata=metadata)


def _call_attr(error: grpc.RpcError, name: str) -> Any:
    """Call `error.<name>()` if the error has it (every grpc.Call does; a bare RpcError not)."""
    method = getattr(error, name, None)
    if method is None:
        return None
    try:
        return method()
    except Exception:  # an error object that cannot say: treat as absent
        return None


def _status_from_trailers(trailers: Any) -> status_pb2.Status | None:
    if not trailers:
        return None
    pairs: Iterable[Any] = trailers
    for pair in pairs:
        key, value = pair[0], pair[1]
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # garbage in the trailer: fall back to code and message
                return None
    return None


def _error_info(status: status_pb2.Status) -> tuple[str, str, dict[str, str]]:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, info.domain, dict(info.metadata)
    return "", "", {}
