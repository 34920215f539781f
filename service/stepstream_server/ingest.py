"""The async ingest worker: group commit and sequencing of batches from every stream.

Streams hand validated batches to `IngestWorker.submit`, which assigns them to their writer's
sequence and queues them. The worker takes whatever is queued (up to a group limit), has the
judge decide every entry against the floors in Redis (one pipelined round trip), waits for the
judgments of other replicas it read from, writes the accepted points, the writers' sequence
numbers and the acknowledgements in one store transaction, and only then resolves the batches'
futures: an acknowledgement always means "committed".

A run part the store refuses (its fence moved: a rewind, a state change, another replica
fencing a stalled one; or its writer's sequence is already there) is judged again, in order,
under the new epoch; its stream never notices. docs/replicas.md has the protocol.

A group the store cannot take (`StoreUnavailable`: disk full, I/O or lock error, PostgreSQL
restarting, a connection killed mid-commit) is *held*: its judgment is abandoned, its batches
go back to the head of the line, and the worker tries again after a capped backoff until the
store takes writes; nothing is answered meanwhile (docs/faults.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import replace
from typing import Any

import grpc
from redis.exceptions import RedisError

from .judge import Judge, Judgment, RunPart
from .metrics import Metrics
from .model import (
    AppendAck,
    BatchFailure,
    Outcome,
    Rejection,
    RunRecord,
    SeriesEntry,
    outcome_from_json,
)
from .ordering import FloorCache, await_judgments
from .outage import RedisOutage, StoreOutage
from .parts import Resume, Split, cut, writer_commit
from .pending import Pending as Pending
from .pending import WorkerLimits as WorkerLimits
from .pending import Writer as Writer
from .store import AsyncStore, RunCommit, StoreUnavailable
from .store.parts_rule import read_partial

log = logging.getLogger(__name__)


# The one batch error the worker answers before the batch's turn (it does not use up a sequence).
SEQUENCE_GAP = "SEQUENCE_GAP"


class StoreFailed(Exception):
    """A group could not be committed; its streams must reconnect and re-send."""


class IngestWorker:
    """Judges, commits and acknowledges queued batches in groups."""

    def __init__(
        self,
        store: AsyncStore,
        floors: FloorCache,
        *,
        limits: WorkerLimits | None = None,
        on_store_serving: Callable[[bool], Awaitable[None]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.metrics.watch_queue(lambda: self._queued_points)
        self.store = store
        self.outage = StoreOutage(on_store_serving)
        self.redis = RedisOutage()
        self.judge = Judge(store, floors)
        self.floors = floors
        self.limits = limits or WorkerLimits()
        self._queue: deque[Pending] = deque()
        # Batches to judge again (refused parts), ahead of the queue, in their order.
        self._again: deque[Pending] = deque()
        self._wake = asyncio.Event()
        self._queued_points = 0
        self._room = asyncio.Event()
        # A writer lives while a stream or a queued batch holds it: exactly one object per
        # writer at a time, and none kept for writers that went away (the store has their
        # sequence numbers).
        self._writers: weakref.WeakValueDictionary[tuple[str, str, str], Writer] = (
            weakref.WeakValueDictionary()
        )
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[set[tuple[str, str]]] | None = None  # commit under way
        self._judging = False  # a group taken and not yet committing (drain waits for it)
        self._background: set[asyncio.Task[None]] = set()
        self._answers: set[asyncio.Task[Outcome]] = set()  # see _answer_task
        # Writers whose latest batch is small: a big batch is cut in parts only while one of
        # them (another writer) has a batch in flight or had one answered just now (heavy
        # writers among themselves gain nothing from parts). Held weakly and asked live
        # (`_cuts`), so a writer that went away, or went quiet, never counts.
        self._light: weakref.WeakSet[Writer] = weakref.WeakSet()
        self._parts_waited = False  # the previous group left its parts out (_add_parts)
        self._stopping = False  # drain_and_stop: reads of stored outcomes stop retrying
        self.stats = {"groups": 0, "batches": 0, "points": 0, "refused": 0, "rejudged": 0}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-worker")

    async def drain_and_stop(self, timeout: float = 10.0) -> None:
        """Commit everything queued, then stop. During a store outage, wait at most `timeout`
        seconds: what is still held then fails (its clients re-send to the next service)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._queue or self._again or self._busy:
            if self.outage.active and asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._settle()
        left = [*self._again, *self._queue]
        self._again.clear()
        self._queue.clear()
        self._fail(left, StoreFailed("the service stopped while the store refused writes"))
        self._stopping = True
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await task

    async def run_record(self, project: str, run_id: str) -> RunRecord:
        return await self.judge.run_record(project, run_id)

    # -- streams ----------------------------------------------------------------------------

    async def open_writer(
        self, project: str, run_id: str, writer_id: str
    ) -> tuple[Writer, RunRecord]:
        """The writer of a new stream, its committed sequence read from the store: it may have
        written through another replica since this one last saw it."""
        record = await self.run_record(project, run_id)
        committed = await self.store.read(lambda s: s.writer_sequence(project, run_id, writer_id))
        key = (project, run_id, writer_id)
        writer = self._writers.get(key)
        if writer is None:
            writer = self._writers.setdefault(
                key, Writer(project, run_id, writer_id, committed, committed + 1)
            )
        writer.committed = max(writer.committed, committed)
        writer.next_expected = max(writer.next_expected, writer.committed + 1)
        # The next batch's first parts may be durable (the service died between its parts).
        text = await self.store.read(
            lambda s: s.writer_outcome(project, run_id, writer_id, writer.committed + 1)
        )
        found = read_partial(text)
        writer.resume = None if found is None else Resume(writer.committed + 1, *found)
        return writer, record

    async def submit(
        self,
        writer: Writer,
        sequence: int,
        entries: list[SeriesEntry],
        rejections: list[Rejection],
        failure: BatchFailure | None,
    ) -> Awaitable[Outcome]:
        """Place a batch in its writer's sequence; return what resolves to its outcome.

        Waits (backpressure) while too many points are queued.
        """
        known = self._known(writer, sequence)  # a re-send adds no points: no wait for room
        if known is not None:
            return known
        # Room first, before the batch takes its sequence: from here to the queue nothing
        # awaits, so a stream that goes away while it waits leaves no trace, and no later
        # batch of its writer (re-sent on another stream) can overtake it.
        # Counted once, without the property: for 100,000 entries it held the event loop for
        # tens of milliseconds twice (docs/faults.md section 5).
        points = sum(len(e.values) for e in entries)
        await self._wait_for_room(writer, points)
        known = self._known(writer, sequence)  # taken meanwhile by a re-send on another stream
        if known is not None:
            return known
        loop = asyncio.get_running_loop()
        # The committed sequence may have moved past what this replica queued (the writer
        # also wrote through another replica).
        writer.next_expected = max(writer.next_expected, writer.committed + 1)
        if sequence != writer.next_expected:
            done: asyncio.Future[Outcome] = loop.create_future()
            done.set_result(
                BatchFailure(
                    grpc.StatusCode.FAILED_PRECONDITION.name,
                    SEQUENCE_GAP,
                    f"batch sequence {sequence} skips ahead: the next expected sequence for writer"
                    f" {writer.writer_id!r} is {writer.next_expected}",
                    {"expected": str(writer.next_expected), "received": str(sequence)},
                )
            )
            return done
        writer.next_expected += 1
        future: asyncio.Future[Outcome] = loop.create_future()
        writer.inflight[sequence] = future
        split = None
        resume, writer.resume = writer.resume, None
        if resume is not None and resume.sequence == sequence and failure is None:
            split = Split(entries, rejections, future, resume)  # goes on where it stopped
        if split is not None:
            points = split.remaining
        limits = self.limits
        if points <= limits.max_part_points and len(entries) <= limits.max_part_entries:
            self._light.add(writer)
        else:
            self._light.discard(writer)
        self._queued_points += points
        writer.queued_points += points
        self._queue.append(
            Pending(writer, sequence, entries, rejections, failure, points, future, split=split)
        )
        self._wake.set()
        return _Answer(future)

    def _known(self, writer: Writer, sequence: int) -> asyncio.Task[Outcome] | None:
        """The answer of a batch in flight or committed already (a re-send), else None."""
        inflight = writer.inflight.get(sequence)
        if inflight is not None:
            return self._answer_task(self._as_duplicate(inflight))
        if sequence <= writer.committed:
            return self._answer_task(self._stored_outcome(writer, sequence))
        return None

    async def _wait_for_room(self, writer: Writer, points: int) -> None:
        """Backpressure: wait while the queue, or this writer's share of it, is full."""
        limits = self.limits
        while (self._queued_points and self._queued_points + points > limits.max_queued_points) or (
            writer.queued_points and writer.queued_points + points > limits.max_writer_queued_points
        ):
            self._room.clear()
            await self._room.wait()

    def _answer_task(self, coro: Coroutine[Any, Any, Outcome]) -> asyncio.Task[Outcome]:
        """An answer that runs now, held until it ends: its stream may go away without
        awaiting it (the task must neither be collected mid-read nor warn 'never awaited')."""
        task = asyncio.get_running_loop().create_task(coro)
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)
        return task

    async def _stored_sequence(self, w: Writer) -> int:
        return await self.store.read(lambda s: s.writer_sequence(w.project, w.run_id, w.writer_id))

    async def _as_duplicate(self, original: asyncio.Future[Outcome]) -> Outcome:
        outcome = await asyncio.shield(original)
        return _duplicate(outcome)

    async def _stored_outcome(self, writer: Writer, sequence: int) -> Outcome:
        """The stored acknowledgement of a committed batch, as a duplicate. While the store
        cannot be read, it is read again after a capped backoff: an acknowledgement always
        carries the truth, never an empty incarnation (docs/faults.md, section 5)."""
        delay = 0.05
        while True:
            try:
                text = await self.store.read(
                    lambda s: s.writer_outcome(
                        writer.project, writer.run_id, writer.writer_id, sequence
                    )
                )
                if text is not None:
                    return outcome_from_json(text, duplicate=True)
                # Older than the retained acknowledgements (ACK_RETENTION): the counts are
                # gone; the incarnation is the run's current one.
                record = await self.run_record(writer.project, writer.run_id)
                return AppendAck(0, 0, (), (), record.current_incarnation_id, duplicate_batch=True)
            except StoreUnavailable:
                if self._stopping:
                    raise StoreFailed("the service stopped while the store refused reads") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _answer_stored(self, item: Pending) -> None:
        """Answer a batch committed meanwhile (another replica, or a commit that landed
        unseen) from its stored acknowledgement, read in the background: the worker goes on,
        and the batch stays unanswered until the read succeeds."""
        self._leave(item)

        async def answer() -> None:
            try:
                outcome = await self._stored_outcome(item.writer, item.sequence)
            except StoreFailed as exc:
                self._fail([item], exc)
                return
            except Exception as exc:  # a read error the store does not call transient
                log.exception("reading the stored answer of batch %d failed", item.sequence)
                self._fail([item], StoreFailed(f"its stored answer could not be read: {exc}"))
                return
            self._acknowledge(item, outcome)

        task = asyncio.create_task(answer())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the worker -------------------------------------------------------------------------

    @property
    def _busy(self) -> bool:
        return self._judging or (self._inflight is not None and not self._inflight.done())

    def _take(self) -> list[Pending]:
        """The next group: batches to judge again first, then the queue, shared fairly: each
        writer with queued batches gets an equal share of the group's points (at least one
        batch), in its own order; what exceeds a share waits for the next group. So a light
        stream's batches ride in every group next to a heavy one's, never behind all of it.
        While several writers have batches in flight, a big batch goes in parts
        (`max_part_points`, `max_part_entries`): one part of it per group, and nothing else of
        its writer (docs/faults.md, section 5)."""
        group: list[Pending] = []
        points = 0
        closed: set[int] = set()  # writers that add nothing more to this group
        again: deque[Pending] = deque()
        while self._again:
            item = self._again.popleft()
            if item.future.done():  # failed with an earlier group; its stream re-sends it
                self._leave(item)
                continue
            w = id(item.writer)
            if len(group) >= self.limits.max_group_batches or w in closed:
                closed.add(w)
                again.append(item)
                continue
            if item.split is not None:
                closed.add(w)
            group.append(item)
            points += item.points
        self._again = again
        writers = {id(p.writer) for p in self._queue} | {id(p.writer) for p in group}
        share = max(1, (self.limits.max_group_points - points) // max(1, len(writers)))
        taken: dict[int, int] = {}
        keep: deque[Pending] = deque()
        parted: list[Pending] = []  # batches in parts: one part each, added last
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():
                self._leave(item)
                continue
            w = id(item.writer)
            full = len(group) >= self.limits.max_group_batches
            if (
                full
                or w in closed
                or (w in taken and taken[w] + item.points > share)
                or points >= self.limits.max_group_points
            ):
                closed.add(w)  # its later batches wait too: a writer's order is kept
                keep.append(item)
                continue
            if item.split is None and item.failure is None and self._cuts(item):
                item.split = Split(item.entries, item.rejections, item.future)
            if item.split is not None:  # once cut, cut to the end: each part is as small
                closed.add(w)
                parted.append(item)
                keep.append(item)  # the rest stays ahead of the writer's later batches
                continue
            taken[w] = taken.get(w, 0) + item.points
            group.append(item)
            points += item.points
        self._queue = keep
        self._add_parts(group, parted)
        return group

    def _add_parts(self, group: list[Pending], parted: list[Pending]) -> None:
        """The next part of each batch in parts, unless whole batches ride in this group:
        then the parts wait for the next one (and only for one: parts never starve), so a
        light batch never waits for a part's store work (128 new series) in its own commit
        (docs/faults.md, section 5)."""
        if not parted:
            return
        cut_writers = {id(p.writer) for p in parted}
        whole = any(p.split is None and id(p.writer) not in cut_writers for p in group)
        if whole and not self._parts_waited:
            self._parts_waited = True
            return
        self._parts_waited = False
        done: set[int] = set()
        for item in parted:
            assert item.split is not None
            group.append(cut(item, self.limits.max_part_points, self.limits.max_part_entries))
            if item.split.taken_all:
                done.add(id(item))
        if done:
            self._queue = deque(p for p in self._queue if id(p) not in done)

    def _cuts(self, item: Pending) -> bool:
        """Whether a big batch goes in parts: another writer with small batches has one in
        flight (queued, being judged or committing: counting only the queue would miss the
        light stream whose batches are all in the group that commits now), or had one
        answered within `light_recent` seconds (one batch at a time: none in flight between
        an answer and the next batch, and a whole big batch would stall the next)."""
        limits = self.limits
        big = item.points > limits.max_part_points or len(item.entries) > limits.max_part_entries
        if not big or limits.always_cut:
            return big
        since = asyncio.get_running_loop().time() - limits.light_recent
        return limits.cut_parts and any(
            w is not item.writer and (w.answered_at > since or w.waiting) for w in list(self._light)
        )

    async def _run(self) -> None:
        """Judge each group while the previous one commits (one commit in flight): the Redis
        round trip and the preparation of group N+1 overlap group N's commit."""
        while True:
            if not self._again and not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.outage.active:  # let the commit in flight tell first, then back off
                await self._settle()
                await self.outage.pause()
            group = self._take()
            if not group:
                continue
            self._judging = True
            try:
                await self._judge_and_commit(group)
            finally:
                self._judging = False

    async def _judge_and_commit(self, group: list[Pending]) -> None:
        """Judge the group and start its commit once the previous one has settled."""
        started = self.metrics.clock()
        try:
            judgment = await self.judge.judge(group)
        except StoreUnavailable as exc:  # the judge abandoned what it had checked
            await self._hold(group, exc)
            return
        except Exception as exc:  # keep serving: the group's streams reconnect and re-send
            if self.redis.caused(exc):
                self.redis.failed(str(exc))  # a line when the outage starts, not per group
            else:
                log.exception("judging a group failed")
            self._fail(group, exc)
            return
        self.redis.succeeded()
        previous = await self._settle()
        if previous:
            # Judged on top of batches that are to be judged again (or failed): these
            # follow them, judged afresh.
            later = [p for p in judgment.parts if p.key in previous]
            judgment.parts = [p for p in judgment.parts if p.key not in previous]
            await self.judge.abandon(later)
            await self._again_in_order(group, later)
        self._inflight = asyncio.create_task(self._commit(group, judgment, started))

    async def _settle(self) -> set[tuple[str, str]]:
        """Wait for the commit in flight: the runs whose batches went back to be judged
        again or failed (a later judgment of theirs must not commit as it is)."""
        task = self._inflight
        if task is None:
            return set()
        await asyncio.wait([task])
        if self._inflight is task:  # kept until done: drain_and_stop may wait for it too
            self._inflight = None
        return task.result()

    async def _commit(
        self, group: Sequence[Pending], judgment: Judgment, started: float | None = None
    ) -> set[tuple[str, str]]:
        """Store the group in one transaction, acknowledge what landed, and send refused
        parts back to be judged again. Returns the runs sent back or failed."""
        try:
            return await self._commit_group(group, judgment, started or self.metrics.clock())
        except StoreUnavailable as exc:  # held: judged again once the store takes writes
            await self.judge.abandon(judgment.parts)
            await self._hold(group, exc)
        except Exception as exc:  # only this group's batches fail; their streams re-send
            log.exception("group commit failed")
            await self.judge.abandon(judgment.parts)
            self._fail(group, exc)
        return {p.key for p in judgment.parts}

    async def _hold(self, items: Sequence[Pending], exc: StoreUnavailable) -> None:
        """The store refused the group: its batches go back to the head of the line, in
        order, to be judged afresh after a backoff (the judgment they had is abandoned, and
        a commit that landed unseen is found by its writer sequence then). Holding is no
        refusal: it does not count towards `max_attempts`."""
        self._requeue([i for i in items if not i.future.done()])
        await self.outage.failed(exc.detail)

    def _requeue(self, items: Sequence[Pending]) -> None:
        """Put batches back to be judged again, ahead of the queue. Each writer's batches must
        stay in sequence order: a later one committed first would make an earlier one look
        like a duplicate. Ordering everything by sequence (the parts of a batch by their
        start) does that whatever groups they came from (the order between writers is free)."""
        if items:
            self._again = deque(sorted([*self._again, *items], key=lambda p: (p.sequence, p.start)))
            self._wake.set()

    async def _commit_group(
        self, group: Sequence[Pending], judgment: Judgment, started: float
    ) -> set[tuple[str, str]]:
        parts = judgment.parts
        moved = await await_judgments(self.floors, parts)
        commits = [
            RunCommit(
                p.project,
                p.run_id,
                p.epoch,
                p.chunks,
                [writer_commit(group[i], judgment.outcomes[i]) for i in p.indices],
            )
            for p in parts
            if p.key not in moved
        ]
        with self.metrics.store_commit_seconds.time():
            refused = await self.store.write(lambda s: s.commit(commits))
        if commits:  # an empty commit lands even on a full disk: it says nothing of the store
            await self.outage.succeeded()
        back: list[RunPart] = []
        landed: list[RunPart] = []
        for p in parts:
            if p.key in refused:
                self.stats["refused"] += 1
                with contextlib.suppress(RedisError):
                    await self.judge.moved(
                        *p.key, max(refused[p.key], p.epoch + 1), (p.incarnation_id, p.epoch)
                    )
                back.append(p)
            elif p.key in moved:
                await self.judge.abandon([p])
                back.append(p)
            else:
                landed.append(p)
        accepted = 0
        for p in landed:
            for i in p.indices:
                if group[i].split is not None:
                    accepted += self._part_landed(group[i], judgment.outcomes[i])
                else:
                    accepted += self._acknowledge(group[i], judgment.outcomes[i])
        for i in judgment.loose:
            item, outcome = group[i], judgment.outcomes[i]
            if item.split is not None:
                outcome = item.split.merge(item.start, item.end, outcome)[0]
            self._acknowledge(item, outcome)
        released = [p.key for p in landed if p.checked]
        if released:
            self._spawn(self.floors.release(judgment.token, released))
        if back:
            await self._again_in_order(group, back)
        self.stats["groups"] += 1
        self.stats["batches"] += sum(len(p.indices) for p in landed)
        self.stats["points"] += accepted
        self.metrics.group_committed(sum(len(p.indices) for p in landed), accepted, started)
        return {p.key for p in back}

    async def _again_in_order(self, group: Sequence[Pending], parts: Sequence[RunPart]) -> None:
        """Send the parts' batches back to be judged again (after a fresh look at their
        writers: a sequence committed meanwhile, through another replica, is a duplicate)."""
        items = sorted(i for p in parts for i in p.indices)
        writers = {id(group[i].writer): group[i].writer for i in items}
        # The store refusing reads too (PostgreSQL down) only delays this: a batch committed
        # meanwhile is refused again by its writer sequence and found then.
        with contextlib.suppress(StoreUnavailable):
            for w in writers.values():
                w.committed = max(w.committed, await self._stored_sequence(w))
        again: list[Pending] = []
        for i in items:
            item = group[i]
            if item.future.done():
                continue
            if item.sequence <= item.writer.committed:
                self._answer_stored(item)
                continue
            if item.split is not None and await self._landed_unseen(item):
                continue
            item.attempts += 1
            if item.attempts >= self.limits.max_attempts:
                self._fail([item], StoreFailed(f"refused {item.attempts} times"))
                continue
            self.stats["rejudged"] += 1
            again.append(item)
        self._requeue(again)

    async def _landed_unseen(self, item: Pending) -> bool:
        """Whether a refused part is stored already (its commit landed but was not seen:
        the connection died during COMMIT): the stored progress is at its end or past it."""
        w = item.writer
        try:
            text = await self.store.read(
                lambda s: s.writer_outcome(w.project, w.run_id, w.writer_id, item.sequence)
            )
        except StoreUnavailable:
            return False  # refused again then, and looked at again
        found = read_partial(text)
        if found is None or found[0] < item.end:
            return False
        assert item.split is not None
        item.split.so_far = found[1]
        self._leave(item)
        return True

    def _part_landed(self, item: Pending, outcome: Outcome) -> int:
        """A part is stored: the batch is acknowledged if it was the last one."""
        assert item.split is not None
        merged, final = item.split.merge(item.start, item.end, outcome)
        if isinstance(merged, AppendAck):
            item.split.so_far = merged
        if final:
            self._acknowledge(item, merged)
        else:
            self._leave(item)
        return outcome.accepted if isinstance(outcome, AppendAck) else 0

    def _acknowledge(self, item: Pending, outcome: Outcome) -> int:
        writer = item.writer
        writer.committed = max(writer.committed, item.sequence)
        writer.inflight.pop(item.sequence, None)
        writer.answered_at = asyncio.get_running_loop().time()
        if not item.future.done():
            item.future.set_result(outcome)
        self._leave(item)
        return outcome.accepted if isinstance(outcome, AppendAck) else 0

    def _leave(self, item: Pending) -> None:
        if item.points:
            self._queued_points -= item.points
            item.writer.queued_points -= item.points
            item.points = 0
            self._room.set()

    def _fail(self, group: Sequence[Pending], exc: BaseException) -> None:
        for item in group:
            writer = item.writer
            writer.next_expected = writer.committed + 1
            for fut in [*writer.inflight.values(), item.future]:
                if not fut.done():
                    fut.set_exception(StoreFailed(str(exc)))
                    # Read by the stream if it is still there; if it went away nobody
                    # will, and asyncio must not log "exception was never retrieved".
                    fut.exception()
            writer.inflight.clear()
            self._light.discard(writer)
            self._leave(item)

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except RedisError as exc:  # the lease then expires instead
                self.redis.failed(str(exc))

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _duplicate(outcome: Outcome) -> Outcome:
    return replace(outcome, duplicate_batch=True)


class _Answer:
    """What a stream awaits for its batch: the worker's future, shielded. A stream that goes
    away while it waits (its client cancelled, its connection dropped) must not cancel the
    batch itself: the batch is in flight and commits in its writer's order; a cancelled one
    would be skipped while the later ones commit, and its re-send taken for a duplicate."""

    def __init__(self, future: asyncio.Future[Outcome]) -> None:
        self.future = future

    def __await__(self) -> Generator[Any, None, Outcome]:
        return asyncio.shield(self.future).__await__()
