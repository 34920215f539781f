"""The judge's array path (verdict.py) gives the answers of its entry-by-entry walk.

Two runs of one real service (its store, its Redis, its judge) are sent the same groups: one
judged as the service judges, one with the array path switched off, so that every entry takes
the walk that splits it against its floor point by point. Acknowledgements and chunk writes
must be the same, group after group, for blocks whose series are above their floors, re-sent
(duplicates), behind them (rejected), new, overwritten or given assigned steps, in groups of
one batch and of several batches that repeat the same series.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import zlib
from typing import Any

import numpy as np
import pytest
from stepstream.v1 import ingest_pb2
from stepstream_server import verdict
from stepstream_server.decode import Decoder
from stepstream_server.judge import Judgment
from stepstream_server.model import ChunkWrite
from stepstream_server.pending import Pending, Writer
from wire import create_run, fblock, fseries, sseries

pytestmark = pytest.mark.stores("sqlite", "postgresql")

NAMES = [f"m/{i}" for i in range(12)]


def value(name: str, step: float, salt: int = 0) -> float:
    """The value a trainer logs for `name` at `step`: a re-send repeats it exactly."""
    if step % 7 == 3:
        return math.nan  # NaN re-sent is a duplicate only with the very same bits
    return float(zlib.crc32(f"{name} {step} {salt}".encode()) % 1000) / 7


def block(names: list[str], steps: list[float], salt: int = 0) -> ingest_pb2.FloatBlock:
    rows = [[value(n, s, salt) for n in names] for s in steps]
    return fblock(names, steps, rows)


class Case:
    """Random groups over NAMES: the trainer's step moves on, and now and then a batch goes
    back (a re-send, a stale or altered one), a series is overwritten, given assigned steps
    or logged as text."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.step = 0.0

    def batch(self, extras: bool) -> ingest_pb2.PointBatch:
        rng = self.rng
        names = sorted(rng.sample(NAMES, rng.randint(1, len(NAMES))))
        kind = rng.random()
        if kind < 0.55:  # onwards
            steps = [self.step + k for k in range(1, rng.randint(1, 3) + 1)]
            self.step = steps[-1]
        elif kind < 0.75:  # a re-send of the latest steps: duplicates
            steps = [self.step - k for k in range(rng.randint(0, 2), -1, -1)]
        elif kind < 0.9:  # back into what is stored, or across the floor, altered or not
            lo = max(0.0, self.step - rng.randint(1, 4))
            steps = [lo + k for k in range(rng.randint(1, 5))]
            self.step = max(self.step, steps[-1])
        else:  # from a new series' point of view anywhere
            steps = [rng.choice([-2.5, 0.5, self.step + 0.5])]
            self.step = max(self.step, steps[-1])
        salt = 1 if rng.random() < 0.2 else 0  # altered values: rejected, never duplicates
        batch = ingest_pb2.PointBatch(float_blocks=[block(names, steps, salt)])
        if not extras:
            return batch
        if rng.random() < 0.3:
            name = rng.choice(NAMES)
            s = [self.step + 0.25]
            batch.float_series.append(fseries(name, s, [value(name, s[0])]))
        if rng.random() < 0.15:
            name = rng.choice(NAMES)
            batch.float_series.append(
                ingest_pb2.FloatSeries(
                    name=name, steps=[1.0, 2.0], values=[1.0, 2.0], overwrite=True
                )
            )
        if rng.random() < 0.15:
            batch.float_series.append(fseries(rng.choice(NAMES), values=[5.0, 6.0], assign=True))
        if rng.random() < 0.15:
            batch.string_series.append(sseries(rng.choice(NAMES), [self.step], [f"t{self.step}"]))
        if rng.random() < 0.05:
            batch.float_series.append(fseries("fresh/" + str(rng.randint(0, 10**9)), [3.0], [1.0]))
        return batch

    def group(self) -> list[ingest_pb2.PointBatch]:
        extras = self.rng.random() < 0.5  # else blocks alone: the array path's own groups
        return [self.batch(extras) for _ in range(self.rng.choice([1, 1, 2, 3]))]


def comparable(judgment: Judgment) -> tuple[Any, ...]:
    """A judgment without its run's names: outcomes as stored, chunks by their bytes."""
    (part,) = judgment.parts
    outcomes = {
        i: dataclasses.replace(o, incarnation_id="").to_json()  # type: ignore[call-arg]
        for i, o in sorted(judgment.outcomes.items())
    }
    return outcomes, [chunk(c) for c in part.chunks]


def chunk(c: ChunkWrite) -> tuple[Any, ...]:
    values = list(c.values) if c.is_string else np.asarray(c.values).tobytes()
    return (
        c.name,
        c.is_string,
        c.steps.tobytes(),
        values,
        c.timestamps.tobytes(),
        c.new_generation,
    )


async def judge_group(
    service: Any, writer: Writer, batches: list[ingest_pb2.PointBatch]
) -> Judgment:
    judge = service.worker.judge
    decoder, loop = Decoder(), asyncio.get_running_loop()
    group = []
    for batch in batches:
        writer.next_expected += 1
        batch.sequence = writer.next_expected
        entries, rejections, failure = await decoder.decode(batch, now=1000.0)
        points = sum(e.count for e in entries)
        group.append(
            Pending(
                writer, batch.sequence, entries, rejections, failure, points, loop.create_future()
            )
        )
    judgment: Judgment = await judge.judge(group)
    # Nothing is committed here: the floors this judgment moved stay, its lease goes.
    await judge.floors.release(judgment.token, [writer.run_key])
    return judgment


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_array_path_answers_as_the_walk(service, runs, monkeypatch, seed):
    await create_run(runs, "arrays")
    await create_run(runs, "walk")
    arrays, walk = Writer("default", "arrays", "w", 0, 0), Writer("default", "walk", "w", 0, 0)
    case = Case(seed)
    taken = {"above": 0, "whole": 0}
    real_above, real_whole = verdict._above, verdict._whole

    def counted_above(*args: Any) -> Any:
        found = real_above(*args)
        taken["above"] += found is not None and bool(found.all())
        return found

    def counted_whole(*args: Any) -> Any:
        found = real_whole(*args)
        taken["whole"] += found is not None
        return found

    for _ in range(60):
        batches = case.group()
        copies = [ingest_pb2.PointBatch.FromString(b.SerializeToString()) for b in batches]
        with monkeypatch.context() as m:
            m.setattr(verdict, "_above", counted_above)
            m.setattr(verdict, "_whole", counted_whole)
            fast = await judge_group(service, arrays, batches)
        with monkeypatch.context() as m:
            m.setattr(verdict, "_above", lambda *a: None)
            slow = await judge_group(service, walk, copies)
        assert comparable(fast) == comparable(slow)
    # The array path was taken, all the way to the joined chunks, and not only then.
    assert taken["whole"] > 10
    assert taken["above"] < 60


async def test_wide_groups_of_one_block_a_batch_take_the_arrays(service, runs, monkeypatch):
    """Several batches of the same 2,500 series, one step each: one chunk per series with
    every step, the block's steps joined once and shared by all (the store packs them once)."""
    await create_run(runs, "wide")
    writer = Writer("default", "wide", "w", 0, 0)
    names = [f"k{i:04d}" for i in range(2500)]  # past one slice of the script's HMGET
    batches = [ingest_pb2.PointBatch(float_blocks=[block(names, [float(s)])]) for s in range(1, 5)]
    judgment = await judge_group(service, writer, batches)
    (part,) = judgment.parts
    assert [o.accepted for o in judgment.outcomes.values()] == [2500] * 4
    assert [c.name for c in part.chunks] == names
    assert all(c.steps is part.chunks[0].steps for c in part.chunks)
    assert part.chunks[0].steps.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert (
        np.asarray(part.chunks[7].values).tobytes()
        == np.array([value(names[7], float(s)) for s in range(1, 5)]).tobytes()
    )
    # The same series again at steps 4 and 5: step 4 is a duplicate, 5 is new.
    again = await judge_group(
        service, writer, [ingest_pb2.PointBatch(float_blocks=[block(names, [4.0, 5.0])])]
    )
    (ack,) = again.outcomes.values()
    assert (ack.accepted, ack.duplicates, ack.rejections) == (2500, 2500, ())


async def test_a_series_sent_once_keeps_the_first_of_equal_last_steps(service, runs):
    """Two batches of one group end a series at the same step, the second with another value
    (rejected): the floor keeps the first one's value, so that re-sending it later is a
    duplicate, and the other value stays rejected."""
    await create_run(runs, "ties")
    writer = Writer("default", "ties", "w", 0, 0)
    names = ["a", "b"]
    first, altered = block(names, [1.0, 2.0]), block(names, [2.0], salt=1)
    judgment = await judge_group(
        service,
        writer,
        [
            ingest_pb2.PointBatch(float_blocks=[first]),
            ingest_pb2.PointBatch(float_blocks=[altered]),
        ],
    )
    one, two = (judgment.outcomes[i] for i in sorted(judgment.outcomes))
    assert (one.accepted, two.accepted, two.duplicates) == (4, 0, 0)
    assert [r.reason for r in two.rejections] == ["STEP_NOT_INCREASING"] * 2
    again = await judge_group(
        service, writer, [ingest_pb2.PointBatch(float_blocks=[block(names, [2.0])])]
    )
    (ack,) = again.outcomes.values()
    assert (ack.accepted, ack.duplicates, ack.rejections) == (0, 2, ())
