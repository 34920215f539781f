"""The background sender: one daemon thread, one asyncio loop, one gRPC channel per Run.

Two tasks share the loop:

- the *producer* takes records from the trainer's `Buffer`, encodes them into batches with
  consecutive sequence numbers, keeps each one in `_unacked` (ordered by sequence) and writes it
  to the current stream, at most `max_inflight` unanswered at a time. Operations queued between
  records (config and tag updates, state changes, wait() markers; `_operations`) are
  barriers: the producer waits until every earlier batch is answered, runs the operation,
  then goes on.
- the *connector* (`_stream.StreamConnector`) keeps an `AppendPoints` stream open: it sends `open`, learns
  `last_committed_sequence`, re-sends every unanswered batch with its original sequence number,
  in order, and then reads the one answer per batch. When the stream fails it backs off (50 ms
  doubling to 2 s, with jitter) and reconnects, for up to `reconnect_timeout` seconds. Only
  progress ends the backoff: an acknowledged batch, or a stream opened with nothing to
  re-send. A service that accepts the stream and then fails it again (its store refusing
  writes) therefore sees one client every 2 s at most, not twenty a second.

Failover: a stream that fails (UNAVAILABLE, a reset connection, a replica killed) is reopened
on the same channel, where a round-robin target (several replicas) puts it on a replica that is
connected; a rotating target (a list naming hosts by name, see `_targets.Target`) moves to its
next entry first. A stalled replica (SIGSTOP) may keep its connection up: when batches wait
`ack_timeout` seconds for their next answer, the stream is cancelled and reopened the same way
(and the channel's keepalive, 20 s + 10 s, fails a stalled connection even when nothing waits).

The service answers a re-sent batch it had already committed with its original result
(`duplicate_batch`), so a batch is applied exactly once however often it travels.

Spool (`on_full="spill"`, see `_spill` and docs/spool.md): when the producer cannot send and
the memory queue is half full, or the stream has been failing for a second, or the run is
offline, it writes batches (with their sequence numbers) and operations to a SQLite spool
instead, and loads them back in log order once a stream is open. Past `reconnect_timeout`
the run goes offline (`on_unavailable="offline"`) instead of failing, and keeps reconnecting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from stepstream.v1 import ingest_pb2, runs_pb2_grpc

from ._batches import batch_encoders
from ._buffer import Buffer
from ._columnar import EncodedBatch
from ._convert import (
    ingest_error_from_rpc_error,
)
from ._exceptions import RPCError, RunClosedError, StepstreamError
from ._operations import Operation, OperationRunner
from ._records import Record, record_points
from ._spill import SpillingProducer
from ._spool import SpoolFile
from ._spool_queue import Spill
from ._stream import APPEND_POINTS, BACKOFF_MIN, Stream, StreamConnector
from ._targets import Address, Target, resolve_target
from ._types import IngestError, SenderStats

if TYPE_CHECKING:  # the generated stubs declare the asyncio stub type for checkers only
    pass

logger = logging.getLogger("stepstream")

# How long sent batches may wait for their next answer before the stream is taken for stalled
# (a replica stopped with its connection still up) and reopened, on another replica if the
# target names several. Well above what a live service takes to answer one batch.
ACK_TIMEOUT = 30.0


class _Fatal(Exception):
    """Raised inside the loop once the sender has failed for good."""


class Sender(StreamConnector, OperationRunner, SpillingProducer):
    """Streams a Run's records to IngestService.AppendPoints from a background thread.

    `spool_path`/`spool_meta` say where to spill (created when first needed); `spool` is an
    already open spool (an offline run, `stepstream sync`). `next_sequence` is the first
    sequence number when known without asking the service (a writer ID generated here starts
    at 1). `offline=True` never connects: everything goes to the spool.
    """

    def __init__(
        self,
        *,
        address: Address | Target,
        project: str,
        run_id: str,
        writer_id: str,
        report: Callable[[IngestError], None],
        max_queued_points: int,
        max_batch_points: int,
        max_inflight_batches: int,
        connect_timeout: float,
        reconnect_timeout: float,
        ack_timeout: float | None = None,
        on_full: str = "block",
        on_unavailable: str = "raise",
        spool_path: Path | None = None,
        spool_meta: dict[str, str] | None = None,
        spool_max_bytes: int | None = None,
        spool: SpoolFile | None = None,
        next_sequence: int | None = None,
        offline: bool = False,
    ) -> None:
        self._target = resolve_target(address)
        self._address = self._target.address
        self._open_request = ingest_pb2.AppendPointsRequest(
            open=ingest_pb2.OpenStream(project=project, run_id=run_id, writer_id=writer_id)
        ).SerializeToString()
        self._report_error = report
        self._max_batch_points = max_batch_points
        self._max_inflight = max_inflight_batches
        self._connect_timeout = connect_timeout
        self._reconnect_timeout = reconnect_timeout
        self._ack_timeout = ACK_TIMEOUT if ack_timeout is None else ack_timeout
        self.buffer: Buffer[Operation] = Buffer(max_queued_points, self._wakeup)
        self._init_spill(
            max_queued_points,
            on_full,
            on_unavailable,
            offline,
            Spill(path=spool_path, meta=spool_meta or {}, max_bytes=spool_max_bytes, file=spool),
        )

        self._thread = threading.Thread(
            target=self._thread_main, name=f"stepstream-sender-{run_id}", daemon=True
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._loop_ready = threading.Event()
        # Loop-side state. Events bind to the loop on first use (Python >= 3.10).
        self._wake = asyncio.Event()  # records arrived while the producer slept
        self._progress = asyncio.Event()  # an answer arrived, or the sender failed
        self._opened = asyncio.Event()  # the first stream was opened
        self._write_lock = asyncio.Lock()
        self._call: Stream | None = None
        # Since when sent batches wait for their next answer on the current stream (None:
        # nothing waits); the watchdog of the stream reads it.
        self._ack_clock: float | None = None
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._index = 0  # the entry of a rotating target in use
        self._unacked: OrderedDict[int, EncodedBatch] = OrderedDict()
        self._next_sequence: int | None = next_sequence
        self._last_answered = 0  # highest sequence number answered
        self._backoff = BACKOFF_MIN
        self._failing_since: float | None = None
        self._stopping = False
        self._closing = False  # set before anything cancels the producer
        self._producer: asyncio.Task[None] | None = None
        self._connector: asyncio.Task[None] | None = None
        self._current_op: Operation | None = None

        # Counters, written by the loop thread and read by anyone.
        self.incarnation_id = ""
        self.fatal: StepstreamError | None = None
        self.acknowledged_points = 0
        self.rejected_points = 0
        self.answered_points = 0
        self.batches_sent = 0
        self.batches_resent = 0
        self.duplicate_batches = 0
        self.connections = 0
        self.connected = False

    # ---- trainer side -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._loop_ready.wait()

    def put(self, record: Record) -> None:
        self.buffer.put(record, record_points(record))

    def submit(self, operation: Operation) -> concurrent.futures.Future[Any]:
        """Queue `operation` behind everything logged so far; return its future."""
        self.buffer.put(operation, 0)
        return operation.future

    def stats(self) -> SenderStats:
        logged = self.buffer.logged_points
        return SenderStats(
            logged_points=logged,
            acknowledged_points=self.acknowledged_points,
            rejected_points=self.rejected_points,
            pending_points=max(logged - self.answered_points, 0),
            batches_sent=self.batches_sent,
            batches_resent=self.batches_resent,
            duplicate_batches=self.duplicate_batches,
            inflight_batches=len(self._unacked),
            connections=self.connections,
            connected=self.connected,
            spooled_points=self._spill.spooled_points,
            offline=self.offline,
        )

    @property
    def spool_path(self) -> Path | None:
        return self._spill.path

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None) -> bool:
        """Wait for the thread to end (after a stop operation); True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def abort(self, timeout: float = 5.0) -> None:
        """Stop the thread now, whatever is still pending."""
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(self._cancel_main)
        self._thread.join(timeout)
        self._close_buffer()

    def _close_buffer(self) -> None:
        fatal = self.fatal

        def closed() -> BaseException:
            if fatal is not None:
                error = RunClosedError(f"the run's sender stopped after an error: {fatal}")
                error.__cause__ = fatal
                return error
            return RunClosedError("the run is closed")

        for item in self.buffer.close(closed):
            if isinstance(item, Operation) and not item.future.done():
                # What waits on an operation learns why it failed, e.g. RPCError UNAVAILABLE.
                item.future.set_exception(fatal if fatal is not None else closed())

    def _wakeup(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(self._wake.set)

    # ---- the loop thread ----------------------------------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._main_task = loop.create_task(self._main())
            self._loop_ready.set()
            loop.run_until_complete(self._main_task)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug in the sender: say so instead of dying silently
            logger.exception("stepstream: the sender thread crashed")
        finally:
            self._loop_ready.set()
            self._close_buffer()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _cancel_main(self) -> None:
        self._closing = True
        if self._main_task is not None:
            self._main_task.cancel()

    def _use_channel(self, index: int) -> None:
        """Send over the channel of entry `index` (there is one entry unless rotating)."""
        channel = self._channels.get(index)
        if channel is None:
            channel = self._channels[index] = self._target.aio_channel(index)
        self._index = index
        self._append_points = channel.stream_stream(
            APPEND_POINTS,
            request_serializer=None,  # requests are pre-encoded bytes (see _columnar)
            response_deserializer=ingest_pb2.AppendPointsResponse.FromString,
        )
        self._runs = runs_pb2_grpc.RunServiceStub(channel)

    def _next_entry(self) -> None:
        """After a failure, a rotating target moves on to its next entry. (A round-robin
        channel needs nothing: its next call goes to a replica that is connected.)"""
        if self._target.rotating:
            self._use_channel((self._index + 1) % len(self._target.grpc_targets))

    def _where(self) -> str:
        if self._target.rotating:
            return self._target.grpc_targets[self._index]
        return self._address

    async def _main(self) -> None:
        self._use_channel(0)
        producer = asyncio.create_task(self._produce())
        connector = asyncio.create_task(
            asyncio.sleep(0) if self._permanently_offline else self._connect()
        )
        self._producer = producer
        self._connector = connector
        try:
            await producer
        except (_Fatal, asyncio.CancelledError):
            pass
        except Exception as exc:  # a bug in the producer: fail loudly rather than hang
            logger.exception("stepstream: the sender failed")
            self._fail(StepstreamError(f"the sender failed: {exc!r}"))
        finally:
            for task in (producer, connector):
                task.cancel()
            await asyncio.gather(producer, connector, return_exceptions=True)
            self._fail_current_op()
            for channel in self._channels.values():
                await channel.close(grace=None)
            await self._end_spool()

    def _fail(self, error: StepstreamError) -> None:
        """Give up for good: report, refuse new records, fail every pending operation."""
        if self.fatal is not None:
            return
        self.fatal = error
        lost = self.buffer.logged_points - self.answered_points
        report = (
            ingest_error_from_rpc_error(error, count=lost)
            if isinstance(error, RPCError)
            else IngestError(series="", reason="CLIENT_ERROR", message=str(error), count=lost)
        )
        self._report(report)
        self._close_buffer()
        self._progress.set()
        self._wake.set()
        if self._producer is not None and self._producer is not asyncio.current_task():
            self._closing = True
            self._producer.cancel()

    def _report(self, error: IngestError) -> None:
        try:
            self._report_error(error)
        except Exception:  # a user callback must not kill the sender
            logger.exception("stepstream: on_error callback raised")

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if self.fatal is not None:
                raise _Fatal
            self._progress.clear()
            await self._progress.wait()
        if self.fatal is not None:
            raise _Fatal

    # ---- producer -----------------------------------------------------------------------

    async def _produce(self) -> None:
        spilling = self._on_full == "spill"
        while True:
            if self.fatal is not None:
                raise _Fatal
            spill = self._spill
            if spill.engaged or self._pushback or self._held_op or self._spill_wanted():
                spill.engaged = True
                if await self._spool_step():
                    return
                continue
            if spilling and len(self._unacked) >= self._max_inflight:
                await self._nap()  # the spill check runs again when it returns
                continue
            await self._wait_until(lambda: len(self._unacked) < self._max_inflight)
            items = self._take(self._max_batch_points)
            if items is None:
                if spilling:
                    await self._nap(clear_wake=False)
                    continue
                await self._wake.wait()
                if self.fatal is not None:
                    raise _Fatal
                continue
            first = items[0]
            if isinstance(first, Operation):
                await self._run_operation(first)
                if first.stop and first.future.done():
                    return
                continue
            records: list[Record] = items  # take() never mixes records and operations
            if self._next_sequence is None:
                await self._opened.wait()
            await self._send_new(records)

    async def _send_new(self, records: list[Record]) -> None:
        for encoder in batch_encoders(records):
            assert self._next_sequence is not None
            batch = encoder.encode(self._next_sequence)
            self._next_sequence += 1
            await self._send_encoded(batch)

    async def _send_encoded(self, batch: EncodedBatch) -> None:
        async with self._write_lock:
            self._unacked[batch.sequence] = batch
            self.batches_sent += 1
            call = self._call
            if call is None:
                return  # the connector re-sends it once a stream is open
            if self._ack_clock is None:
                self._ack_clock = time.monotonic()
            if not await self._on_stream(call, call.write(batch.request)):
                call.cancel()  # the reader sees the failure and the connector reconnects
