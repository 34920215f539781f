"""RunService: runs, their lineage and their series, as thin as the ingest servicer (the
shared error and parsing helpers are servicer.py's)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError
from stepstream import configjson
from stepstream.v1 import runs_pb2, runs_pb2_grpc

from . import errors, web
from .limits import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH
from .model import Incarnation, RunRecord, RunState
from .reading import Reader, Selector, slices
from .runs import CreateRun, RunManager
from .servicer import Malformed, abort
from .validation import check_document, config_too_deep


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def incarnation_proto(inc: Incarnation) -> runs_pb2.Incarnation:
    return runs_pb2.Incarnation(
        incarnation_id=inc.incarnation_id,
        run_id=inc.run_id,
        parent_incarnation_id=inc.parent_incarnation_id or "",
        parent_run_id=inc.parent_run_id or "",
        fork_step=inc.fork_step if inc.fork_step is not None else 0.0,
        origin=int(inc.origin),  # type: ignore[arg-type]
        create_time=_timestamp(inc.created_at),
        archived=inc.archived,
    )


def run_proto(record: RunRecord, web_url: str = "") -> runs_pb2.Run:
    """The run as protobuf; `web_url` is the web view's base URL, empty when it is off."""
    config = struct_pb2.Struct()
    config.update(record.config)
    values = struct_pb2.Struct()
    values.update(record.values)
    return runs_pb2.Run(
        project=record.project,
        run_id=record.run_id,
        experiment=record.experiment,
        state=int(record.state),  # type: ignore[arg-type]
        tags=list(record.tags),
        description=record.description,
        config=config,
        current_incarnation_id=record.current_incarnation_id,
        incarnations=[incarnation_proto(i) for i in record.incarnations],
        create_time=_timestamp(record.created_at),
        update_time=_timestamp(record.updated_at),
        failure_reason=record.failure_reason,
        values=values,
        config_json=configjson.dumps(record.config),
        values_json=configjson.dumps(record.values),
        experiment_head=record.experiment_head,
        url=web.run_url(web_url, record.project, record.run_id),
        experiment_url=web.experiment_url(web_url, record.project, record.experiment),
    )


def struct_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain values (an older client's config: every number a float, NaN too)."""
    return {key: _plain(value) for key, value in message.fields.items()}


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_dict(value.struct_value)
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    if kind is None or kind == "null_value":
        return None
    return getattr(value, kind)


def typed_document(field: str, text: str) -> dict[str, Any]:
    """A typed JSON document (runs.proto "Typed JSON") within its bounds: the size of its
    text first, then its syntax and tags (INVALID_CONFIG), then its depth."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        return check_document(field, size, {})  # raises CONFIG_TOO_LARGE
    try:
        document = configjson.loads(text)
    except configjson.TypedJSONTooDeep:
        raise config_too_deep(field, f"more than {MAX_CONFIG_DEPTH}") from None
    except configjson.TypedJSONError as exc:
        raise errors.invalid(
            "INVALID_CONFIG", f"{field}_json {exc}", field=f"{field}_json", detail=str(exc)
        ) from None
    return check_document(field, size, document)


async def _document(
    context: Any, field: str, message: struct_pb2.Struct, text: str = ""
) -> dict[str, Any]:
    """A config or values document within its bounds: the typed JSON text when the request
    has one, else the Struct (whose size is known before converting)."""
    try:
        if text:
            return typed_document(field, text)
        return check_document(field, message.ByteSize(), struct_dict(message))
    except errors.ServiceError as exc:
        await abort(context, exc)
        raise


def selector_of(sel: runs_pb2.SeriesSelector) -> Selector:
    return Selector(
        sel.project, sel.run_id, sel.incarnation_id, sel.own_points_only, sel.experiment
    )


class RunServicer(runs_pb2_grpc.RunServiceServicer):
    """RunService: every method converts, calls RunManager or Reader, converts back."""

    def __init__(self, runs: RunManager, reader: Reader, web_url: str = "") -> None:
        self.runs = runs
        self.reader = reader
        self.web_url = web_url

    async def CreateRun(
        self, request: runs_pb2.CreateRunRequest, context: Any
    ) -> runs_pb2.CreateRunResponse:
        config = await _document(context, "config", request.config, request.config_json)
        try:
            record, fallback, existed = await self.runs.create(
                CreateRun(
                    project=request.project,
                    experiment=request.experiment,
                    run_id=request.run_id,
                    tags=tuple(request.tags),
                    description=request.description,
                    config=config,
                    fork_run_id=request.fork_run_id,
                    fork_incarnation_id=request.fork_incarnation_id,
                    fork_step=request.fork_step if request.HasField("fork_step") else None,
                    inherit_configs=request.inherit_configs,
                    get_if_exists=request.get_if_exists,
                )
            )
        except errors.ServiceError as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises
        return runs_pb2.CreateRunResponse(
            run=run_proto(record, self.web_url), parent_fallback=fallback, existed=existed
        )

    async def GetRun(
        self, request: runs_pb2.GetRunRequest, context: Any
    ) -> runs_pb2.GetRunResponse:
        record = await _call(context, self.runs.get(request.project, request.run_id))
        return runs_pb2.GetRunResponse(run=run_proto(record, self.web_url))

    async def ListRuns(
        self, request: runs_pb2.ListRunsRequest, context: Any
    ) -> runs_pb2.ListRunsResponse:
        records = await _call(context, self.runs.list(request.project, request.experiment))
        return runs_pb2.ListRunsResponse(runs=[run_proto(r, self.web_url) for r in records])

    async def StopRun(
        self, request: runs_pb2.StopRunRequest, context: Any
    ) -> runs_pb2.StopRunResponse:
        record = await _call(
            context, self.runs.set_state(request.project, request.run_id, RunState.STOPPED)
        )
        return runs_pb2.StopRunResponse(run=run_proto(record, self.web_url))

    async def FinishRun(
        self, request: runs_pb2.FinishRunRequest, context: Any
    ) -> runs_pb2.FinishRunResponse:
        record = await _call(
            context, self.runs.set_state(request.project, request.run_id, RunState.FINISHED)
        )
        return runs_pb2.FinishRunResponse(run=run_proto(record, self.web_url))

    async def FailRun(
        self, request: runs_pb2.FailRunRequest, context: Any
    ) -> runs_pb2.FailRunResponse:
        record = await _call(
            context,
            self.runs.set_state(request.project, request.run_id, RunState.FAILED, request.reason),
        )
        return runs_pb2.FailRunResponse(run=run_proto(record, self.web_url))

    async def ResumeRun(
        self, request: runs_pb2.ResumeRunRequest, context: Any
    ) -> runs_pb2.ResumeRunResponse:
        record = await _call(
            context, self.runs.set_state(request.project, request.run_id, RunState.RUNNING)
        )
        return runs_pb2.ResumeRunResponse(run=run_proto(record, self.web_url))

    async def UpdateRunConfig(
        self, request: runs_pb2.UpdateRunConfigRequest, context: Any
    ) -> runs_pb2.UpdateRunConfigResponse:
        config = await _document(context, "config", request.config, request.config_json)
        values = await _document(context, "values", request.values, request.values_json)
        record = await _call(
            context, self.runs.update_config(request.project, request.run_id, config)
        )
        if values:
            record = await _call(
                context, self.runs.update_values(request.project, request.run_id, values)
            )
        return runs_pb2.UpdateRunConfigResponse(run=run_proto(record, self.web_url))

    async def RewindRun(
        self, request: runs_pb2.RewindRunRequest, context: Any
    ) -> runs_pb2.RewindRunResponse:
        config = await _document(context, "config", request.config, request.config_json)
        record = await _call(
            context, self.runs.rewind(request.project, request.run_id, request.step, config)
        )
        return runs_pb2.RewindRunResponse(run=run_proto(record, self.web_url))

    async def UpdateRunTags(
        self, request: runs_pb2.UpdateRunTagsRequest, context: Any
    ) -> runs_pb2.UpdateRunTagsResponse:
        record = await _call(
            context,
            self.runs.update_tags(
                request.project, request.run_id, list(request.add), list(request.remove)
            ),
        )
        return runs_pb2.UpdateRunTagsResponse(run=run_proto(record, self.web_url))

    async def ListSeries(
        self, request: runs_pb2.ListSeriesRequest, context: Any
    ) -> runs_pb2.ListSeriesResponse:
        incarnation_id, summaries, token = await _call(
            context,
            self.reader.page(selector_of(request.selector), request.page_size, request.page_token),
        )
        return runs_pb2.ListSeriesResponse(
            incarnation_id=incarnation_id,
            next_page_token=token,
            series=[
                runs_pb2.SeriesSummary(
                    name=s.name,
                    string_series=s.is_string,
                    count=s.count,
                    last_step=s.last_step,
                    last=s.last,
                    min=s.minimum,
                    max=s.maximum,
                    last_string=s.last_string,
                    generation=s.generation,
                )
                for s in summaries
            ],
        )

    async def ReadSeries(
        self, request: runs_pb2.ReadSeriesRequest, context: Any
    ) -> AsyncIterator[runs_pb2.ReadSeriesResponse]:
        lo = request.step_min if request.HasField("step_min") else -math.inf
        hi = request.step_max if request.HasField("step_max") else math.inf
        series = await _call(
            context,
            self.reader.read(
                selector_of(request.selector),
                list(request.names),
                lo,
                hi,
                max_points=request.max_points if request.HasField("max_points") else None,
                generation=request.generation if request.HasField("generation") else None,
            ),
        )
        for points in series:
            for part in slices(points):
                msg = runs_pb2.ReadSeriesResponse(
                    name=part.name,
                    string_series=part.is_string,
                    steps=part.steps.tolist(),
                    timestamps=part.timestamps.tolist(),
                )
                if part.is_string:
                    msg.string_values.extend(part.values)
                else:
                    msg.values.extend(part.values.tolist())  # type: ignore[union-attr]
                yield msg


async def _call(context: Any, work: Awaitable[Any]) -> Any:
    try:
        return await work
    except errors.ServiceError as exc:
        await abort(context, exc)
        raise


def run_handler(servicer: RunServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """RunService registered by hand, like ingest: a request protobuf cannot parse (a config
    nested past protobuf's own depth limit) is answered INVALID_ARGUMENT with its reason."""
    service = runs_pb2.DESCRIPTOR.services_by_name["RunService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_type = getattr(runs_pb2, method.input_type.name)
        response_type = getattr(runs_pb2, method.output_type.name)
        behavior = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _streaming_guard(behavior),
                request_deserializer=_lenient(request_type),
                response_serializer=response_type.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary_guard(behavior),
                request_deserializer=_lenient(request_type),
                response_serializer=response_type.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _lenient(request_type: Any) -> Any:
    def parse(data: bytes) -> Any:
        try:
            return request_type.FromString(data)
        except DecodeError as exc:
            return Malformed(str(exc))

    return parse


def _malformed(request: Malformed) -> errors.ServiceError:
    # The only nesting a RunService request can carry is a Struct (config, values).
    if "MaxDepth" in request.detail or "recursion" in request.detail.lower():
        return config_too_deep("config", f"more than {MAX_CONFIG_DEPTH}")
    return errors.invalid("MALFORMED_REQUEST", f"request could not be decoded: {request.detail}")


def _unary_guard(behavior: Any) -> Any:
    async def call(request: Any, context: Any) -> Any:
        if isinstance(request, Malformed):
            await abort(context, _malformed(request))
        return await behavior(request, context)

    return call


def _streaming_guard(behavior: Any) -> Any:
    async def call(request: Any, context: Any) -> AsyncIterator[Any]:
        if isinstance(request, Malformed):
            await abort(context, _malformed(request))
        async for message in behavior(request, context):
            yield message

    return call
