"""Coalescing: whatever the call pattern, a batch carries one entry per series where the steps
allow, and the service ends up with exactly what it would from each call sent alone.

`simulate` applies batches the way the service does (SPEC.md §2: per series, a batch's
FloatSeries entries in order, then its FloatBlocks in order; a point lands iff its step is above
the floor; the very point at the floor again is a duplicate; overwrite restarts the series;
assigned steps continue from the floor). Every test compares the coalesced batches with the
same records sent one per batch, which is what the client did before coalescing.
"""

from __future__ import annotations

import collections
import math
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import stepstream
import test_seeds
from stepstream import _sender
from stepstream._batches import batch_encoders, split_for_blocks
from stepstream._buffer import Buffer
from stepstream._columnar import BatchEncoder, EncodedBatch, encode_batch
from stepstream._exceptions import RunClosedError
from stepstream._records import Column, Point, Record, RecordMaker, Rows, pack_doubles
from stepstream._types import IngestError
from stepstream.v1 import ingest_pb2
from test_client_columnar import T, decode, rows, strings

address = test_seeds.address  # the real service, on its own event loop thread


def pt(step: float | None, name: str, value: float, when: float = T) -> Point:
    return (step, when, name, value)


@dataclass
class Applied:
    """What the service holds after the batches: visible points per series and the counts."""

    series: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    strings: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0


def _apply(
    applied: Applied,
    floors: dict[str, float],
    name: str,
    steps: Sequence[float],
    values: Sequence[float],
    times: Sequence[float],
    assign: bool,
    overwrite: bool,
) -> None:
    if overwrite:
        applied.series[name] = []
        floors[name] = -math.inf
    visible = applied.series.setdefault(name, [])
    floor = floors.get(name, -math.inf)
    assert assign or list(steps) == sorted(set(steps)), "an entry's steps must increase"
    for i, value in enumerate(values):
        step = (0.0 if floor == -math.inf else floor + 1) if assign else steps[i]
        if step > floor:
            visible.append((step, value, times[i]))
            floor = step
            applied.accepted += 1
        elif visible and step == visible[-1][0] and _same(value, visible[-1][1]):
            applied.duplicates += 1
        else:
            applied.rejected += 1
    floors[name] = floor


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def simulate(batches: Sequence[ingest_pb2.PointBatch]) -> Applied:
    applied = Applied()
    floors: dict[str, float] = {}
    string_floors: dict[str, float] = {}
    for batch in batches:
        for s in batch.float_series:
            _apply(
                applied,
                floors,
                s.name,
                s.steps,
                s.values,
                s.timestamps,
                s.assign_steps,
                s.overwrite,
            )
        for st in batch.string_series:
            visible_strings = applied.strings.setdefault(st.name, [])
            floor = string_floors.get(st.name, -math.inf)
            for i, text in enumerate(st.values):
                step = (
                    (0.0 if floor == -math.inf else floor + 1) if st.assign_steps else st.steps[i]
                )
                if step > floor:
                    visible_strings.append((step, text))
                    floor = step
            string_floors[st.name] = floor
        for block in batch.float_blocks:
            width = len(block.names)
            for i, name in enumerate(block.names):
                values = block.values[i::width]
                _apply(applied, floors, name, block.steps, values, block.timestamps, False, False)
    return applied


def coalesced(records: list[Record], max_batch: int | None = None) -> list[ingest_pb2.PointBatch]:
    """The batches the sender makes: records taken from the queue `max_batch` points at a time
    (all at once by default), cut and encoded by batch_encoders."""
    buffer: Buffer[object] = Buffer(10**9, lambda: None)
    for record in records:
        if type(record) is tuple:
            buffer.put_point(record)
        else:
            buffer.put(record, record.points)  # type: ignore[union-attr]
    batches: list[ingest_pb2.PointBatch] = []
    while (taken := buffer.take(max_batch or 10**9)) is not None:
        for encoder in batch_encoders(taken):  # type: ignore[arg-type]
            encoded = encoder.encode(len(batches) + 1)
            message = decode(encoded.request)
            assert encoded.points == _points(message)
            batches.append(message)
    return batches


def one_by_one(records: list[Record]) -> list[ingest_pb2.PointBatch]:
    return [decode(encode_batch(i + 1, [r]).request) for i, r in enumerate(records)]


def _points(batch: ingest_pb2.PointBatch) -> int:
    return (
        sum(len(s.values) for s in batch.float_series)
        + sum(len(s.values) for s in batch.string_series)
        + sum(len(b.values) for b in batch.float_blocks)
    )


def entries_per_series(batch: ingest_pb2.PointBatch) -> dict[str, int]:
    count: dict[str, int] = {}
    for s in batch.float_series:
        count[s.name] = count.get(s.name, 0) + 1
    for block in batch.float_blocks:
        for name in block.names:
            count[name] = count.get(name, 0) + 1
    return count


def _canonical(applied: Applied) -> str:
    """Series in name order; repr, so that NaN values compare equal."""
    return repr(
        (
            sorted(applied.series.items()),
            sorted(applied.strings.items()),
            (applied.accepted, applied.duplicates, applied.rejected),
        )
    )


def assert_same_outcome(records: list[Record], max_batch: int | None = None) -> Applied:
    expected = simulate(one_by_one(records))
    got = simulate(coalesced(records, max_batch))
    assert _canonical(got) == _canonical(expected)
    return got


def test_interleaved_one_key_calls_travel_as_one_entry_per_series() -> None:
    maker = RecordMaker()
    records: list[Record] = []
    for step in range(100):
        for k, name in enumerate(("loss", "lr", "grad_norm")):
            record = maker.float_rows({name: step + k / 10}, step, T + step)
            assert record is not None and not isinstance(record, list)
            records.append(record)
    (batch,) = coalesced(records)
    assert entries_per_series(batch) == {"loss": 1, "lr": 1, "grad_norm": 1}
    assert not batch.float_blocks
    loss = next(s for s in batch.float_series if s.name == "loss")
    assert list(loss.steps) == list(range(100))
    assert list(loss.timestamps) == [T + s for s in range(100)]  # each point keeps its time
    applied = assert_same_outcome(records)
    assert applied.accepted == 300 and applied.rejected == applied.duplicates == 0


def test_repeated_steps_are_duplicates_or_rejections_as_if_sent_alone() -> None:
    records: list[Record] = [
        pt(1, "a", 1.0),
        pt(1, "b", 10.0),
        pt(1, "a", 1.0),  # the very point again: a duplicate
        pt(1, "b", 11.0),  # same step, another value: rejected
        pt(2, "a", 2.0),
        pt(2, "b", 12.0),
    ]
    (batch,) = coalesced(records)
    # A repeated step closes only its own series' entry.
    assert entries_per_series(batch) == {"a": 2, "b": 2}
    applied = assert_same_outcome(records)
    assert (applied.accepted, applied.duplicates, applied.rejected) == (4, 1, 1)
    assert applied.series["a"] == [(1, 1.0, T), (2, 2.0, T)]


def test_decreasing_steps_are_rejected_as_before() -> None:
    records: list[Record] = [pt(5, "a", 1.0), pt(3, "a", 2.0), pt(6, "a", 3.0), pt(4, "b", 4.0)]
    (batch,) = coalesced(records)
    assert [list(s.steps) for s in batch.float_series if s.name == "a"] == [[5], [3, 6]]
    applied = assert_same_outcome(records)
    assert applied.rejected == 1 and applied.series["a"] == [(5, 1.0, T), (6, 3.0, T)]


def test_points_after_block_rows_of_the_same_series_start_a_new_batch() -> None:
    # The service applies FloatSeries entries before FloatBlocks: a point must not overtake
    # block rows of its series, so the batch is cut there; other series share the batch.
    records: list[Record] = [rows(1, {"a": 1, "b": 1}), pt(1, "c", 5), pt(2, "a", 2)]
    assert [len(p) for p in split_for_blocks(records)] == [2, 1]
    assert_same_outcome(records)
    records = [pt(1, "a", 1), rows(2, {"a": 2, "b": 2}), pt(3, "c", 3)]
    assert [len(p) for p in split_for_blocks(records)] == [3]
    assert_same_outcome(records)


def test_alternating_dicts_keep_one_block_per_key_set() -> None:
    records: list[Record] = []
    for step in range(50):
        records.append(rows(step, {"loss": step, "acc": -step}))
        records.append(pt(step, "lr", 0.1))
        records.append(rows(step, {"wd": 1, "mom": 2}))
    (batch,) = coalesced(records)
    assert entries_per_series(batch) == {"loss": 1, "acc": 1, "lr": 1, "wd": 1, "mom": 1}
    assert [list(b.names) for b in batch.float_blocks] == [["loss", "acc"], ["wd", "mom"]]
    assert_same_outcome(records)


def test_a_series_moving_to_another_key_set_keeps_its_order() -> None:
    # "b" goes from block (a, b) to block (b, c) and back: appending to the first block again
    # would let its later points be applied before those of the block in between.
    records: list[Record] = [
        rows(1, {"a": 1, "b": 1}),
        rows(2, {"b": 2, "c": 2}),
        rows(3, {"a": 3, "b": 3}),
        rows(4, {"b": 4, "c": 4}),
    ]
    (batch,) = coalesced(records)
    assert len(batch.float_blocks) == 4
    applied = assert_same_outcome(records)
    assert [p[0] for p in applied.series["b"]] == [1, 2, 3, 4] and applied.rejected == 0


def test_strings_assigned_steps_columns_and_overwrites_mixed_in() -> None:
    maker = RecordMaker()
    records: list[Record] = [
        pt(0, "loss", 1.0),
        strings(0, {"console": "epoch 0"}),
        pt(None, "lr", 0.1),
        pt(None, "lr", 0.2),
        Column("curve", 0.0, T, pack_doubles([1, 2, 3])),
        pt(3, "curve", 4.0),  # continues the column
        rows(None, {"lr": 0.3, "wd": 0.0}),
        pt(None, "lr", 0.4),
        Rows(0, T, ("loss",), pack_doubles([9.0]), overwrite=True),
        pt(1, "loss", 8.0),  # joins the restarted series
        strings(1, {"console": "epoch 1"}),
        pt(1, "loss", 8.0),  # a duplicate
    ]
    made = maker.float_values("curve", 5.0, 4, T)
    assert made is not None
    records.append(made)
    applied = assert_same_outcome(records)
    assert applied.series["loss"] == [(0, 9.0, T), (1, 8.0, T)]
    assert [p[1] for p in applied.series["lr"]] == [0.1, 0.2, 0.3, 0.4]
    assert [p[0] for p in applied.series["curve"]] == [0, 1, 2, 3, 4]
    assert applied.strings["console"] == [(0, "epoch 0"), (1, "epoch 1")]
    assert applied.duplicates == 1


def _random_records(rng: random.Random, count: int) -> list[Record]:
    names = ["a", "b", "c", "d", "e"]
    step = {n: 0 for n in names}
    out: list[Record] = []
    for _ in range(count):
        name = rng.choice(names)
        kind = rng.random()
        jump = rng.choice([1, 1, 1, 1, 0, -1, -3])  # mostly increasing; repeats and going back
        step[name] = max(0, step[name] + jump)
        value = rng.choice([0.5, 1.0, float(step[name]), math.nan, -math.inf])
        when = T + rng.randrange(1000)
        if kind < 0.55:
            out.append(pt(step[name], name, value, when))
        elif kind < 0.65:
            out.append(pt(None, name, value, when))
        elif kind < 0.85:
            keys = tuple(sorted(rng.sample(names, rng.randint(2, 3))))
            out.append(Rows(step[name], when, keys, pack_doubles([value] * len(keys))))
        elif kind < 0.9:
            out.append(Rows(step[name], when, (name,), pack_doubles([value]), overwrite=True))
        elif kind < 0.95:
            n = rng.randint(1, 4)
            out.append(Column(name, float(step[name]), when, pack_doubles([value] * n)))
            step[name] += n - 1
        else:
            out.append(strings(step[name], {name: f"s{step[name]}"}, when))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_random_call_patterns_apply_exactly_as_if_each_call_were_sent_alone(seed: int) -> None:
    rng = random.Random(seed)
    records = _random_records(rng, 300)
    assert_same_outcome(records)
    assert_same_outcome(records, max_batch=rng.choice([1, 7, 64]))


def _one_at_a_time(records: list[Record]) -> bytes:
    """The general path: records added one by one (never the interleaved slicing)."""
    encoder = BatchEncoder()
    for record in records:
        encoder.add(record)
    return encoder.encode(1).request


def _interleaved(steps: range, names: list[str], skip: int = 0, cut: int = 0) -> list[Record]:
    out: list[Record] = [
        pt(float(step), name, step + k / 10, when=T + step)
        for step in steps
        for k, name in enumerate(names)
    ]
    return out[skip : len(out) - cut]


@pytest.mark.parametrize(("skip", "cut"), [(0, 0), (3, 0), (0, 4), (7, 2)])
def test_interleaved_points_are_sliced_per_series_into_the_same_bytes(skip: int, cut: int) -> None:
    """The per-call pattern from any starting name, with a partial last step: one entry per
    series, and the very bytes the general path encodes."""
    records = _interleaved(range(500), ["loss", "lr", "grad_norm", "acc"], skip, cut)
    encoder = BatchEncoder()
    assert encoder._add_interleaved(records)
    assert encoder.encode(1).request == _one_at_a_time(records)
    assert set(entries_per_series(decode(encode_batch(1, records).request)).values()) == {1}


@pytest.mark.parametrize(
    "records",
    [
        [pt(1, "a", 1.0), pt(1, "b", 1.0), pt(1, "a", 2.0), pt(1, "b", 2.0)],  # repeated step
        [pt(2, "a", 1.0), pt(2, "b", 1.0), pt(1, "a", 2.0), pt(1, "b", 2.0)],  # going back
        [pt(None, "a", 1.0), pt(None, "b", 1.0), pt(None, "a", 2.0)],  # assigned steps
        [pt(1, "a", 1.0), pt(1, "b", 1.0), pt(2, "b", 2.0), pt(2, "a", 2.0)],  # order changes
        [pt(1, "a", 1.0), pt(1, "a", 1.0)],  # one series, its step repeated
        [pt(1, "a", 1.0), rows(2, {"a": 1, "b": 2}), pt(3, "b", 1.0)],  # another record
    ],
)
def test_other_point_patterns_take_the_general_path(records: list[Record]) -> None:
    assert not BatchEncoder()._add_interleaved(records)
    encoder = BatchEncoder()
    encoder.add_all(records)
    assert encoder.encode(1).request == _one_at_a_time(records)
    assert_same_outcome(records)


@pytest.mark.parametrize("seed", range(20))
def test_random_point_patterns_encode_as_the_general_path(seed: int) -> None:
    """Points only (the interleaved slicing's domain), steps mostly rising, sometimes repeated,
    going back or assigned, names in a fixed or shuffled order."""
    rng = random.Random(seed)
    names = [f"s{i}" for i in range(rng.randint(1, 5))]
    records: list[Record] = []
    for step in range(rng.randint(1, 60)):
        order = names if rng.random() < 0.9 else rng.sample(names, len(names))
        for name in order:
            roll = rng.random()
            at = None if roll < 0.02 else float(step - (roll < 0.05) + (roll > 0.97))
            records.append(pt(at, name, rng.random(), when=T + step))
    encoder = BatchEncoder()
    encoder.add_all(records)
    assert encoder.encode(1).request == _one_at_a_time(records)
    assert_same_outcome(records)


def test_put_point_from_many_threads_keeps_each_threads_order_and_every_count() -> None:
    """put_point takes no lock: points put by four threads while the consumer takes all arrive,
    each thread's in its order, and the counters add up."""
    buffer: Buffer[object] = Buffer(10**9, lambda: None)
    per_thread = 20_000

    def log(thread: int) -> None:
        for step in range(per_thread):
            buffer.put_point(pt(float(step), f"t{thread}", 1.0))
            if step % 5_000 == 0:
                buffer.put(rows(step, {f"r{thread}": 1.0}), 1)  # the locked path, interleaved

    threads = [threading.Thread(target=log, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    taken: list[object] = []
    while any(thread.is_alive() for thread in threads) or buffer.queued_points:
        taken.extend(buffer.take(1_000) or [])
    for thread in threads:
        thread.join()
    points = [r for r in taken if type(r) is tuple]
    assert len(points) == 4 * per_thread and len(taken) == len(points) + 4 * 4
    for i in range(4):
        assert [p[0] for p in points if p[2] == f"t{i}"] == [float(s) for s in range(per_thread)]
    assert buffer.queued_points == 0 and buffer.logged_points == len(points) + 4 * 4


def test_put_point_counts_blocks_when_full_and_raises_once_closed() -> None:
    woken: list[int] = []
    buffer: Buffer[object] = Buffer(3, lambda: woken.append(1))
    assert buffer.take(10) is None  # arms the wakeup
    for step in range(3):
        buffer.put_point(pt(step, "a", 1.0))
    assert woken == [1] and buffer.queued_points == 3 and buffer.logged_points == 3
    done = threading.Event()

    def blocked_put() -> None:
        buffer.put_point(pt(3, "a", 1.0))
        done.set()

    thread = threading.Thread(target=blocked_put)
    thread.start()
    assert not done.wait(0.2)  # full: the fourth point waits
    assert buffer.take(2) == [pt(0, "a", 1.0), pt(1, "a", 1.0)]
    assert done.wait(30)
    thread.join(30)
    assert buffer.queued_points == 2
    buffer.close(lambda: RunClosedError("closed"))
    with pytest.raises(RunClosedError):
        buffer.put_point(pt(9, "a", 1.0))


def test_put_point_racing_close_raises_and_leaves_nothing_behind() -> None:
    """A close() that lands between put_point's check and its append (here forced at the
    deque seam: the append closes the buffer first) must not leave the point where nothing
    takes it: put_point takes it back and raises, and the counters stay exact."""
    buffer: Buffer[object] = Buffer(100, lambda: None)
    buffer.put_point(pt(0, "a", 1.0))

    class ClosingFirst(collections.deque):  # type: ignore[type-arg]
        def append(self, item: object) -> None:
            buffer.close(lambda: RunClosedError("closed"))
            super().append(item)

    left: list[object] = []
    real_close = buffer.close

    def close(error: Any) -> list[object]:
        left.extend(real_close(error))
        return left

    buffer.close = close  # type: ignore[method-assign]
    buffer._items = ClosingFirst(buffer._items)
    with pytest.raises(RunClosedError):
        buffer.put_point(pt(1, "a", 1.0))
    assert left == [pt(0, "a", 1.0)]  # what was queued before the close left with it
    assert list(buffer._items) == [] and buffer.queued_points == 0
    assert buffer.logged_points == 1


def test_interleaved_per_call_logging_round_trip(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real service: every point lands once, repeats and steps going back are
    answered as duplicates and rejections, and the batches carry one entry per series."""
    sent: list[ingest_pb2.PointBatch] = []

    send = _sender.Sender._send_encoded

    async def recording(sender: _sender.Sender, batch: EncodedBatch) -> None:
        sent.append(decode(batch.request))
        await send(sender, batch)

    monkeypatch.setattr(_sender.Sender, "_send_encoded", recording)  # a seam: the wire
    errors: list[IngestError] = []
    with stepstream.Run("per-call", address=address, on_error=errors.append) as run:
        for step in range(2_000):
            run.log_metrics({"loss": 1 / (step + 1)}, step=step)
            run.log_metrics({"lr": 0.001}, step=step)
            run.log_metric("acc", step / 2000, step)
            if step % 500 == 0:
                run.log_strings({"console": f"step {step}"}, step=step)
        run.log_metrics({"loss": 1 / 2000}, step=1999)  # the very last point again: duplicate
        run.log_metrics({"lr": 0.5}, step=10)  # below the floor: rejected
        run.wait()
        stats = run.stats
        loss = run.read_series("loss")
        acc = run.read_series("acc")
        lr = run.read_series("lr")
        console = run.read_series("console", string_series=True)
    assert loss.steps == list(range(2_000)) and loss.values[-1] == 1 / 2000
    assert acc.steps == list(range(2_000)) and lr.values == [0.001] * 2_000
    assert console.values == ["step 0", "step 500", "step 1000", "step 1500"]
    assert stats.acknowledged_points == 6_000 + 4 + 1  # the duplicate is acknowledged
    assert stats.rejected_points == 1
    assert [e.reason for e in errors] == ["STEP_NOT_INCREASING"]
    # However the calls fell into batches, a series has one entry per batch, except where
    # its step repeated or went back (the last two calls).
    assert sum(len(b.float_series) + len(b.string_series) for b in sent) > 0
    repeated = [n for b in sent for n, count in entries_per_series(b).items() if count > 1]
    assert len(repeated) <= 2
