"""The async ingest worker: group commit of batches from every stream.

Streams hand validated batches to `IngestWorker.submit`, which assigns them to their writer's
sequence and queues them. The worker takes whatever is queued (up to a group limit), judges every
series entry against its floor in one pipelined Redis round trip, writes the accepted points,
the writers' sequence numbers and the acknowledgements in one store transaction, and only then
resolves the batches' futures: an acknowledgement always means "committed".

Floors live in Redis under a per-process epoch. Any failure between a check (which advances
floors) and the commit (which makes them true) starts a new epoch, so the next check rebuilds
floors from the store instead of trusting ones that ran ahead of it. A restarted service starts
a new epoch too, which is what makes a kill -9 between check and commit safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import TypeVar

import grpc
import numpy as np
import redis.asyncio as aioredis

from . import errors
from .model import (
    AppendAck,
    Assigned,
    BatchFailure,
    ChunkWrite,
    Floats,
    Outcome,
    Rejection,
    RunRecord,
    RunState,
    SeriesEntry,
    WriterCommit,
    outcome_from_json,
    value_token,
)
from .ordering import (
    NO_FLOOR,
    CheckEntry,
    Floor,
    FloorCache,
    LazyToken,
    assigned_start,
    floor_key,
)
from .store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


# Accepted points per (incarnation, is_string, name): runs of parts, each run flagged when it
# starts a new generation of the series (an overwrite).
Part = tuple[Floats, Floats | list[str], Floats]
Chunks = dict[tuple[str, bool, str], list[tuple[bool, list[Part]]]]


@dataclass
class Writer:
    """Sequence state of one (run, writer): committed, expected next, and what is in flight."""

    project: str
    run_id: str
    writer_id: str
    committed: int
    next_expected: int
    inflight: dict[int, asyncio.Future[Outcome]] = field(default_factory=dict)


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


# Runs kept in memory; beyond this the oldest are re-read from the store on use.
CACHE_LIMIT = 100_000


@dataclass(frozen=True)
class WorkerLimits:
    """Bounds that keep memory flat and groups reasonably sized."""

    max_queued_points: int = 2_000_000
    max_group_points: int = 500_000
    max_group_batches: int = 512


class StoreFailed(Exception):
    """A group could not be committed; its streams must reconnect and re-send."""


class IngestWorker:
    """Judges, commits and acknowledges queued batches in groups."""

    def __init__(
        self,
        store: Store,
        floors: FloorCache,
        *,
        write_executor: Executor,
        read_executor: Executor,
        limits: WorkerLimits | None = None,
    ) -> None:
        self.store = store
        self.floors = floors
        self.limits = limits or WorkerLimits()
        self._write_executor = write_executor
        self._read_executor = read_executor
        # Held while a group is judged and committed, and by every run mutation that changes
        # what ingest sees (state, current incarnation): a batch lands wholly before or after.
        self.lock = asyncio.Lock()
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._queued_points = 0
        self._space = asyncio.Condition()
        # A writer lives while a stream or a queued batch holds it: exactly one object per
        # writer at a time, and none kept for writers that went away (the store has their
        # sequence numbers).
        self._writers: weakref.WeakValueDictionary[tuple[str, str, str], Writer] = (
            weakref.WeakValueDictionary()
        )
        self._runs: dict[tuple[str, str], RunRecord] = {}
        self.epoch = secrets.token_hex(4)
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[None] | None = None  # the group commit under way
        self.stats = {"groups": 0, "batches": 0, "points": 0}

    # -- plumbing ---------------------------------------------------------------------------

    async def in_store(self, fn: Callable[..., T], *args: object) -> T:
        """Run a store read on the read executor."""
        return await asyncio.get_running_loop().run_in_executor(self._read_executor, fn, *args)

    async def in_store_write(self, fn: Callable[..., T], *args: object) -> T:
        """Run a store write on the single write executor (SQLite has one writer)."""
        return await asyncio.get_running_loop().run_in_executor(self._write_executor, fn, *args)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-worker")

    async def drain_and_stop(self) -> None:
        """Commit everything queued, then stop."""
        while not self._queue.empty():
            await asyncio.sleep(0.01)
        async with self.exclusive():
            pass
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- runs as ingest sees them -----------------------------------------------------------

    async def run_record(self, project: str, run_id: str) -> RunRecord:
        record = self._runs.get((project, run_id))
        if record is None:
            found = await self.in_store(self.store.get_run, project, run_id)
            if found is None:
                raise errors.run_not_found(project, run_id)
            if len(self._runs) >= CACHE_LIMIT:  # oldest first; the store has them all
                del self._runs[next(iter(self._runs))]
            record = self._runs[(project, run_id)] = found
        return record

    def run_changed(self, record: RunRecord) -> None:
        """Called (under `lock`) after a run mutation so that ingest sees the new state."""
        self._runs[(record.project, record.run_id)] = record

    # -- streams ----------------------------------------------------------------------------

    async def open_writer(
        self, project: str, run_id: str, writer_id: str
    ) -> tuple[Writer, RunRecord]:
        record = await self.run_record(project, run_id)
        key = (project, run_id, writer_id)
        writer = self._writers.get(key)
        if writer is None:
            committed = await self.in_store(self.store.writer_sequence, project, run_id, writer_id)
            writer = self._writers.setdefault(
                key, Writer(project, run_id, writer_id, committed, committed + 1)
            )
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
        async with self._space:
            await self._space.wait_for(
                lambda: (
                    self._queued_points == 0
                    or self._queued_points + points <= self.limits.max_queued_points
                )
            )
            self._queued_points += points
        self._queue.put_nowait(
            Pending(writer, sequence, entries, rejections, failure, points, future)
        )
        return future

    async def _as_duplicate(self, original: asyncio.Future[Outcome]) -> Outcome:
        outcome = await asyncio.shield(original)
        return _duplicate(outcome)

    async def _stored_outcome(self, writer: Writer, sequence: int) -> Outcome:
        text = await self.in_store(
            self.store.writer_outcome, writer.project, writer.run_id, writer.writer_id, sequence
        )
        if text is None:  # older than the retained acknowledgements: counts are gone
            return AppendAck(0, 0, (), (), "", duplicate_batch=True)
        return outcome_from_json(text, duplicate=True)

    # -- the worker -------------------------------------------------------------------------

    async def _run(self) -> None:
        """Take groups and judge each while the previous one commits (one commit in flight):
        the Redis round trip and the preparation of group N+1 overlap group N's fsync."""
        while True:
            first = await self._queue.get()
            group = [first]
            points = first.points
            while (
                not self._queue.empty()
                and len(group) < self.limits.max_group_batches
                and points < self.limits.max_group_points
            ):
                item = self._queue.get_nowait()
                group.append(item)
                points += item.points
            try:
                async with self.lock:
                    writes, commits, outcomes = await self._judge(group)
                    if not await self._settle():
                        # Judged against floors the failed group had advanced: not valid.
                        raise StoreFailed("an earlier group could not be committed")
                    self._inflight = asyncio.create_task(
                        self._commit(group, points, writes, commits, outcomes)
                    )
            except Exception as exc:  # keep serving: the group's streams reconnect and re-send
                log.exception("group commit failed")
                self._fail(group, exc)
                await self._release(points)

    async def _settle(self) -> bool:
        """Wait for the commit in flight (and its acknowledgements); False if it failed."""
        task = self._inflight
        if task is None:
            return True
        await asyncio.wait([task])
        return not task.cancelled() and task.exception() is None

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the worker still: no group is being judged or committed meanwhile. Run
        mutations that change what ingest sees (state, current incarnation, snapshots) run
        inside, so every batch lands wholly before or after them."""
        async with self.lock:
            await self._settle()
            yield

    async def _release(self, points: int) -> None:
        async with self._space:
            self._queued_points -= points
            self._space.notify_all()

    def _fail(self, group: Sequence[Pending], exc: BaseException) -> None:
        self.epoch = secrets.token_hex(4)  # floors may have run ahead of the store
        for item in group:
            writer = item.writer
            writer.next_expected = writer.committed + 1
            for fut in writer.inflight.values():
                if not fut.done():
                    fut.set_exception(StoreFailed(str(exc)))
            writer.inflight.clear()

    async def _judge(
        self, group: Sequence[Pending]
    ) -> tuple[list[ChunkWrite], list[WriterCommit], dict[int, Outcome]]:
        """Decide every batch of the group (floors advance in Redis); build what to store."""
        outcomes: dict[int, Outcome] = {}
        judged: list[tuple[int, Pending, RunRecord]] = []
        for i, item in enumerate(group):
            if item.future.done():  # failed with an earlier group; its stream re-sends it
                continue
            if item.failure is not None:
                outcomes[i] = item.failure
                continue
            try:
                record = await self.run_record(item.writer.project, item.writer.run_id)
            except errors.ServiceError as exc:
                outcomes[i] = BatchFailure(exc.code.name, exc.reason, exc.message, exc.metadata)
                continue
            if record.state is not RunState.RUNNING:
                outcomes[i] = BatchFailure(
                    grpc.StatusCode.FAILED_PRECONDITION.name,
                    "RUN_NOT_ACTIVE",
                    f"run {record.run_id!r} is {record.state.name}, not RUNNING; resume it to write",
                    {"run_id": record.run_id, "state": record.state.name},
                )
                continue
            judged.append((i, item, record))

        floors = await self._check(judged)
        chunks: Chunks = {}
        for (i, item, record), item_floors in zip(judged, floors, strict=True):
            outcomes[i] = self._apply(item, record, item_floors, chunks)

        writes = [
            ChunkWrite(
                inc,
                name,
                is_string,
                _concat_floats([p[0] for p in parts]),
                _concat_values([p[1] for p in parts], is_string),
                _concat_floats([p[2] for p in parts]),
                new_generation,
            )
            for (inc, is_string, name), generations in chunks.items()
            for new_generation, parts in generations
        ]
        commits = [
            WriterCommit(
                item.writer.project,
                item.writer.run_id,
                item.writer.writer_id,
                item.sequence,
                outcomes[i].to_json(),
            )
            for i, item in enumerate(group)
            if i in outcomes
        ]
        return writes, commits, outcomes

    async def _commit(
        self,
        group: Sequence[Pending],
        points: int,
        writes: list[ChunkWrite],
        commits: list[WriterCommit],
        outcomes: dict[int, Outcome],
    ) -> None:
        """Store the group in one transaction, then acknowledge its batches."""
        try:
            await self.in_store_write(self.store.commit, writes, commits)
        except Exception as exc:
            log.exception("group commit failed")
            self._fail(group, exc)
            raise
        finally:
            await self._release(points)
        accepted = 0
        for i, item in enumerate(group):
            outcome = outcomes.get(i)
            if outcome is None:
                continue
            writer = item.writer
            writer.committed = max(writer.committed, item.sequence)
            writer.inflight.pop(item.sequence, None)
            if isinstance(outcome, AppendAck):
                accepted += outcome.accepted
            if not item.future.done():
                item.future.set_result(outcome)
        self.stats["groups"] += 1
        self.stats["batches"] += len(outcomes)
        self.stats["points"] += accepted

    async def _check(self, judged: Sequence[tuple[int, Pending, RunRecord]]) -> list[list[Floor]]:
        """Judge every entry of every judged batch; returns each entry's floor before it.

        A series whose entries in this group all carry explicit steps is sent to Redis once,
        as its largest step: the script advances the floor to it, and the floor before each
        entry follows from the returned starting floor. Series with assigned steps or an
        overwrite send every entry, in order, since their floors depend on what came before.
        """
        View = tuple[str, str, str]
        # view -> field -> [(batch index, entry index, entry)] in group order
        plan: dict[View, dict[str, list[tuple[int, int, SeriesEntry]]]] = {}
        for b, (_, item, record) in enumerate(judged):
            fields = plan.setdefault(
                (record.project, record.run_id, record.current_incarnation_id), {}
            )
            for k, e in enumerate(item.entries):
                fields.setdefault(e.field, []).append((b, k, e))
        requests: dict[View, list[CheckEntry]] = {}
        for view, fields in plan.items():
            checks = requests[view] = []
            for name, uses in fields.items():
                if all(not (e.assign or e.overwrite) for _, _, e in uses):
                    top = max(uses, key=lambda u: u[2].last_step)[2]
                    checks.append(_check_entry(name, top))
                else:
                    checks.extend(_check_entry(name, e) for _, _, e in uses)

        replies: dict[View, list[Floor]] = {}
        todo = list(requests)
        for attempt in range(5):
            try:
                answers = await self.floors.check([(self._key(v), requests[v]) for v in todo])
                missing = []
                for view, reply in zip(todo, answers, strict=True):
                    if reply is None:
                        missing.append(view)
                    else:
                        replies[view] = reply
                for view in missing:
                    await self._load_floors(view)
                todo = missing
            except (aioredis.ConnectionError, aioredis.TimeoutError):
                # A lost reply may hide a script that ran: move to fresh keys rebuilt from the
                # store (nothing of this group is committed yet) rather than re-run on old ones.
                self.epoch = secrets.token_hex(4)
                replies.clear()
                todo = list(requests)
                await asyncio.sleep(0.05 * 2**attempt)
            if not todo:
                break
        else:
            raise errors.unavailable(
                "FLOORS_UNAVAILABLE", "the ordering check could not reach Redis"
            )

        out: list[list[Floor]] = [[NO_FLOOR] * len(item.entries) for _, item, _ in judged]
        for view, fields in plan.items():
            answer = iter(replies[view])
            for uses in fields.values():
                if all(not (e.assign or e.overwrite) for _, _, e in uses):
                    floor = next(answer)
                    for b, k, e in uses:
                        out[b][k] = floor
                        if e.last_step > floor.step:
                            floor = Floor(e.last_step, LazyToken(e.values))
                else:
                    for b, k, _ in uses:
                        out[b][k] = next(answer)
        return out

    def _key(self, view: tuple[str, str, str]) -> str:
        return floor_key(*view) + ":" + self.epoch

    async def _load_floors(self, view: tuple[str, str, str]) -> None:
        # The store must hold everything judged so far before floors are read from it.
        if not await self._settle():
            raise StoreFailed("an earlier group could not be committed")
        segments = await self.in_store(self.store.segments, view[2])
        floors = await self.in_store(self.store.floors, segments)
        await self.floors.load(self._key(view), floors)

    def _apply(
        self,
        item: Pending,
        record: RunRecord,
        floors: Sequence[Floor],
        chunks: Chunks,
    ) -> AppendAck:
        """Split each entry into rejected prefix, duplicate and accepted rest (SPEC §2)."""
        incarnation = record.current_incarnation_id
        accepted = duplicates = 0
        rejections = list(item.rejections)
        assigned: list[Assigned] = []
        for entry, floor in zip(item.entries, floors, strict=True):
            if entry.assign:
                start = assigned_start(floor.step)
                if not start > floor.step:
                    rejections.append(
                        Rejection(
                            entry.name,
                            "STEP_OVERFLOW",
                            f"no step above floor {floor.step!r} is representable",
                            entry.count,
                            floor=floor.step,
                            is_string=entry.is_string,
                        )
                    )
                    continue
                steps = start + np.arange(entry.count, dtype=np.float64)
                assigned.append(Assigned(entry.name, start, entry.count, entry.is_string))
                values = entry.values
                ts = entry.timestamps
            elif entry.first_step > floor.step:  # the common case: every point is new
                steps, values, ts = entry.steps, entry.values, entry.timestamps  # type: ignore[assignment]
            else:
                assert entry.steps is not None
                steps = entry.steps
                cut = int(np.searchsorted(steps, floor.step, side="right"))
                rejected = cut
                if (
                    cut > 0
                    and steps[cut - 1] == floor.step
                    and value_token(entry.values[cut - 1]) == str(floor.token)
                ):
                    duplicates += 1
                    rejected -= 1
                if rejected:
                    rejections.append(
                        Rejection(
                            entry.name,
                            "STEP_NOT_INCREASING",
                            f"{rejected} point(s) at steps {float(steps[0])!r}..{float(steps[rejected - 1])!r}"
                            f" are not above the series' floor {floor.step!r}",
                            rejected,
                            float(steps[0]),
                            float(steps[rejected - 1]),
                            floor.step,
                            entry.is_string,
                        )
                    )
                if cut == len(steps):
                    continue
                steps = steps[cut:]
                values = entry.values[cut:]
                ts = entry.timestamps[cut:]
            accepted += len(steps)
            generations = chunks.setdefault((incarnation, entry.is_string, entry.name), [])
            if entry.overwrite or not generations:
                generations.append((entry.overwrite, []))
            generations[-1][1].append((steps, values, ts))
        return AppendAck(accepted, duplicates, tuple(rejections), tuple(assigned), incarnation)


def _check_entry(field: str, e: SeriesEntry) -> CheckEntry:
    return CheckEntry(
        field,
        e.assign,
        e.overwrite,
        e.last_step,
        e.count,
        value_token(e.values[-1]),
    )


def _duplicate(outcome: Outcome) -> Outcome:
    return replace(outcome, duplicate_batch=True)


def _concat_floats(parts: list[Floats]) -> Floats:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _concat_values(parts: list[Floats | list[str]], is_string: bool) -> Floats | list[str]:
    if is_string:
        out: list[str] = []
        for p in parts:
            out.extend(p)
        return out
    return _concat_floats(parts)  # type: ignore[arg-type]
