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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field, replace

import grpc
from redis.exceptions import RedisError

from .judge import Judge, Judgment, RunPart
from .model import (
    AppendAck,
    BatchFailure,
    Outcome,
    Rejection,
    RunRecord,
    SeriesEntry,
    WriterCommit,
    outcome_from_json,
)
from .ordering import FloorCache
from .store import AsyncStore, RunCommit

log = logging.getLogger(__name__)


@dataclass
class Writer:
    """Sequence state of one (run, writer): committed, expected next, and what is in flight."""

    project: str
    run_id: str
    writer_id: str
    committed: int
    next_expected: int
    inflight: dict[int, asyncio.Future[Outcome]] = field(default_factory=dict)
    queued_points: int = 0  # of its batches waiting in the queue (fair sharing)

    @property
    def run_key(self) -> tuple[str, str]:
        return (self.project, self.run_id)


@dataclass
class Pending:
    """A batch waiting for its group commit."""

    writer: Writer
    sequence: int
    entries: list[SeriesEntry]
    rejections: list[Rejection]
    failure: BatchFailure | None
    points: int
    future: asyncio.Future[Outcome]
    attempts: int = 0  # judged this many times (a refused part is judged again)


@dataclass(frozen=True)
class WorkerLimits:
    """Bounds that keep memory flat and groups reasonably sized."""

    max_queued_points: int = 2_000_000
    # One writer's share of the queue: a heavy stream cannot fill it for everyone else.
    max_writer_queued_points: int = 500_000
    max_group_points: int = 500_000
    max_group_batches: int = 512
    # A batch refused this many times fails (COMMIT_FAILED) instead of being judged again.
    max_attempts: int = 16


class StoreFailed(Exception):
    """A group could not be committed; its streams must reconnect and re-send."""


class IngestWorker:
    """Judges, commits and acknowledges queued batches in groups."""

    def __init__(
        self, store: AsyncStore, floors: FloorCache, *, limits: WorkerLimits | None = None
    ) -> None:
        self.store = store
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
        self._background: set[asyncio.Task[None]] = set()
        self.stats = {"groups": 0, "batches": 0, "points": 0, "refused": 0, "rejudged": 0}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-worker")

    async def drain_and_stop(self) -> None:
        """Commit everything queued, then stop."""
        while self._queue or self._again or self._busy:
            await asyncio.sleep(0.01)
        await self._settle()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
        loop = asyncio.get_running_loop()
        inflight = writer.inflight.get(sequence)
        if inflight is not None:
            return self._as_duplicate(inflight)
        if sequence <= writer.committed:
            return loop.create_task(self._stored_outcome(writer, sequence))
        # The committed sequence may have moved past what this replica queued (the writer
        # also wrote through another replica).
        writer.next_expected = max(writer.next_expected, writer.committed + 1)
        if sequence != writer.next_expected:
            done: asyncio.Future[Outcome] = loop.create_future()
            done.set_result(
                BatchFailure(
                    grpc.StatusCode.FAILED_PRECONDITION.name,
                    "SEQUENCE_GAP",
                    f"batch sequence {sequence} skips ahead: the next expected sequence for writer"
                    f" {writer.writer_id!r} is {writer.next_expected}",
                    {"expected": str(writer.next_expected), "received": str(sequence)},
                )
            )
            return done
        writer.next_expected += 1
        future: asyncio.Future[Outcome] = loop.create_future()
        writer.inflight[sequence] = future
        points = sum(e.count for e in entries)
        while (
            self._queued_points and self._queued_points + points > self.limits.max_queued_points
        ) or (
            writer.queued_points
            and writer.queued_points + points > self.limits.max_writer_queued_points
        ):
            self._room.clear()
            await self._room.wait()
        self._queued_points += points
        writer.queued_points += points
        self._queue.append(Pending(writer, sequence, entries, rejections, failure, points, future))
        self._wake.set()
        return future

    async def _stored_sequence(self, w: Writer) -> int:
        return await self.store.read(lambda s: s.writer_sequence(w.project, w.run_id, w.writer_id))

    async def _as_duplicate(self, original: asyncio.Future[Outcome]) -> Outcome:
        outcome = await asyncio.shield(original)
        return _duplicate(outcome)

    async def _stored_outcome(self, writer: Writer, sequence: int) -> Outcome:
        text = await self.store.read(
            lambda s: s.writer_outcome(writer.project, writer.run_id, writer.writer_id, sequence)
        )
        if text is None:  # older than the retained acknowledgements: counts are gone
            return AppendAck(0, 0, (), (), "", duplicate_batch=True)
        return outcome_from_json(text, duplicate=True)

    # -- the worker -------------------------------------------------------------------------

    @property
    def _busy(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    def _take(self) -> list[Pending]:
        """The next group: batches to judge again first, then the queue, shared fairly: each
        writer with queued batches gets an equal share of the group's points (at least one
        batch), in its own order; what exceeds a share waits for the next group. So a light
        stream's batches ride in every group next to a heavy one's, never behind all of it."""
        group: list[Pending] = []
        points = 0
        while self._again and len(group) < self.limits.max_group_batches:
            item = self._again.popleft()
            if item.future.done():  # failed with an earlier group; its stream re-sends it
                self._leave(item)
                continue
            group.append(item)
            points += item.points
        writers = {id(p.writer) for p in self._queue}
        share = max(1, (self.limits.max_group_points - points) // max(1, len(writers)))
        taken: dict[int, int] = {}
        closed: set[int] = set()
        keep: deque[Pending] = deque()
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
            taken[w] = taken.get(w, 0) + item.points
            group.append(item)
            points += item.points
        self._queue = keep
        return group

    async def _run(self) -> None:
        """Judge each group while the previous one commits (one commit in flight): the Redis
        round trip and the preparation of group N+1 overlap group N's commit."""
        while True:
            if not self._again and not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            group = self._take()
            if not group:
                continue
            try:
                judgment = await self.judge.judge(group)
            except Exception as exc:  # keep serving: the group's streams reconnect and re-send
                log.exception("judging a group failed")
                self._fail(group, exc)
                continue
            previous = await self._settle()
            if previous:
                # Judged on top of batches that are to be judged again (or failed): these
                # follow them, judged afresh.
                later = [p for p in judgment.parts if p.key in previous]
                judgment.parts = [p for p in judgment.parts if p.key not in previous]
                await self.judge.abandon(later)
                await self._again_in_order(group, later)
            self._inflight = asyncio.create_task(self._commit(group, judgment))

    async def _settle(self) -> set[tuple[str, str]]:
        """Wait for the commit in flight: the runs whose batches went back to be judged
        again or failed (a later judgment of theirs must not commit as it is)."""
        task, self._inflight = self._inflight, None
        if task is None:
            return set()
        await asyncio.wait([task])
        return task.result()

    async def _commit(self, group: Sequence[Pending], judgment: Judgment) -> set[tuple[str, str]]:
        """Store the group in one transaction, acknowledge what landed, and send refused
        parts back to be judged again. Returns the runs sent back or failed."""
        try:
            return await self._commit_group(group, judgment)
        except Exception as exc:  # only this group's batches fail; their streams re-send
            log.exception("group commit failed")
            await self.judge.abandon(judgment.parts)
            self._fail(group, exc)
            return {p.key for p in judgment.parts}

    async def _commit_group(
        self, group: Sequence[Pending], judgment: Judgment
    ) -> set[tuple[str, str]]:
        parts = judgment.parts
        moved = await self._await_dependencies(parts)
        commits = [
            RunCommit(
                p.project,
                p.run_id,
                p.epoch,
                p.chunks,
                [
                    WriterCommit(
                        p.project,
                        p.run_id,
                        group[i].writer.writer_id,
                        group[i].sequence,
                        judgment.outcomes[i].to_json(),
                    )
                    for i in p.indices
                ],
            )
            for p in parts
            if p.key not in moved
        ]
        refused = await self.store.write(lambda s: s.commit(commits))
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
                accepted += self._acknowledge(group[i], judgment.outcomes[i])
        for i in judgment.loose:
            self._acknowledge(group[i], judgment.outcomes[i])
        released = [p.key for p in landed if p.checked]
        if released:
            self._spawn(self.floors.release(judgment.token, released))
        if back:
            await self._again_in_order(group, back)
        self.stats["groups"] += 1
        self.stats["batches"] += sum(len(p.indices) for p in landed)
        self.stats["points"] += accepted
        return {p.key for p in back}

    async def _await_dependencies(self, parts: Sequence[RunPart]) -> set[tuple[str, str]]:
        """Wait until every judgment these parts read from has committed; the runs whose epoch
        moved meanwhile (a dependency died or failed) are returned, to be judged again."""
        waiting = [p for p in parts if p.dependencies]
        moved: set[tuple[str, str]] = set()
        delay = 0.001
        while waiting:
            try:
                answers = await self.floors.await_dependencies(
                    [(p.project, p.run_id, p.epoch, p.dependencies) for p in waiting]
                )
            except RedisError:  # cannot tell: judging again is always safe
                answers = ["moved"] * len(waiting)
            still = []
            for p, answer in zip(waiting, answers, strict=True):
                if answer == "moved":
                    moved.add(p.key)
                elif answer == "wait":
                    still.append(p)
            waiting = still
            if waiting:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
        return moved

    async def _again_in_order(self, group: Sequence[Pending], parts: Sequence[RunPart]) -> None:
        """Send the parts' batches back to be judged again (after a fresh look at their
        writers: a sequence committed meanwhile, through another replica, is a duplicate)."""
        items = sorted(i for p in parts for i in p.indices)
        writers = {id(group[i].writer): group[i].writer for i in items}
        for w in writers.values():
            w.committed = max(w.committed, await self._stored_sequence(w))
        for i in items:
            item = group[i]
            if item.future.done():
                continue
            if item.sequence <= item.writer.committed:
                self._acknowledge(item, await self._stored_outcome(item.writer, item.sequence))
                continue
            item.attempts += 1
            if item.attempts >= self.limits.max_attempts:
                self._fail([item], StoreFailed(f"refused {item.attempts} times"))
                continue
            self.stats["rejudged"] += 1
            self._again.append(item)
        self._wake.set()

    def _acknowledge(self, item: Pending, outcome: Outcome) -> int:
        writer = item.writer
        writer.committed = max(writer.committed, item.sequence)
        writer.inflight.pop(item.sequence, None)
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
            for fut in writer.inflight.values():
                if not fut.done():
                    fut.set_exception(StoreFailed(str(exc)))
            writer.inflight.clear()
            if not item.future.done():
                item.future.set_exception(StoreFailed(str(exc)))
            self._leave(item)

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except RedisError as exc:  # the lease then expires instead
                log.warning("could not release leases: %s", exc)

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _duplicate(outcome: Outcome) -> Outcome:
    return replace(outcome, duplicate_batch=True)
