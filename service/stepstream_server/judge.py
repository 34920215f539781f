"""Judging one group: every entry against its floor in Redis, under the run's epoch.

The judge knows which epoch each run is in, caches run records (state and current
incarnation), loads floors from the store when Redis lacks them, and splits each entry into
rejected prefix, duplicate and accepted rest (SPEC §2). What it returns is, per run, what to
commit and under which epoch; the worker commits it (docs/replicas.md has the protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import errors
from .limits import OFFLOAD_ENTRIES
from .model import BatchFailure, ChunkWrite, Outcome, RunRecord, RunState
from .ordering import CheckAnswer, CheckRequest, FloorCache
from .store import AsyncStore, StoreUnavailable
from .verdict import RunPlan, plan, settle

if TYPE_CHECKING:
    from .ingest import Pending

RunKey = tuple[str, str]

# Runs kept in memory; beyond this the oldest are re-read from the store on use.
CACHE_LIMIT = 100_000
# Check rounds per group: an epoch move, an open and a series load each take one.
ATTEMPTS = 16
REDIS_FAILURES = (RedisConnectionError, RedisTimeoutError)


@dataclass
class RunPart:
    """What a group commits for one run: the batches (group indices), their points, and the
    epoch and dependencies they were judged under."""

    project: str
    run_id: str
    epoch: int
    incarnation_id: str
    indices: list[int] = field(default_factory=list)
    chunks: list[ChunkWrite] = field(default_factory=list)
    dependencies: tuple[str, ...] = ()
    checked: bool = False  # floors moved under the group's token

    @property
    def key(self) -> RunKey:
        return (self.project, self.run_id)


@dataclass
class Judgment:
    token: str
    parts: list[RunPart]
    outcomes: dict[int, Outcome]
    # Answered with no run to store them under (not found): acknowledged, not kept.
    loose: list[int] = field(default_factory=list)


class Judge:
    """Decides batches against the floors every replica shares."""

    def __init__(self, store: AsyncStore, floors: FloorCache) -> None:
        self.store = store
        self.floors = floors
        self._runs: dict[RunKey, RunRecord] = {}
        self._epochs: dict[RunKey, int] = {}
        # Epoch raises that Redis did not take: (at least, floors judged under) per run.
        self._owed: dict[RunKey, tuple[int, tuple[str, int] | None]] = {}
        self._groups = itertools.count(1)

    # -- runs as ingest sees them -----------------------------------------------------------

    async def run_record(self, project: str, run_id: str) -> RunRecord:
        record = self._runs.get((project, run_id))
        if record is None:
            found = await self.store.read(lambda s: s.get_run(project, run_id))
            if found is None:
                raise errors.run_not_found(project, run_id)
            record = self.remember(found)
        return record

    def remember(self, record: RunRecord) -> RunRecord:
        if len(self._runs) >= CACHE_LIMIT:  # oldest first; the store has them all
            del self._runs[next(iter(self._runs))]
        self._runs[(record.project, record.run_id)] = record
        return record

    async def run_changed(self, record: RunRecord) -> None:
        """After a run mutation (which raised the fence): move the Redis epoch up to it, so
        that no replica judges under the old one any longer. Best effort: a commit judged under
        the old epoch is refused by the store's fence anyway."""
        self.remember(record)
        with contextlib.suppress(RedisError):  # then owed, and the store fence holds meanwhile
            await self.moved(record.project, record.run_id, record.fence)

    async def moved(
        self, project: str, run_id: str, at_least: int, judged: tuple[str, int] | None = None
    ) -> None:
        """Raise the run's epoch to at least `at_least` (floors judged under an older epoch are
        no longer to be trusted) and forget its cached record. If Redis cannot be reached, the
        raise is owed: no check of the run is made before it succeeds, since this replica's
        own unstored judgments are never its dependencies (docs/replicas.md)."""
        key = (project, run_id)
        self._runs.pop(key, None)
        owed = self._owed.get(key)
        if owed is not None and owed[0] >= at_least:
            at_least, judged = owed
        try:
            self._epochs[key] = await self.floors.raise_epoch(project, run_id, at_least, judged)
        except RedisError:
            self._owed[key] = (at_least, judged)
            raise
        self._owed.pop(key, None)

    async def _pay_owed(self, keys: Sequence[RunKey]) -> None:
        for key in keys:
            owed = self._owed.get(key)
            if owed is not None:
                await self.moved(*key, *owed)

    # -- judging ----------------------------------------------------------------------------

    async def judge(self, group: Sequence[Pending]) -> Judgment:
        token = f"{self.floors.replica}.{next(self._groups)}"
        outcomes: dict[int, Outcome] = {}
        by_run: dict[RunKey, list[int]] = {}
        for i, item in enumerate(group):
            if item.future.done():  # failed with an earlier group; its stream re-sends it
                continue
            by_run.setdefault(item.writer.run_key, []).append(i)
        parts: dict[RunKey, RunPart] = {}
        records: dict[RunKey, RunRecord] = {}
        for key, indices in by_run.items():
            try:
                records[key] = await self.run_record(*key)
            except StoreUnavailable:
                raise  # not this batch's fault: the worker holds the group (docs/faults.md)
            except errors.ServiceError as exc:
                for i in indices:
                    outcomes[i] = BatchFailure(exc.code.name, exc.reason, exc.message, exc.metadata)
                continue
            parts[key] = RunPart(*key, records[key].fence, records[key].current_incarnation_id)

        def planned() -> dict[RunKey, RunPlan]:
            out = {}
            for key in parts:
                if records[key].state is RunState.RUNNING:
                    judged = [i for i in by_run[key] if group[i].failure is None]
                    out[key] = plan(judged, [group[i] for i in judged])
            return out

        big = sum(len(item.entries) for item in group) > OFFLOAD_ENTRIES
        plans = await asyncio.to_thread(planned) if big else planned()
        try:
            floors = await self._check(plans, records, parts, token)
        except BaseException:
            await self.abandon(list(parts.values()))
            raise

        def split() -> None:
            for key, part in parts.items():
                record = records[key]
                applied: set[int] = set()
                for i in by_run[key]:
                    item = group[i]
                    part.indices.append(i)
                    if item.failure is not None:
                        outcomes[i] = item.failure
                    elif record.state is not RunState.RUNNING:
                        outcomes[i] = _not_active(record)
                    elif (landed := _landed_in(item)) not in ("", record.current_incarnation_id):
                        outcomes[i] = _rewound_between_parts(record, landed)
                    else:
                        applied.add(i)
                if applied:
                    texts = floors.get(key, [])
                    done, part.chunks = settle(
                        plans[key], texts, record.current_incarnation_id, applied
                    )
                    outcomes.update(done)

        # Splitting entries costs about a microsecond each: a group of many series is split
        # on a thread, so that other streams' requests keep being read meanwhile.
        if sum(len(item.entries) for item in group) > OFFLOAD_ENTRIES:
            await asyncio.to_thread(split)
        else:
            split()
        stored = {i for p in parts.values() for i in p.indices}
        loose = [i for i in outcomes if i not in stored]
        return Judgment(token, list(parts.values()), outcomes, loose)

    async def abandon(self, parts: Sequence[RunPart]) -> None:
        """Floors moved under a judgment that will not commit: move past their epoch."""
        for part in parts:
            if part.checked:
                # On failure the raise is owed (see moved); others' checks see the lease expire.
                with contextlib.suppress(RedisError):
                    await self.moved(
                        part.project, part.run_id, part.epoch + 1, (part.incarnation_id, part.epoch)
                    )

    async def _check(
        self,
        plans: dict[RunKey, RunPlan],
        records: dict[RunKey, RunRecord],
        parts: dict[RunKey, RunPart],
        token: str,
    ) -> dict[RunKey, list[str]]:
        """The script's floors for each planned run's entries; parts get their epochs."""
        todo = [key for key, p in plans.items() if p.fields]
        answers: dict[RunKey, CheckAnswer] = {}
        for attempt in range(ATTEMPTS):
            try:
                await self._pay_owed(todo)
                # A record read before the fence reached the epoch may be stale (stopped,
                # rewound elsewhere): never judge under epoch E with a record older than E.
                for key in list(todo):
                    if records[key].fence < self._epochs.get(key, -1):
                        records[key] = await self._fresh(key)
                        parts[key].incarnation_id = records[key].current_incarnation_id
                        parts[key].epoch = records[key].fence
                        if records[key].state is not RunState.RUNNING:
                            todo.remove(key)  # its batches are answered RUN_NOT_ACTIVE
                requests = [
                    CheckRequest(
                        *key,
                        records[key].current_incarnation_id,
                        self._epochs.get(key, -1),
                        plans[key].fields,
                        plans[key].packed,
                    )
                    for key in todo
                ]
                try:
                    replies = await self.floors.check(token, requests)
                except REDIS_FAILURES:
                    # A lost reply may hide a script that ran: never judge again under it.
                    for r in requests:
                        if r.epoch >= 0 and r_key(r) not in self._owed:
                            self._owed[r_key(r)] = (r.epoch + 1, (r.incarnation_id, r.epoch))
                    raise
                behind = []
                for req, answer in zip(requests, replies, strict=True):
                    key = r_key(req)
                    if answer.kind == "ok":
                        answers[key] = answer
                        part = parts[key]
                        part.epoch, part.checked = req.epoch, True
                        part.dependencies = answer.dependencies
                    else:
                        behind.append((req, answer))
                # Judged runs leave `todo` at once: a retry must never check them again (their
                # floors now hold this very judgment). The others catch up side by side.
                todo = [r_key(req) for req, _ in behind]
                caught_up = await asyncio.gather(
                    *(self._catch_up(req, answer, records, parts) for req, answer in behind)
                )
                todo = [key for key, ok in zip(todo, caught_up, strict=True) if ok]
            except REDIS_FAILURES:
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))  # about 12 s in all
            if not todo:
                break
        else:
            raise errors.unavailable(
                "FLOORS_UNAVAILABLE", "the ordering check could not reach Redis"
            )
        return {key: answer.floors for key, answer in answers.items()}

    async def _catch_up(
        self,
        req: CheckRequest,
        answer: CheckAnswer,
        records: dict[RunKey, RunRecord],
        parts: dict[RunKey, RunPart],
    ) -> bool:
        """Move a run to the epoch in force, or load its floors; False if it stopped meanwhile
        (its batches are then answered RUN_NOT_ACTIVE)."""
        key = r_key(req)
        if answer.kind == "epoch":
            await self._adopt(key, answer.epoch)
            return True
        if answer.kind == "need":
            await self._fill(req, answer.needed)
            return True
        before = records[key]
        records[key] = await self._load(key, before, req.epoch)
        parts[key].incarnation_id = records[key].current_incarnation_id
        parts[key].epoch = records[key].fence
        if records[key] is before or (
            records[key].fence == req.epoch
            and records[key].current_incarnation_id == req.incarnation_id
        ):
            # Opened at req.epoch: load this request's series now, saving a `need` round.
            await self._fill(req, list(dict.fromkeys(req.fields)))
        return records[key].state is RunState.RUNNING

    async def _fresh(self, key: RunKey) -> RunRecord:
        fresh = await self.store.read(lambda s: s.get_run(*key))
        if fresh is None:
            raise errors.run_not_found(*key)
        return self.remember(fresh)

    async def _adopt(self, key: RunKey, epoch: int | None) -> None:
        if epoch is None:  # this Redis never saw the run (or lost it): start above the fence
            fence = await self.store.write(lambda s: s.advance_fence(*key))
            epoch = await self.floors.raise_epoch(*key, fence)
        self._epochs[key] = epoch

    async def _load(self, key: RunKey, record: RunRecord, epoch: int) -> RunRecord:
        """Fence the store at `epoch`, then load the floors from it (docs/replicas.md). Returns
        the run as it stands behind the fence; the caller re-plans if it changed. A record
        read when the fence already stood at `epoch` or above needs neither: fences only grow."""
        fresh = record
        if record.fence < epoch:
            fence = await self.store.write(lambda s: s.raise_fence(*key, epoch))
            if fence > epoch:
                await self._adopt(key, await self.floors.raise_epoch(*key, fence))
            fresh = await self._fresh(key)
            if (
                fence > epoch
                or fresh.current_incarnation_id != record.current_incarnation_id
                or fresh.state is not RunState.RUNNING
            ):
                return fresh
        # The floors open empty; each series loads on first use (_fill), so the first write
        # after a restart costs what it touches, not the run's width.
        await self.floors.load(*key, fresh.current_incarnation_id, epoch)
        return fresh

    async def _fill(self, req: CheckRequest, fields: Sequence[str]) -> None:
        """Load the floors of these series from the store into the open floors at the request's
        epoch; the store's fence stood at that epoch before they opened (docs/replicas.md)."""
        keys = [(f[2:], f.startswith("s:")) for f in fields]

        def read(s: Any) -> dict[str, tuple[float, str]]:
            return s.floors(s.segments(req.incarnation_id), keys)  # type: ignore[no-any-return]

        found: dict[str, tuple[float, str]] = await self.store.read(read)
        await self.floors.fill(
            req.project,
            req.run_id,
            req.incarnation_id,
            req.epoch,
            {f: found.get(f) for f in fields},
        )


def r_key(r: CheckRequest) -> RunKey:
    return (r.project, r.run_id)


def _landed_in(item: Pending) -> str:
    """The incarnation a batch in parts landed its first parts in ("" before its first)."""
    split = item.split
    return "" if split is None or split.so_far is None else split.so_far.incarnation_id


def _rewound_between_parts(record: RunRecord, landed: str) -> BatchFailure:
    """A batch lands wholly in one incarnation (SPEC §4): after a rewind between its parts,
    what landed stays in the archived incarnation and the rest is not written."""
    return BatchFailure(
        grpc.StatusCode.FAILED_PRECONDITION.name,
        "RUN_REWOUND",
        f"run {record.run_id!r} was rewound while this batch was committed in parts: its first"
        f" parts landed in incarnation {landed!r}, now archived; the rest is not written",
        {"run_id": record.run_id, "incarnation_id": landed},
    )


def _not_active(record: RunRecord) -> BatchFailure:
    return BatchFailure(
        grpc.StatusCode.FAILED_PRECONDITION.name,
        "RUN_NOT_ACTIVE",
        f"run {record.run_id!r} is {record.state.name}, not RUNNING; resume it to write",
        {"run_id": record.run_id, "state": record.state.name},
    )


def new_replica_id() -> str:
    return "r" + secrets.token_hex(5)
