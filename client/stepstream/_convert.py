"""Conversions between protobuf messages and the client's plain Python values."""

from __future__ import annotations

import datetime
import math
import numbers
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import status_pb2

from stepstream.v1 import ingest_pb2, runs_pb2

from ._exceptions import InvalidArgumentError, RPCError
from ._types import Incarnation, IngestError, RunInfo, SeriesSummary
from ._validate import check_name

# Struct numbers are doubles: integers beyond this would silently change.
_MAX_EXACT_INT = 2**53
_SUPPORTED = "None, bool, int, float, str, list, tuple or dict"


def struct_from_dict(config: object, what: str = "config") -> struct_pb2.Struct:
    """Convert a config mapping into a `google.protobuf.Struct`, checking every value.

    Top-level keys follow the attribute name rules; values may nest dicts, lists and tuples of
    None, bool, int, float (finite) and str. Errors name the offending entry, e.g.
    ``config['optim']['lr']``.
    """
    if not isinstance(config, Mapping):
        raise InvalidArgumentError(f"{what} must be a dict, got {type(config).__name__}")
    struct = struct_pb2.Struct()
    for key, value in config.items():
        check_name(key, f"{what} key")
        _fill_value(struct.fields[key], value, f"{what}[{key!r}]")
    return struct


def _fill_value(target: struct_pb2.Value, value: object, path: str) -> None:
    if value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, numbers.Real):
        if isinstance(value, numbers.Integral) and abs(int(value)) > _MAX_EXACT_INT:
            raise InvalidArgumentError(
                f"{path} = {int(value)} cannot be stored exactly (config numbers are doubles, "
                f"exact up to 2**53); store it as a str"
            )
        number = float(value)
        if not math.isfinite(number):
            raise InvalidArgumentError(f"{path} must be a finite number, got {number!r}")
        target.number_value = number
    elif isinstance(value, Mapping):
        nested = target.struct_value
        nested.SetInParent()  # an empty dict must still become an (empty) struct
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgumentError(
                    f"{path} has a key of type {type(key).__name__} ({key!r}); keys must be str"
                )
            _fill_value(nested.fields[key], item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        items = target.list_value
        items.SetInParent()
        for index, item in enumerate(value):
            _fill_value(items.values.add(), item, f"{path}[{index}]")
    else:
        raise InvalidArgumentError(
            f"{path} has unsupported type {type(value).__name__}; use {_SUPPORTED}"
        )


def dict_from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Convert a `google.protobuf.Struct` into plain Python values (numbers as float)."""
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
        config=dict_from_struct(message.config),
        incarnation_id=message.current_incarnation_id,
        incarnations=[incarnation_from_proto(i) for i in message.incarnations],
        failure_reason=message.failure_reason or None,
        create_time=_time(message, "create_time"),
        update_time=_time(message, "update_time"),
        values=dict_from_struct(message.values),
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
