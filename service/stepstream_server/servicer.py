"""Thin servicers: protobuf in, domain values to the logic, domain results and errors out.

This module holds the ingest stream and what both services share (errors as statuses, lenient
request parsing); RunService is in run_servicer.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from stepstream.rules import MAX_INFLIGHT_PER_STREAM
from stepstream.v1 import ingest_pb2

from . import errors
from .decode import Decoded, Decoder
from .ingest import SEQUENCE_GAP, IngestWorker, StoreFailed, Writer
from .metrics import Metrics
from .model import (
    BatchFailure,
    Outcome,
    RunRecord,
)
from .validation import check_id, project_of, run_id_of
from .wire import Malformed as Malformed
from .wire import Oversized, Request, Unparsed, lenient_request, parse

log = logging.getLogger(__name__)

SERVICE_NAME = "stepstream.v1.IngestService"


# -- errors ---------------------------------------------------------------------------------


def status_proto(
    code: grpc.StatusCode, reason: str, message: str, meta: dict[str, str]
) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=errors.DOMAIN, metadata=meta)
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(info)
    return status


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: errors.ServiceError) -> None:
    status = status_proto(err.code, err.reason, err.message, err.metadata)
    await context.abort(
        err.code,
        f"{err.reason}: {err.message}",
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )


# -- ingest ---------------------------------------------------------------------------------


def failure_response(
    sequence: int, failure: BatchFailure, *, used: bool
) -> ingest_pb2.AppendPointsResponse:
    """A batch error; `used` says whether it used up its sequence number (ingest.proto's rule:
    an error answered at the batch's turn does, one answered before it does not)."""
    code = grpc.StatusCode[failure.code]
    meta = {"sequence_used": "true" if used else "false", **failure.metadata}
    return ingest_pb2.AppendPointsResponse(
        sequence=sequence, error=status_proto(code, failure.reason, failure.message, meta)
    )


def outcome_response(sequence: int, outcome: Outcome) -> ingest_pb2.AppendPointsResponse:
    if isinstance(outcome, BatchFailure):
        # The worker answers every batch at its turn, except a batch that skips ahead.
        return failure_response(sequence, outcome, used=outcome.reason != SEQUENCE_GAP)
    return ingest_pb2.AppendPointsResponse(
        sequence=sequence,
        appended=ingest_pb2.AppendResult(
            accepted_count=outcome.accepted,
            duplicate_count=outcome.duplicates,
            duplicate_batch=outcome.duplicate_batch,
            incarnation_id=outcome.incarnation_id,
            rejections=[
                ingest_pb2.SeriesRejection(
                    series=r.series,
                    reason=r.reason,
                    message=r.message,
                    count=r.count,
                    first_step=r.first_step,
                    last_step=r.last_step,
                    floor=r.floor,
                    string_series=r.is_string,
                )
                for r in outcome.rejections
            ],
            assigned_steps=[
                ingest_pb2.AssignedSteps(
                    series=a.series,
                    first_step=a.first_step,
                    count=a.count,
                    string_series=a.is_string,
                )
                for a in outcome.assigned
            ],
        ),
    )


Answer = ingest_pb2.AppendPointsResponse | errors.ServiceError


class IngestServicer:
    """IngestService.AppendPoints: one reader task per stream feeds the worker; responses are
    yielded in request order as their batches commit. `drain()` ends every stream cleanly
    (docs/drain.md)."""

    def __init__(self, worker: IngestWorker, metrics: Metrics | None = None) -> None:
        self.worker = worker
        self.decoder = Decoder()
        self.metrics = metrics or Metrics()
        self.draining = False
        self._streams: set[_Stream] = set()
        self._idle = asyncio.Event()  # set when the last open stream ends

    def drain(self) -> int:
        """Stop reading requests on every open stream: each sends the answers of what it
        handed to the worker, then ends with UNAVAILABLE / SERVICE_DRAINING. Returns how many
        streams were open."""
        self.draining = True
        for stream in self._streams:
            stream.drained = True
            if not stream.handing and stream.reader is not None:
                stream.reader.cancel()  # it waits for the next request: none is taken
        return len(self._streams)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def drained(self) -> None:
        """Returns once no stream is open."""
        while self._streams:
            self._idle.clear()
            await self._idle.wait()

    async def AppendPoints(
        self,
        requests: AsyncIterator[Request],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[ingest_pb2.AppendPointsResponse]:
        if self.draining:  # accepted just before the server stopped taking calls
            await abort(context, _draining_error())
            return
        answers: asyncio.Queue[Awaitable[Answer] | None] = asyncio.Queue(MAX_INFLIGHT_PER_STREAM)
        stream = _Stream()
        stream.reader = asyncio.create_task(self._read(requests, answers, stream))
        self._streams.add(stream)
        self.metrics.open_streams.inc()
        try:
            while (pending := await answers.get()) is not None:
                answer = await pending
                if isinstance(answer, errors.ServiceError):
                    await abort(context, answer)
                    return
                yield answer
            if stream.cut:
                await abort(context, _draining_error())
        finally:
            self._streams.discard(stream)
            self.metrics.open_streams.dec()
            if not self._streams:
                self._idle.set()
            stream.reader.cancel()
            while not answers.empty():  # answers nobody will read: close, don't leak
                leftover = answers.get_nowait()
                if leftover is not None and hasattr(leftover, "close"):
                    leftover.close()

    async def _read(
        self,
        requests: AsyncIterator[Request],
        answers: asyncio.Queue[Awaitable[Answer] | None],
        stream: _Stream,
    ) -> None:
        try:
            async for request in requests:
                stream.handing = True  # drain() lets this hand-off finish
                await answers.put(await self._handle(request, stream))
                stream.handing = False
                if stream.ended or stream.writer is None:
                    # A stream whose first request did not open it ends with that answer:
                    # the token is checked against the first request (auth/policy.py), so
                    # an `open` after a refused batch must never be taken.
                    return
                if stream.drained:
                    stream.cut = True
                    return
        except asyncio.CancelledError:
            stream.cut = stream.drained  # else the stream itself is ending
            raise
        except grpc.aio.AbortError:  # the stream was ended with a status already (a failed batch)
            return
        except Exception:
            if self.draining:  # the server stopped under the stream: expected, not a failure
                log.info("ingest stream ended by the drain")
            else:
                log.exception("ingest stream failed")
            await answers.put(
                _ready(
                    errors.ServiceError(
                        grpc.StatusCode.INTERNAL,
                        "INTERNAL",
                        "the stream failed; reconnect and re-send",
                    )
                    if not self.draining
                    else _draining_error()
                )
            )
        finally:
            await answers.put(None)

    async def _handle(self, raw: Request, stream: _Stream) -> Awaitable[Answer]:
        """What answers one request; waits only while the worker applies backpressure (and
        while a large request is parsed, on a thread: wire.py)."""
        request = await asyncio.to_thread(parse, raw) if isinstance(raw, Unparsed) else raw
        if isinstance(request, Malformed):
            return self._refused(
                0,
                errors.invalid(
                    "MALFORMED_REQUEST", f"request could not be decoded: {request.detail}"
                ),
            )
        kind = "batch" if isinstance(request, Oversized) else request.WhichOneof("kind")
        if kind == "open":
            assert not isinstance(request, Oversized)
            if stream.writer is not None:
                return self._refused(
                    0,
                    errors.failed_precondition(
                        "STREAM_ALREADY_OPEN", "the stream is already open; open once per stream"
                    ),
                )
            try:
                stream.writer, record = await self._open(request.open)
            except errors.ServiceError as exc:
                stream.ended = True
                return _ready(exc)
            return _ready(
                ingest_pb2.AppendPointsResponse(
                    opened=ingest_pb2.OpenStreamResult(
                        last_committed_sequence=stream.writer.committed,
                        incarnation_id=record.current_incarnation_id,
                    )
                )
            )
        if kind != "batch":
            return self._refused(
                0, errors.invalid("MALFORMED_REQUEST", "request has neither `open` nor `batch`")
            )
        seq = request.sequence if isinstance(request, Oversized) else request.batch.sequence
        if stream.writer is None:
            return self._refused(
                seq,
                errors.failed_precondition(
                    "STREAM_NOT_OPEN", "the first request of a stream must be `open`"
                ),
            )
        if seq == 0:
            return self._refused(
                0,
                errors.invalid(
                    "INVALID_SEQUENCE", "batch sequence numbers start at 1", sequence="0"
                ),
            )
        if isinstance(request, Oversized):
            decoded: Decoded = ([], [], request.failure)
        else:
            decoded = await self.decoder.decode(request.batch, time.time())
        outcome = await self.worker.submit(stream.writer, seq, *decoded)
        return self._respond(seq, outcome)

    def _refused(self, sequence: int, err: errors.ServiceError) -> Awaitable[Answer]:
        self.metrics.batch_rejected(err.reason)
        return _ready(failure_response(sequence, _failure(err), used=False))

    async def _respond(self, sequence: int, outcome: Awaitable[Outcome]) -> Answer:
        try:
            done = await outcome
        except StoreFailed as exc:
            return errors.unavailable(
                "COMMIT_FAILED",
                f"batch {sequence} was not committed ({exc}); reconnect and re-send",
            )
        self.metrics.batch_answered(done)
        return outcome_response(sequence, done)

    async def _open(self, req: ingest_pb2.OpenStream) -> tuple[Writer, RunRecord]:
        project = project_of(req.project)
        run_id = run_id_of(req.run_id)
        writer_id = check_id("writer_id", req.writer_id, "INVALID_WRITER_ID")
        return await self.worker.open_writer(project, run_id, writer_id)


@dataclass(eq=False)
class _Stream:
    """What one AppendPoints stream knows about itself."""

    writer: Writer | None = None
    ended: bool = False
    reader: asyncio.Task[None] | None = None
    handing: bool = False  # the reader is handing a request over (not waiting for one)
    drained: bool = False  # the drain began: no more requests are read
    cut: bool = False  # the drain stopped its reader (not the client's half-close)


def _draining_error() -> errors.ServiceError:
    return errors.unavailable(
        "SERVICE_DRAINING",
        "the service is shutting down; every batch answered on this stream is committed:"
        " reconnect and re-send the others",
    )


def _failure(err: errors.ServiceError) -> BatchFailure:
    return BatchFailure(err.code.name, err.reason, err.message, err.metadata)


async def _ready(answer: Answer) -> Answer:
    return answer


def ingest_handler(servicer: IngestServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """Registered by hand so that undecodable requests reach the servicer as `Malformed`."""
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "AppendPoints": grpc.stream_stream_rpc_method_handler(
                servicer.AppendPoints,
                request_deserializer=lenient_request,
                response_serializer=ingest_pb2.AppendPointsResponse.SerializeToString,
            )
        },
    )
