"""Conversions between protobuf messages and the client's plain Python values."""

from __future__ import annotations

import datetime
import numbers
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import status_pb2

from stepstream.v1 import ingest_pb2, runs_pb2

from . import configjson
from ._exceptions import InvalidArgumentError, RPCError
from ._types import Incarnation, IngestError, RunInfo, SeriesSummary
from ._validate import check_name

_SUPPORTED = "None, bool, int, float, str, list, tuple or dict"


def plain_config(config: object, what: str = "config") -> dict[str, Any]:
    """Check a config (or single values) mapping and return it as plain values: dict, list,
    str, int, float (NaN and infinities included), bool and None; tuples become lists and
    other Integral/Real numbers (numpy's) int and float.

    Top-level keys follow the attribute name rules; nested keys must be str. Errors name the
    offending entry, e.g. ``config['optim']['lr']``.
    """
    if not isinstance(config, Mapping):
        raise InvalidArgumentError(f"{what} must be a dict, got {type(config).__name__}")
    out: dict[str, Any] = {}
    try:
        for key, value in config.items():
            check_name(key, f"{what} key")
            out[key] = _plain(value, f"{what}[{key!r}]")
    except RecursionError:
        raise InvalidArgumentError(
            f"{what} is nested too deep to convert (the service takes far fewer levels)"
        ) from None
    return out


def config_json(config: object, what: str = "config") -> str:
    """`config`, checked (see plain_config), as typed JSON (`stepstream.configjson`)."""
    return configjson.dumps(plain_config(config, what))


def _plain(value: object, path: str) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return _plain(value.item(), path)  # type: ignore[attr-defined]  # numpy.bool_ too
    if isinstance(value, numbers.Integral):
        number = int(value)
        problem = configjson.int_problem(number)
        if problem is not None:
            raise InvalidArgumentError(f"{path} = {number} {problem}; store it as a str")
        return number
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        nested: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgumentError(
                    f"{path} has a key of type {type(key).__name__} ({key!r}); keys must be str"
                )
            nested[key] = _plain(item, f"{path}[{key!r}]")
        return nested
    if isinstance(value, list | tuple):
        return [_plain(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise InvalidArgumentError(
        f"{path} has unsupported type {type(value).__name__}; use {_SUPPORTED}"
    )


def document_from_proto(text: str, struct: struct_pb2.Struct) -> dict[str, Any]:
    """A config or values document of a Run message: its typed JSON when the service sent
    one, else (a service older than config_json) the Struct, whose numbers are all float."""
    return configjson.loads(text) if text else dict_from_struct(struct)


def dict_from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A `google.protobuf.Struct` as plain Python values (every number a float)."""
    return {key: _plain_value(value) for key, value in struct.fields.items()}


def _plain_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return dict_from_struct(value.struct_value)
    if kind == "list_value":
        return [_plain_value(item) for item in value.list_value.values]
    return None


def _time(message: Any, field: str) -> datetime.datetime | None:
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=datetime.timezone.utc)


def incarnation_from_proto(message: runs_pb2.Incarnation) -> Incarnation:
    has_parent = bool(message.parent_incarnation_id)
    return Incarnation(
        incarnation_id=message.incarnation_id,
        run_id=message.run_id,
        origin=runs_pb2.IncarnationOrigin.Name(message.origin).removeprefix("INCARNATION_ORIGIN_"),
        parent_incarnation_id=message.parent_incarnation_id or None,
        parent_run_id=message.parent_run_id or None,
        fork_step=message.fork_step if has_parent else None,
        archived=message.archived,
        create_time=_time(message, "create_time"),
    )


def run_info_from_proto(message: runs_pb2.Run) -> RunInfo:
    return RunInfo(
        run_id=message.run_id,
        project=message.project,
        experiment=message.experiment or None,
        state=runs_pb2.RunState.Name(message.state).removeprefix("RUN_STATE_"),
        tags=list(message.tags),
        description=message.description,
        config=document_from_proto(message.config_json, message.config),
        incarnation_id=message.current_incarnation_id,
        incarnations=[incarnation_from_proto(i) for i in message.incarnations],
        failure_reason=message.failure_reason or None,
        create_time=_time(message, "create_time"),
        update_time=_time(message, "update_time"),
        values=document_from_proto(message.values_json, message.values),
        experiment_head=message.experiment_head,
        url=message.url or None,
        experiment_url=message.experiment_url or None,
    )


def summary_from_proto(message: runs_pb2.SeriesSummary) -> SeriesSummary:
    return SeriesSummary(
        name=message.name,
        string_series=message.string_series,
        count=message.count,
        last_step=message.last_step,
        last=message.last,
        min=message.min,
        max=message.max,
        last_string=message.last_string,
        generation=message.generation,
    )


def ingest_error_from_rejection(
    rejection: ingest_pb2.SeriesRejection, sequence: int
) -> IngestError:
    return IngestError(
        series=rejection.series,
        reason=rejection.reason or "REJECTED",
        message=rejection.message,
        count=rejection.count,
        first_step=rejection.first_step,
        last_step=rejection.last_step,
        floor=rejection.floor,
        sequence=sequence,
        string_series=rejection.string_series,
    )


def ingest_error_from_status(status: status_pb2.Status, sequence: int, count: int) -> IngestError:
    error = RPCError.from_status(status)
    return ingest_error_from_rpc_error(error, sequence=sequence, count=count)


def ingest_error_from_rpc_error(
    error: RPCError, *, sequence: int = 0, count: int = 0, operation: str = ""
) -> IngestError:
    return IngestError(
        series="",
        reason=error.reason or error.code.name,
        message=f"{operation} failed: {error.message}" if operation else error.message,
        count=count,
        sequence=sequence,
    )
