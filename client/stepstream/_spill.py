"""The sender's spool side: when to spill, writing what is spilled, draining it in log order.

`SpillingProducer` is a mixin of `Sender` with the producer's steps while the spool is engaged;
`_spool_queue.Spill` is the state it works on (the file, what is loaded, what is durable).
The protocol, each crash point and why it is safe: docs/spool.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._batches import batch_encoders
from ._buffer import Buffer
from ._columnar import EncodedBatch
from ._convert import ingest_error_from_rpc_error
from ._exceptions import RPCError, StepstreamError
from ._operations import UNARY_TIMEOUT, UNREACHABLE
from ._records import record_points
from ._spool import Entry, NewEntry, SpoolFull
from ._spool_queue import Planned, Spill, record_call, replay_call
from ._types import IngestError

logger = logging.getLogger("stepstream")

# A stream failing this long (seconds) spills everything, not only what the memory bound
# cannot hold.
SPILL_AFTER = 1.0
# Points per spill transaction (one fsync) at most, when plenty is queued.
SPILL_CHUNK_POINTS = 400_000
# After SQLITE_FULL (disk full or spool_max_bytes), the next append is tried this much later.
FULL_RETRY = 1.0
# Operations that are reads: a spilling sender treats them as barriers, never spools them.
READ_ONLY = frozenset({"GetRun"})
# Operations a replay must not repeat (docs/spool.md): marked before they are sent.
NOT_IDEMPOTENT = frozenset({"RewindRun"})

Items = list[Any]  # what Buffer.take returns: records, or one operation


@dataclass
class _Write:
    """A pipelined append on the writer thread, with what to put back if it fails."""

    future: asyncio.Future[list[int]]
    planned: Planned
    items: list[Items]
    start: int


class SpillingProducer:
    """Mixin of `Sender`: the producer's steps while the spool is engaged (docs/spool.md)."""

    # Provided by Sender.
    buffer: Buffer[Any]
    fatal: StepstreamError | None
    offline: bool
    batches_sent: int
    _spill: Spill
    _unacked: OrderedDict[int, EncodedBatch]
    _next_sequence: int | None
    _max_batch_points: int
    _max_inflight: int
    _max_queued: int
    _on_full: str
    _on_unavailable: str
    _call: Any
    _failing_since: float | None
    _pushback: deque[Items]
    _held_op: Any
    _progress: asyncio.Event
    _wake: asyncio.Event
    _offline_warned: bool
    _permanently_offline: bool
    _reconnect_timeout: float
    _stop_deadline: float | None
    _writer: ThreadPoolExecutor | None
    _write: _Write | None

    if TYPE_CHECKING:  # Sender's own methods

        async def _send_encoded(self, batch: EncodedBatch) -> None: ...
        async def _send_new(self, records: list[Any]) -> None: ...
        async def _end_stream(self) -> None: ...
        async def _unary(self, call: Any) -> Any: ...
        async def _wait_until(self, condition: Callable[[], bool]) -> None: ...
        async def _run_operation(self, op: Any) -> None: ...
        def _report(self, error: IngestError) -> None: ...
        def _where(self) -> str: ...

    def _init_spill(
        self, max_queued: int, on_full: str, on_unavailable: str, offline: bool, spill: Spill
    ) -> None:
        self._max_queued = max_queued
        self._on_full = on_full
        self._on_unavailable = on_unavailable
        self._spill = spill
        self._pushback = deque()  # taken, not yet spooled (no room on disk)
        self._held_op = None  # a barrier waiting for the spool to drain
        self._permanently_offline = offline
        self._stop_deadline = None  # close() while offline waits until then
        self._writer = None  # spool writes pipelined while offline
        self._write = None
        self.offline = offline
        self._offline_warned = offline

    # ---- decisions ----------------------------------------------------------------------

    def _take(self, max_points: int) -> Items | None:
        if self._pushback:
            return self._pushback.popleft()
        self._wake.clear()
        return self.buffer.take(max_points)

    def _spill_wanted(self) -> bool:
        """Whether new records must go to the spool rather than to the stream."""
        spill = self._spill
        if self._on_full != "spill" or not spill.available or self._next_sequence is None:
            return False
        if self.offline or spill.has_unloaded:
            return True
        if time.monotonic() < spill.full_until:
            return False  # no room on disk: send from memory while we can
        if self._call is not None and len(self._unacked) < self._max_inflight:
            return False
        if self.buffer.queued_points >= self._max_queued // 2:
            return True
        failing = self._failing_since
        loop = asyncio.get_running_loop()
        return failing is not None and loop.time() - failing >= SPILL_AFTER

    async def _nap(self, timeout: float = 0.05, *, clear_wake: bool = True) -> None:
        """Sleep until an answer, a log call, or `timeout`. `clear_wake=False` right after
        a take() that found the queue empty (its wakeup must not be lost)."""
        self._progress.clear()
        if clear_wake:
            self._wake.clear()
        waiters = [asyncio.ensure_future(e.wait()) for e in (self._progress, self._wake)]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _go_offline(self, error: RPCError) -> bool:
        """After the reconnect window: spool everything and keep reconnecting. False when the
        run cannot go offline (fail-fast policy, no spool, or no sequence numbers yet)."""
        if self._on_unavailable != "offline" or not self._spill.available:
            return False
        if self._next_sequence is None:
            return False
        if not self.offline:
            self.offline = True
            self._spill.engaged = True
            if not self._offline_warned:
                self._offline_warned = True
                logger.warning(
                    "stepstream: the service at %s is unreachable (%s); the run goes offline: "
                    "logging continues into the spool %s, which drains when the service is "
                    "back (or later: stepstream sync %s)",
                    self._where(),
                    error.message,
                    self._spill.path,
                    self._spill.path,
                )
            self._wake.set()
            self._progress.set()
        return True

    async def _end_spool(self) -> None:
        """At the sender's end: let a pipelined write finish, then close the spool."""
        try:
            failed = await self._settle_write()
        except BaseException as exc:  # cancelled again, or a broken disk: say so
            failed = None
            logger.warning("stepstream: the last spool write did not finish: %r", exc)
        if failed is not None:  # its points never became durable
            logger.warning("stepstream: the last spool write found no room: %s", failed[1])
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        self._spill.close()

    # ---- the engaged producer -----------------------------------------------------------

    async def _spool_step(self) -> bool:
        """One step while the spool is engaged; True when the sender is to stop."""
        spill = self._spill
        if not self.offline and self._write is not None:
            failed = await self._settle_write()  # the file is the loop's alone again
            if failed is not None:
                self._pushback.extendleft(reversed(failed[0].items))
                self._next_sequence = failed[0].start
                await self._full(failed[1])
                return False
        spill.flush_deletes()
        if self._held_op is not None and await self._release_held():
            return True
        can_send = (
            not self.offline and self._call is not None and len(self._unacked) < self._max_inflight
        )
        if spill.has_unloaded and can_send:
            await self._drain_step()
            return False
        if self._held_op is not None:
            await self._nap()
            return False
        if can_send and time.monotonic() < spill.full_until:
            await self._send_from_memory()  # no room on disk, nothing spooled waits: send
            return False
        if not self._pushback and not self._spill_wanted():
            spill.engaged = False  # back to the stream: nothing spooled waits to be loaded
            return False
        if not self._must_take():
            await self._nap()
            return False
        items = self._take(self._max_batch_points)
        if items is None:
            await self._nap(clear_wake=False)
            return False
        first = items[0]
        if hasattr(first, "future"):  # an Operation (records have no future)
            await self._spill_operation(first)
        else:
            await self._spill_records(items)
        return False

    def _must_take(self) -> bool:
        """Whether to take from the queue now (else wait: the drain makes room)."""
        if self.offline or self._pushback:
            return True
        if time.monotonic() < self._spill.full_until:
            return False
        if self.buffer.queued_points >= self._max_queued // 2:
            return True
        failing = self._failing_since
        return failing is not None and asyncio.get_running_loop().time() - failing >= SPILL_AFTER

    async def _send_from_memory(self) -> None:
        items = self._take(self._max_batch_points)
        if items is None:
            await self._nap(clear_wake=False)
        elif not hasattr(items[0], "future"):
            await self._send_new(items)
        elif items[0].stop:
            # close()'s stop: held like any other, so that releasing it (_release_held) is
            # what ends the stream and the sender. Run here, it ended the stream but left
            # the producer going, and close() waited for the thread until its timeout.
            self._held_op = items[0]
        else:
            await self._run_operation(items[0])

    async def _spill_records(self, first: Items) -> None:
        taken: list[Items] = [first]
        points = sum(map(record_points, first))
        while points < SPILL_CHUNK_POINTS:
            more = self._take(self._max_batch_points)
            if more is None:
                break
            taken.append(more)
            if hasattr(more[0], "future"):
                break  # an operation: spooled after these records, in the next step
            points += sum(map(record_points, more))
        tail = taken.pop() if hasattr(taken[-1][0], "future") else None
        assert self._next_sequence is not None
        start = self._next_sequence
        entries: list[NewEntry] = []
        for records in taken:
            for encoder in batch_encoders(records):  # as _send_new: what the service takes
                batch = encoder.encode(start + len(entries))
                entries.append((batch.sequence, batch.points, "", batch.request))
        back = taken + ([tail] if tail is not None else [])  # in order, should it fail
        if await self._append(entries, back, start=start, written=taken):
            self._next_sequence = start + len(entries)
            if tail is not None:
                await self._spill_operation(tail[0])

    async def _spill_operation(self, op: Any) -> None:
        if op.stop or op.call is None or op.name in READ_ONLY:
            self._held_op = op
            return
        method, body = record_call(op.call)
        last = (self._next_sequence or 1) - 1
        if await self._append([(last, 0, method, body)], [[op]]):
            op.future.set_result(None)

    async def _append(
        self,
        entries: list[NewEntry],
        items: list[Items],
        *,
        start: int | None = None,
        written: list[Items] | None = None,
    ) -> bool:
        """Append durably; on a full disk put `items` back in front and warn once.

        With `start` (the first sequence number of `entries`, records spilled offline) the
        write is pipelined: it runs on the writer thread while the loop encodes the next
        records, and True means "submitted"; a failure is found by the next append (or
        `_settle_write`), which puts both back in order and rewinds the sequence numbers.
        `written` are the items of `entries` alone (`items` may end with an operation taken
        after them, which the caller goes on with when this returns True).
        """
        spill = self._spill
        failed = await self._settle_write()
        if failed is not None:
            write, exc = failed
            self._pushback.extendleft(reversed(write.items + items))
            self._next_sequence = write.start
            return await self._full(exc)
        if start is not None and self.offline:
            planned = spill.prepare(self._unacked.values(), entries)
            if planned is not None:
                if self._writer is None:
                    self._writer = ThreadPoolExecutor(1, thread_name_prefix="stepstream-spool")
                loop = asyncio.get_running_loop()
                future = loop.run_in_executor(self._writer, spill.write, planned)
                self._write = _Write(future, planned, items if written is None else written, start)
            return True
        try:
            spill.append(self._unacked.values(), entries)
        except SpoolFull as exc:
            self._pushback.extendleft(reversed(items))
            return await self._full(exc)
        return True

    async def _settle_write(self) -> tuple[_Write, SpoolFull] | None:
        """Wait for the pipelined write; (it, the error) when it found no room."""
        write = self._write
        if write is None:
            return None
        self._write = None
        try:
            positions = await asyncio.shield(write.future)
        except SpoolFull as exc:
            self._spill.failed(write.planned)
            return write, exc
        self._spill.committed(write.planned, positions)
        return None

    async def _full(self, exc: SpoolFull) -> bool:
        spill = self._spill
        spill.full_until = time.monotonic() + FULL_RETRY
        if not spill.warned_full:
            spill.warned_full = True
            logger.warning(
                "stepstream: the spool has no room (%s); log calls block until it has "
                "(nothing is dropped)",
                exc,
            )
        if self.offline or spill.has_unloaded:
            await asyncio.sleep(FULL_RETRY)
        elif self._call is None or len(self._unacked) >= self._max_inflight:
            # Online, what fills the spool is sent and unanswered, and the stream takes no
            # more: wait for an answer (or the retry). Never go straight back: the next step
            # would take the pushed-back records again without yielding to the loop, and the
            # connector that reconnects and reads the answers would never run. (When the
            # stream takes batches, the next step sends them from memory.)
            await self._nap(FULL_RETRY)
        return False

    async def _release_held(self) -> bool:
        """Release a held barrier (wait(), close's stop) once everything before it is
        delivered, or durable in the spool while offline. True when the sender stops."""
        op = self._held_op
        spill = self._spill
        if self._pushback:
            return False  # earlier records are not durable yet
        if self.offline:
            if not await self._append([], []):  # settles the pipelined write first
                return False
            if op.stop and not self._permanently_offline:
                # close() after an outage: one more reconnect window before the rest is
                # left for `stepstream sync` (everything is durable already).
                now = time.monotonic()
                if self._stop_deadline is None:
                    self._stop_deadline = now + self._reconnect_timeout
                if now < self._stop_deadline:
                    return False
            self._held_op = None
            op.future.set_result(None)
            return bool(op.stop)
        if spill.has_unloaded or self._unacked:
            return False
        self._held_op = None
        if op.stop:
            await self._end_stream()
            op.future.set_result(None)
            return True
        await self._run_operation(op)
        return False

    async def _drain_step(self) -> None:
        entries = self._spill.load(self._max_inflight - len(self._unacked))
        if not entries:
            return
        if not entries[0].is_batch:
            await self._replay(entries[0])
            return
        for entry in entries:
            await self._send_encoded(EncodedBatch(entry.sequence, entry.body, entry.points))

    async def _replay(self, entry: Entry) -> None:
        spill = self._spill
        if entry.method in NOT_IDEMPOTENT and entry.attempted:
            self._report(
                IngestError(
                    series="",
                    reason="NOT_REPEATED",
                    message=f"{entry.method} was sent by an interrupted upload; not repeated",
                )
            )
            spill.op_done(entry.pos)
            return
        await self._wait_until(lambda: not self._unacked or self.offline)
        if self.offline:
            spill.unload(entry.pos)
            return
        if entry.method in NOT_IDEMPOTENT:
            assert spill.file is not None
            spill.file.mark_attempted(entry.pos)  # committed before it can reach the service
        try:
            await self._unary(replay_call(entry.method, entry.body, UNARY_TIMEOUT))
        except RPCError as exc:
            if exc.code in UNREACHABLE and self._go_offline(exc):
                spill.unload(entry.pos)
                return
            self._report(ingest_error_from_rpc_error(exc, operation=entry.method))
        spill.op_done(entry.pos)

    async def _offline_operation(self, op: Any) -> bool:
        """An operation met online whose barrier or call found the run offline: spool it.
        True when it was spooled (its future resolved)."""
        if op.stop or op.call is None or op.name in READ_ONLY:
            self._held_op = op
            return True
        method, body = record_call(op.call)
        last = (self._next_sequence or 1) - 1
        while not await self._append([(last, 0, method, body)], []):
            if self.fatal is not None:
                return False
            await asyncio.sleep(FULL_RETRY)
        if not op.future.done():
            op.future.set_result(None)
        return True
