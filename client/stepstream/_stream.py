"""The sender's stream side: one AppendPoints stream kept open, and the answers read from it.

`StreamConnector` is a mixin of `Sender`. Its connector task keeps a stream open: it sends
`open`, learns `last_committed_sequence`, re-sends every unanswered batch with its original
sequence number, in order, and then reads the one answer per batch (`_on_answer`). When the
stream fails it backs off (50 ms doubling to 2 s, with jitter) and reconnects, for up to
`reconnect_timeout` seconds; only progress ends the backoff (an acknowledged batch, or a
stream opened with nothing to re-send). A stream whose sent batches wait `ack_timeout` for an
answer is taken for stalled and reopened (`_session`'s watchdog). The protocol and its
failure cases: docs/faults.md and docs/replicas.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from stepstream.v1 import ingest_pb2

from ._columnar import EncodedBatch
from ._convert import ingest_error_from_rejection, ingest_error_from_status
from ._exceptions import RPCError, StepstreamError, reworded
from ._spool_queue import Spill
from ._targets import Target
from ._types import IngestError

logger = logging.getLogger("stepstream")

APPEND_POINTS = "/stepstream.v1.IngestService/AppendPoints"
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
# How long a clean shutdown waits for the service to end the stream after we half-close it.
HALF_CLOSE_GRACE = 5.0

# A stream that fails with one of these is reopened; any other status is final.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNKNOWN,
    }
)

Stream = grpc.aio.StreamStreamCall[bytes, ingest_pb2.AppendPointsResponse]


class _StreamEnded(Exception):
    """The service ended the stream without an error status; reconnect."""


class _Stalled(Exception):
    """Sent batches waited ack_timeout for an answer; reconnect."""


_EXPECTED_STREAM_ERRORS = (
    grpc.RpcError,
    RPCError,
    asyncio.TimeoutError,
    asyncio.InvalidStateError,
    _StreamEnded,
    _Stalled,
)


def backoff_delay(backoff: float) -> float:
    """Jittered delay for the current backoff step: uniformly in [backoff/2, backoff]."""
    return backoff * (0.5 + random.random() / 2)


async def _next_answer(call: Stream) -> ingest_pb2.AppendPointsResponse | None:
    """The next answer, or None at the end of the stream (grpc.aio.EOF)."""
    response = await call.read()
    return response if isinstance(response, ingest_pb2.AppendPointsResponse) else None


def _as_rpc_error(exc: BaseException) -> RPCError:
    if isinstance(exc, RPCError):
        return exc
    if isinstance(exc, grpc.RpcError):
        return RPCError.from_grpc(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return RPCError(grpc.StatusCode.DEADLINE_EXCEEDED, "the service did not answer OpenStream")
    if isinstance(exc, (_StreamEnded, asyncio.InvalidStateError)):
        return RPCError(grpc.StatusCode.UNAVAILABLE, "the stream ended unexpectedly")
    if isinstance(exc, _Stalled):
        return RPCError(grpc.StatusCode.UNAVAILABLE, str(exc))
    return RPCError(grpc.StatusCode.INTERNAL, f"client error: {exc!r}")


class StreamConnector:
    """Mixin of `Sender`: the connector task and what it does with the stream's answers."""

    # Provided by Sender.
    fatal: StepstreamError | None
    offline: bool
    incarnation_id: str
    acknowledged_points: int
    rejected_points: int
    answered_points: int
    batches_resent: int
    duplicate_batches: int
    connections: int
    connected: bool
    _target: Target
    _spill: Spill
    _unacked: OrderedDict[int, EncodedBatch]
    _next_sequence: int | None
    _last_answered: int
    _call: Stream | None
    _ack_clock: float | None
    _ack_timeout: float
    _connect_timeout: float
    _reconnect_timeout: float
    _backoff: float
    _failing_since: float | None
    _stopping: bool
    _closing: bool
    _open_request: bytes
    _append_points: Any
    _write_lock: asyncio.Lock
    _progress: asyncio.Event
    _wake: asyncio.Event
    _opened: asyncio.Event
    _connector: asyncio.Task[None] | None

    if TYPE_CHECKING:  # Sender's own methods (and its other mixins')

        def _fail(self, error: StepstreamError) -> None: ...
        def _go_offline(self, error: RPCError) -> bool: ...
        def _report(self, error: IngestError) -> None: ...
        def _next_entry(self) -> None: ...
        def _where(self) -> str: ...

    async def _on_stream(self, call: Stream, step: Awaitable[None]) -> bool:
        """Await a write (or the half-close) of `call`; False if the stream is gone.

        grpc.aio raises CancelledError in whoever waits on a call that was cancelled. When the
        connector abandoned the call (stalled, or ended: it is no longer `_call`), that only
        means the stream is gone; the producer's own cancellation always comes after
        `_closing` is set.
        """
        try:
            await step
        except (grpc.RpcError, asyncio.InvalidStateError):
            return False
        except asyncio.CancelledError:
            if self._closing or self._call is call:
                raise
            return False
        return True

    async def _end_stream(self) -> None:
        """Half-close the stream (every batch is answered) and let the service end it."""
        self._stopping = True
        async with self._write_lock:
            call = self._call
            if call is None or not await self._on_stream(call, call.done_writing()):
                return
        if self._connector is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._connector), HALF_CLOSE_GRACE)

    # ---- connector ----------------------------------------------------------------------

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._session()
                if self._stopping:
                    return
                raise _StreamEnded
            except Exception as exc:
                if self._stopping and not self._unacked:
                    return
                error = _as_rpc_error(exc)
                if not isinstance(exc, _EXPECTED_STREAM_ERRORS):
                    logger.exception("stepstream: unexpected error in the sender")
                    self._fail(error)
                    return
                if error.code not in RETRYABLE:
                    self._fail(error)
                    return
                now = loop.time()
                if self._failing_since is None:
                    self._failing_since = now
                    logger.warning(
                        "stepstream: the stream to %s failed (%s); reconnecting for up to %g s",
                        self._where(),
                        error,
                        self._reconnect_timeout,
                    )
                elif now - self._failing_since >= self._reconnect_timeout:
                    gave_up = reworded(
                        error,
                        f"gave up reconnecting after {self._reconnect_timeout:g} s: "
                        f"{error.message}",
                    )
                    if not self._go_offline(gave_up):  # offline: spool, keep reconnecting
                        self._fail(gave_up)
                        return
                logger.debug("stepstream: reconnect to %s failed (%s)", self._where(), error)
                self._next_entry()
                await asyncio.sleep(backoff_delay(self._backoff))
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        """One stream, watched: it ends when batches wait ack_timeout for an answer."""
        call: Stream = self._append_points(None, metadata=self._target.security.metadata)
        self._ack_clock = None
        stream = asyncio.create_task(self._stream(call))
        watchdog = asyncio.create_task(self._watch_acks())
        try:
            await asyncio.wait((stream, watchdog), return_when=asyncio.FIRST_COMPLETED)
            if not stream.done():
                raise _Stalled(
                    f"no answer to {len(self._unacked)} sent batches for {self._ack_timeout:g} s"
                )
            if stream.cancelled():  # the call was cancelled under it (a failed write)
                raise _StreamEnded
            stream.result()
        finally:
            self._call = None
            self.connected = False
            call.cancel()
            for task in (stream, watchdog):
                task.cancel()
            await asyncio.gather(stream, watchdog, return_exceptions=True)

    async def _stream(self, call: Stream) -> None:
        """Open, re-send what is unanswered, then read answers until the stream ends."""
        reader: asyncio.Task[None] | None = None
        try:
            async with self._write_lock:
                opened = await asyncio.wait_for(self._open(call), self._connect_timeout)
                self._on_opened(opened)
                reader = asyncio.create_task(self._read_answers(call))
                for batch in list(self._unacked.values()):
                    await call.write(batch.request)
                    self.batches_resent += 1
                self._call = call
                self.connected = True
            await reader
        finally:
            if reader is not None:
                if reader.done():
                    if not reader.cancelled():
                        reader.exception()  # retrieved: the call's own error says it all
                else:
                    reader.cancel()

    async def _watch_acks(self) -> None:
        """Return once sent batches have waited ack_timeout for their next answer."""
        while True:
            since = self._ack_clock
            if since is None:
                await asyncio.sleep(self._ack_timeout)  # a clock started meanwhile ends later
                continue
            left = since + self._ack_timeout - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(left)

    async def _open(self, call: Stream) -> ingest_pb2.OpenStreamResult:
        await call.write(self._open_request)
        response = await _next_answer(call)
        if response is None:
            raise _StreamEnded
        kind = response.WhichOneof("result")
        if kind == "error":
            raise RPCError.from_status(response.error)
        if kind != "opened":
            raise RPCError(
                grpc.StatusCode.INTERNAL, f"the service answered OpenStream with {kind!r}"
            )
        result: ingest_pb2.OpenStreamResult = response.opened
        return result

    def _on_opened(self, opened: ingest_pb2.OpenStreamResult) -> None:
        committed = opened.last_committed_sequence
        if self._next_sequence is None:
            self._next_sequence = committed + 1
        elif committed >= self._next_sequence:
            raise RPCError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the service has batches up to {committed} committed for this writer, but "
                f"this client sent only up to {self._next_sequence - 1}: is another client "
                "using the same writer_id?",
                reason="WRITER_ID_CONFLICT",
            )
        elif committed < self._last_answered:
            raise RPCError(
                grpc.StatusCode.DATA_LOSS,
                f"the service reports batches up to {committed} committed for this writer, "
                f"but it had already answered batch {self._last_answered}",
                reason="SEQUENCE_REGRESSION",
            )
        if opened.incarnation_id:
            self.incarnation_id = opened.incarnation_id
        if self._failing_since is not None:
            logger.info(
                "stepstream: reconnected to %s; re-sending %d unacknowledged batches",
                self._where(),
                len(self._unacked),
            )
        if self.offline:
            self.offline = False  # back online: the spool drains in log order
            self._wake.set()
        self._ack_clock = time.monotonic() if self._unacked else None
        self.connections += 1
        if not self._unacked:
            self._progressed()
        self._opened.set()

    def _progressed(self) -> None:
        """The stream works (not merely opens): the next failure starts a fresh backoff."""
        self._failing_since = None
        self._backoff = BACKOFF_MIN

    async def _read_answers(self, call: Stream) -> None:
        while True:
            response = await _next_answer(call)
            if response is None:
                return
            self._on_answer(response)

    def _on_answer(self, response: ingest_pb2.AppendPointsResponse) -> None:
        sequence = response.sequence
        batch = self._unacked.pop(sequence, None)
        if batch is None and sequence == 0 and self._unacked:
            # An answer to a request the service could not decode: answers come in order,
            # so it belongs to the oldest unanswered batch.
            sequence, batch = self._unacked.popitem(last=False)
        if batch is None:
            logger.warning("stepstream: ignoring an answer for unknown batch %d", sequence)
            return
        self._last_answered = max(self._last_answered, sequence)
        self._spill.answered(sequence)
        kind = response.WhichOneof("result")
        if kind == "appended":
            self._progressed()
            result = response.appended
            self.acknowledged_points += result.accepted_count + result.duplicate_count
            rejected = batch.points - result.accepted_count - result.duplicate_count
            self.rejected_points += max(rejected, 0)
            if result.duplicate_batch:
                self.duplicate_batches += 1
            if result.incarnation_id:
                self.incarnation_id = result.incarnation_id
            for rejection in result.rejections:
                self._report(ingest_error_from_rejection(rejection, sequence))
        else:
            self.rejected_points += batch.points
            if kind == "error":
                self._report(ingest_error_from_status(response.error, sequence, batch.points))
            else:
                self._report(
                    IngestError(
                        series="",
                        reason="UNEXPECTED_ANSWER",
                        message=f"the service answered batch {sequence} with {kind!r}",
                        count=batch.points,
                        sequence=sequence,
                    )
                )
        self.answered_points += batch.points
        self._ack_clock = time.monotonic() if self._unacked else None
        self._progress.set()
