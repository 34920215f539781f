"""Domain errors: a gRPC status code, an AIP-193 reason and the values quoted in the message.

The servicer turns a `ServiceError` into a `google.rpc.Status` with an `ErrorInfo`; nothing below
the servicer knows about protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

DOMAIN = "stepstream.dev"


@dataclass
class ServiceError(Exception):
    """A failure a client can act on. (Not frozen: raising sets __traceback__.)"""

    code: grpc.StatusCode
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def invalid(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, _meta(metadata))


def not_found(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, reason, message, _meta(metadata))


def failed_precondition(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, reason, message, _meta(metadata))


def already_exists(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.ALREADY_EXISTS, reason, message, _meta(metadata))


def unavailable(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, reason, message, _meta(metadata))


def run_not_found(project: str, run_id: str) -> ServiceError:
    return not_found(
        "RUN_NOT_FOUND",
        f"run {run_id!r} not found in project {project!r}",
        project=project,
        run_id=run_id,
    )


def incarnation_not_found(incarnation_id: str) -> ServiceError:
    return not_found(
        "INCARNATION_NOT_FOUND",
        f"incarnation {incarnation_id!r} not found",
        incarnation_id=incarnation_id,
    )


def _meta(values: dict[str, object]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else repr(v) for k, v in values.items()}
