"""The client's public surface: __all__, signatures without protobuf, the exception tree, and
the one seam where grpc errors become RPCError (checked over a real gRPC connection)."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import socket
import typing
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
import stepstream
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from stepstream import _exceptions
from stepstream._client import RunClient

PUBLIC_EXCEPTIONS = {
    "StepstreamError",
    "RPCError",
    "InvalidArgumentError",
    "RunClosedError",
    "WaitTimeoutError",
    "MissingExtraError",
}


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(stepstream).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(stepstream.__all__)
    assert len(stepstream.__all__) == len(set(stepstream.__all__))


def test_every_exported_name_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from stepstream import *", namespace)
    for name in stepstream.__all__:
        assert namespace[name] is getattr(stepstream, name)
        assert not name.startswith("_")


def test_exceptions_are_all_exported() -> None:
    exported = {n for n in stepstream.__all__ if n.endswith("Error") and n != "IngestError"}
    assert exported == PUBLIC_EXCEPTIONS


def test_exception_hierarchy() -> None:
    base = stepstream.StepstreamError
    assert issubclass(base, Exception)
    for name in PUBLIC_EXCEPTIONS - {"StepstreamError"}:
        assert issubclass(getattr(stepstream, name), base)
    assert issubclass(stepstream.InvalidArgumentError, ValueError)
    assert issubclass(stepstream.RunClosedError, RuntimeError)
    assert issubclass(stepstream.WaitTimeoutError, TimeoutError)
    assert not issubclass(stepstream.RPCError, ValueError)


def test_exceptions_docstring_draws_the_tree() -> None:
    doc = _exceptions.__doc__ or ""
    assert "StepstreamError\n" in doc
    for name in PUBLIC_EXCEPTIONS - {"StepstreamError"}:
        assert f"── {name}" in doc, name


def _annotation_types(hint: object) -> Iterator[object]:
    yield hint
    for arg in typing.get_args(hint):
        yield from _annotation_types(arg)


def _public_callables() -> Iterator[tuple[str, typing.Callable[..., object]]]:
    for name in stepstream.__all__:
        value = getattr(stepstream, name)
        if inspect.isfunction(value):
            yield name, value
    for name, member in vars(stepstream.Run).items():
        if name.startswith("_") and name not in ("__init__", "__enter__", "__exit__"):
            continue
        if isinstance(member, property) and member.fget is not None:
            yield f"Run.{name}", member.fget
        elif inspect.isfunction(member):
            yield f"Run.{name}", member


def test_no_protobuf_types_in_public_signatures() -> None:
    checked = 0
    for name, function in _public_callables():
        hints = typing.get_type_hints(function)
        for hint in hints.values():
            for part in _annotation_types(hint):
                assert not (isinstance(part, type) and issubclass(part, Message)), name
        checked += 1
    assert checked > 15
    for name in stepstream.__all__:
        value = getattr(stepstream, name)
        if dataclasses.is_dataclass(value):
            for hint in typing.get_type_hints(value).values():
                for part in _annotation_types(hint):
                    assert not (isinstance(part, type) and issubclass(part, Message)), name


def test_rpc_error_str_and_pickle() -> None:
    error = stepstream.RPCError(
        grpc.StatusCode.NOT_FOUND,
        "run 'x' not found",
        reason="RUN_NOT_FOUND",
        domain="stepstream",
        metadata={"run_id": "x"},
    )
    assert str(error) == "NOT_FOUND: run 'x' not found [RUN_NOT_FOUND]"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.message, copy.reason, copy.domain, copy.metadata) == (
        grpc.StatusCode.NOT_FOUND,
        "run 'x' not found",
        "RUN_NOT_FOUND",
        "stepstream",
        {"run_id": "x"},
    )


def _status(code: grpc.StatusCode, message: str, reason: str, **metadata: str) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="stepstream", metadata=metadata))
    return status_pb2.Status(code=code.value[0], message=message, details=[detail])


def test_rpc_error_from_status() -> None:
    status = _status(
        grpc.StatusCode.FAILED_PRECONDITION, "expected batch 4, got 6", "SEQUENCE_GAP", expected="4"
    )
    error = stepstream.RPCError.from_status(status)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "SEQUENCE_GAP"
    assert error.metadata == {"expected": "4"}
    assert error.message == "expected batch 4, got 6"


def test_rpc_error_from_status_without_error_info() -> None:
    error = stepstream.RPCError.from_status(status_pb2.Status(code=14, message="gone"))
    assert (error.code, error.reason, error.metadata) == (grpc.StatusCode.UNAVAILABLE, "", {})


class _RichStatus(grpc.Status):
    def __init__(self, status: status_pb2.Status) -> None:
        self.code = grpc.StatusCode(
            next(c.value for c in grpc.StatusCode if c.value[0] == status.code)
        )
        self.details = status.message
        self.trailing_metadata = (("grpc-status-details-bin", status.SerializeToString()),)


@pytest.fixture
def rich_error_server() -> Iterator[str]:
    """A real gRPC server whose RunService.GetRun fails with an AIP-193 rich status."""

    def get_run(request: bytes, context: grpc.ServicerContext) -> bytes:
        status = _status(
            grpc.StatusCode.NOT_FOUND, "run 'nope' not found", "RUN_NOT_FOUND", run_id="nope"
        )
        context.abort_with_status(_RichStatus(status))
        raise AssertionError("abort_with_status returns only by raising")

    handler = grpc.method_handlers_generic_handler(
        "stepstream.v1.RunService",
        {"GetRun": grpc.unary_unary_rpc_method_handler(get_run)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_grpc_errors_are_translated_once_at_the_seam(rich_error_server: str) -> None:
    with RunClient(rich_error_server) as client, pytest.raises(stepstream.RPCError) as caught:
        client.get_run("default", "nope")
    error = caught.value
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.reason == "RUN_NOT_FOUND"
    assert error.metadata == {"run_id": "nope"}
    assert error.message == "run 'nope' not found"
    assert error.__cause__ is None and error.__suppress_context__


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_failure_is_an_rpc_error_without_reason() -> None:
    with (
        RunClient(f"127.0.0.1:{_unused_port()}") as client,
        pytest.raises(stepstream.RPCError) as caught,
    ):
        client.get_run("default", "r")
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert caught.value.reason == ""
