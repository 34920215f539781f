"""Columnarisation: log records -> the trainer queue -> PointBatch requests.

The encoder writes the PointBatch wire format by hand; every test parses its bytes with the
generated classes and compares them with the message built the ordinary way.
"""

from __future__ import annotations

import math
import struct
import threading
import time

import pytest
import stepstream
from stepstream._batches import split_for_blocks
from stepstream._buffer import Buffer
from stepstream._columnar import encode_batch, varint
from stepstream._records import Column, Record, RecordMaker, Rows, pack_doubles
from stepstream.v1 import ingest_pb2

T = 1_700_000_000.25  # a fixed log time


def rows(step: float | None, data: dict[str, float], when: float = T) -> Rows:
    return Rows(step, when, tuple(data), pack_doubles(list(data.values())))


def strings(step: float | None, data: dict[str, str], when: float = T) -> Rows:
    return Rows(step, when, tuple(data), tuple(data.values()))


def decode(request: bytes) -> ingest_pb2.PointBatch:
    message = ingest_pb2.AppendPointsRequest.FromString(request)
    assert message.WhichOneof("kind") == "batch"
    return message.batch


def fs(
    name: str,
    steps: list[float],
    values: list[float],
    times: list[float] | None = None,
    assign: bool = False,
    overwrite: bool = False,
) -> ingest_pb2.FloatSeries:
    return ingest_pb2.FloatSeries(
        name=name,
        steps=steps,
        values=values,
        timestamps=times if times is not None else [T] * len(values),
        assign_steps=assign,
        overwrite=overwrite,
    )


def as_applied(*batches: ingest_pb2.PointBatch) -> ingest_pb2.PointBatch:
    """Batches as the service applies them, one after the other: in each, FloatSeries entries
    first, then each FloatBlock expanded into one FloatSeries per name. The result groups the
    entries by name (series are independent), keeps each series' order, and merges a series'
    consecutive explicit entries, which apply like one."""
    entries: list[ingest_pb2.FloatSeries] = []
    strings: list[ingest_pb2.StringSeries] = []
    for batch in batches:
        entries.extend(batch.float_series)
        strings.extend(batch.string_series)
        for block in batch.float_blocks:
            width = len(block.names)
            for i, name in enumerate(block.names):
                entries.append(
                    ingest_pb2.FloatSeries(
                        name=name,
                        steps=block.steps,
                        values=block.values[i::width],
                        timestamps=block.timestamps,
                    )
                )
    order = {name: n for n, name in enumerate(dict.fromkeys(e.name for e in entries))}
    entries.sort(key=lambda e: order[e.name])
    merged: list[ingest_pb2.FloatSeries] = []
    for e in entries:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.name == e.name
            and not (last.assign_steps or e.assign_steps or e.overwrite)
            and e.steps[0] > last.steps[-1]
        ):
            last.steps.extend(e.steps)
            last.values.extend(e.values)
            last.timestamps.extend(e.timestamps)
        else:
            copy = ingest_pb2.FloatSeries()
            copy.CopyFrom(e)
            merged.append(copy)
    return ingest_pb2.PointBatch(
        sequence=batches[0].sequence if batches else 0, float_series=merged, string_series=strings
    )


def assert_encodes_as(
    records: list[Record],
    float_series: list[ingest_pb2.FloatSeries],
    string_series: list[ingest_pb2.StringSeries] = (),  # type: ignore[assignment]
    sequence: int = 1,
) -> None:
    """The records, cut by split_for_blocks and encoded batch by batch, apply exactly like
    the expected FloatSeries entries (in log order)."""
    parts = split_for_blocks(records)
    batches = [encode_batch(sequence + i, part) for i, part in enumerate(parts)]
    sent = [decode(b.request) for b in batches]
    expected = ingest_pb2.PointBatch(
        sequence=sequence, float_series=float_series, string_series=string_series
    )
    assert as_applied(*sent) == as_applied(expected)
    for b, message in zip(batches, sent, strict=True):
        # Same bytes as the generated code would send (fields in number order, packed).
        assert b.request == ingest_pb2.AppendPointsRequest(batch=message).SerializeToString()
    assert sum(b.points for b in batches) == sum(
        len(s.values) for s in [*float_series, *string_series]
    )


def test_one_row() -> None:
    assert_encodes_as([rows(5, {"a": 1.5, "b": -2})], [fs("a", [5], [1.5]), fs("b", [5], [-2])])


def test_rows_with_the_same_keys_become_one_entry_per_series() -> None:
    records: list[Record] = [
        rows(step, {"loss": 1 / (step + 1), "acc": step / 10, "lr": 0.1}, T + step)
        for step in range(4)
    ]
    times = [T + s for s in range(4)]
    assert_encodes_as(
        records,
        [
            fs("loss", [0, 1, 2, 3], [1, 1 / 2, 1 / 3, 1 / 4], times),
            fs("acc", [0, 1, 2, 3], [0, 0.1, 0.2, 0.3], times),
            fs("lr", [0, 1, 2, 3], [0.1] * 4, times),
        ],
    )


def test_interleaved_key_sets_keep_each_series_in_order() -> None:
    records: list[Record] = [
        rows(1, {"train": 1}),
        rows(2, {"train": 2}),
        rows(2, {"train": 2.5, "val": 9}),  # same step again: a new entry for "train"
        rows(3, {"train": 3}),
        rows(4, {"val": 8}),
    ]
    assert_encodes_as(
        records,
        [
            fs("train", [1, 2], [1, 2]),
            fs("train", [2, 3], [2.5, 3]),
            fs("val", [2, 4], [9, 8]),
        ],
    )


def test_a_step_that_goes_back_starts_a_new_entry() -> None:
    # The service judges each entry against the floor the previous one left, so the point at
    # step 3 is rejected on its own instead of taking its whole entry down with it.
    assert_encodes_as(
        [rows(5, {"a": 1}), rows(3, {"a": 2}), rows(6, {"a": 3}), rows(6, {"a": 4})],
        [fs("a", [5], [1]), fs("a", [3, 6], [2, 3]), fs("a", [6], [4])],
    )


def test_server_assigned_steps() -> None:
    assert_encodes_as(
        [rows(None, {"a": 1, "b": 2}), rows(None, {"a": 3, "b": 4}), rows(None, {"a": 5})],
        [fs("a", [], [1, 3, 5], assign=True), fs("b", [], [2, 4], [T, T], assign=True)],
    )


def test_explicit_and_assigned_steps_alternate_in_order() -> None:
    assert_encodes_as(
        [rows(1, {"a": 1}), rows(None, {"a": 2}), rows(None, {"a": 3}), rows(10, {"a": 4})],
        [fs("a", [1], [1]), fs("a", [], [2, 3], assign=True), fs("a", [10], [4])],
    )


def test_columns_from_log_metric_lists() -> None:
    maker = RecordMaker()
    explicit = maker.float_values("x", [1.0, 2.0, 3.0], 10, T)
    assigned = maker.float_values("x", [4.0, 5.0], None, T)
    after = maker.float_values("x", 6.0, 13, T)
    assert explicit is not None and assigned is not None and after is not None
    assert_encodes_as(
        [explicit, assigned, after],
        [
            fs("x", [10, 11, 12], [1, 2, 3]),
            fs("x", [], [4, 5], assign=True),
            fs("x", [13], [6]),
        ],
    )


def test_a_column_continues_rows_of_the_same_series() -> None:
    assert_encodes_as(
        [rows(1, {"x": 1}), Column("x", 2.0, T, pack_doubles([2, 3]))],
        [fs("x", [1, 2, 3], [1, 2, 3])],
    )


def test_split_only_where_a_series_entry_would_overtake_block_points() -> None:
    column = Column("x", 5.0, T, pack_doubles([5, 6]))
    # Rows of x (a block), then a log_metric list of x: the list must not overtake the rows.
    assert [len(p) for p in split_for_blocks([rows(1, {"x": 1}), column])] == [1, 1]
    # The other order, or other series, share one batch.
    assert [len(p) for p in split_for_blocks([column, rows(9, {"x": 1})])] == [2]
    assert [len(p) for p in split_for_blocks([rows(1, {"y": 1}), column])] == [2]
    assert [len(p) for p in split_for_blocks([rows(1, {"x": 1}), rows(None, {"x": 2})])] == [1, 1]


def ow(step: float | None, data: dict[str, float]) -> Rows:
    """A log_metrics(..., overwrite=True) record."""
    return Rows(step, T, tuple(data), pack_doubles(list(data.values())), overwrite=True)


def test_overwrite_starts_a_flagged_entry_that_later_points_may_join() -> None:
    # The service restarts the series before the flagged entry's first point, so what follows
    # in the same entry lands on top of the restart, in order.
    assert_encodes_as(
        [
            rows(1, {"a": 1, "b": 1}),
            ow(0, {"a": 2, "b": 2}),
            rows(1, {"a": 3, "b": 3}),
            rows(2, {"a": 4}),
        ],
        [
            fs("a", [1], [1]),
            fs("a", [0, 1, 2], [2, 3, 4], overwrite=True),
            fs("b", [1], [1]),
            fs("b", [0, 1], [2, 3], overwrite=True),
        ],
    )


def test_each_overwrite_restarts_again() -> None:
    assert_encodes_as(
        [ow(None, {"a": 1}), ow(None, {"a": 2}), rows(None, {"a": 3})],
        [
            fs("a", [], [1], assign=True, overwrite=True),
            fs("a", [], [2, 3], [T, T], assign=True, overwrite=True),
        ],
    )


def test_overwrite_columns() -> None:
    assert_encodes_as(
        [
            Column("acc", None, T, pack_doubles([0.7, 0.75])),
            Column("acc", None, T, pack_doubles([0.8, 0.9]), overwrite=True),
            Column("acc", 5.0, T, pack_doubles([1.0])),
        ],
        [
            fs("acc", [], [0.7, 0.75], assign=True),
            fs("acc", [], [0.8, 0.9], assign=True, overwrite=True),
            fs("acc", [5], [1.0]),
        ],
    )


def test_split_records_restart_each_series_exactly_once() -> None:
    # A wide overwrite row split across batches holds different series in each half: both
    # halves restart theirs. A long column split across batches is one series: only its
    # head restarts it, or the tail would erase the head.
    head, tail = ow(3, {"a": 1, "b": 2, "c": 3}).split(2)
    assert (head.keys, head.overwrite, tail.keys, tail.overwrite) == (
        ("a", "b"),
        True,
        ("c",),
        True,
    )
    column = Column("x", None, T, pack_doubles([1.0, 2.0, 3.0]), overwrite=True)
    first, rest = column.split(2)
    assert (first.points, first.overwrite, rest.points, rest.overwrite) == (2, True, 1, False)
    buffer: Buffer[str] = Buffer(10**6, lambda: None)
    buffer.put(Column("x", 10.0, T, pack_doubles([float(v) for v in range(25)]), True), 25)
    flags = []
    for sequence, items in enumerate(drain(buffer, 10), 1):
        records = [r for r in items if not isinstance(r, str)]
        (entry,) = as_applied(decode(encode_batch(sequence, records).request)).float_series
        flags.append((entry.steps[0], entry.overwrite))
    assert flags == [(10, True), (20, False), (30, False)]


def test_string_series() -> None:
    assert_encodes_as(
        [
            strings(1, {"console": "epoch 1", "stderr": "warn"}),
            strings(2, {"console": "épоch 2 ✓"}),
            strings(None, {"console": "tail"}),
        ],
        [],
        [
            ingest_pb2.StringSeries(
                name="console", steps=[1, 2], values=["epoch 1", "épоch 2 ✓"], timestamps=[T, T]
            ),
            ingest_pb2.StringSeries(
                name="console", values=["tail"], timestamps=[T], assign_steps=True
            ),
            ingest_pb2.StringSeries(name="stderr", steps=[1], values=["warn"], timestamps=[T]),
        ],
    )


def test_floats_and_strings_in_one_batch() -> None:
    assert_encodes_as(
        [rows(1, {"a": 1}), strings(1, {"log": "x"}), rows(2, {"a": 2})],
        [fs("a", [1, 2], [1, 2])],
        [ingest_pb2.StringSeries(name="log", steps=[1], values=["x"], timestamps=[T])],
    )


def test_non_finite_values_and_negative_zero_travel_bit_for_bit() -> None:
    values = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]
    batch = as_applied(
        decode(encode_batch(1, [rows(1, {f"s{i}": v for i, v in enumerate(values)})]).request)
    )
    sent = [entry.values[0] for entry in batch.float_series]
    assert [struct.pack("<d", v) for v in sent] == [struct.pack("<d", v) for v in values]


def test_fractional_steps_and_unicode_names() -> None:
    assert_encodes_as(
        [rows(100.1, {"損失/train": 1}), rows(100.2, {"損失/train": 2})],
        [fs("損失/train", [100.1, 100.2], [1, 2])],
    )


@pytest.mark.parametrize("sequence", [1, 127, 128, 300, 2**32, 2**63])
def test_sequence_numbers_and_varints(sequence: int) -> None:
    assert_encodes_as([rows(1, {"a": 1})], [fs("a", [1], [1])], sequence=sequence)
    assert decode(encode_batch(sequence, [rows(1, {"a": 1})]).request).sequence == sequence


def test_varint_matches_protobuf() -> None:
    for value in [1, 127, 128, 16383, 16384, 2**35 + 7, 2**64 - 1]:
        encoded = ingest_pb2.PointBatch(sequence=value).SerializeToString()
        assert encoded == b"\x08" + varint(value)


def test_wide_dicts_over_many_steps() -> None:
    maker = RecordMaker()
    keys = [f"layer{i}/grad_norm" for i in range(300)]
    records: list[Record] = []
    for step in range(20):
        record = maker.float_rows({k: i * 1000 + step for i, k in enumerate(keys)}, step, T)
        assert record is not None
        records.append(record)
    batch = as_applied(decode(encode_batch(3, records).request))
    assert [entry.name for entry in batch.float_series] == keys
    for i, entry in enumerate(batch.float_series):
        assert list(entry.steps) == list(range(20))
        assert list(entry.values) == [i * 1000 + step for step in range(20)]


# ---- the queue: batch sizes, splitting, markers, backpressure ------------------------------


def drain(buffer: Buffer[str], max_points: int) -> list[list[Record | str]]:
    taken = []
    while (items := buffer.take(max_points)) is not None:
        taken.append(items)
    return taken


def test_take_respects_max_batch_points_without_splitting_small_records() -> None:
    buffer: Buffer[str] = Buffer(10**6, lambda: None)
    for step in range(5):
        buffer.put(rows(step, {f"k{i}": i for i in range(400)}), 400)
    sizes = [sum(r.points for r in b if not isinstance(r, str)) for b in drain(buffer, 1000)]
    assert sizes == [800, 800, 400]


def test_a_record_larger_than_a_batch_is_split_in_order() -> None:
    buffer: Buffer[str] = Buffer(10**6, lambda: None)
    data = {f"k{i}": float(i) for i in range(2500)}
    record = RecordMaker().float_rows(data, 7, T)
    assert record is not None
    buffer.put(record, record.points)
    batches = drain(buffer, 1000)
    assert [sum(r.points for r in b if not isinstance(r, str)) for b in batches] == [
        1000,
        1000,
        500,
    ]
    names: list[str] = []
    for sequence, items in enumerate(batches, 1):
        records = [r for r in items if not isinstance(r, str)]
        for entry in as_applied(decode(encode_batch(sequence, records).request)).float_series:
            assert list(entry.steps) == [7] and list(entry.values) == [data[entry.name]]
            names.append(entry.name)
    assert names == list(data)


def test_a_long_column_is_split_with_continuing_steps() -> None:
    buffer: Buffer[str] = Buffer(10**6, lambda: None)
    column = Column("x", 10.0, T, pack_doubles([float(v) for v in range(25)]))
    buffer.put(column, column.points)
    steps: list[float] = []
    values: list[float] = []
    for sequence, items in enumerate(drain(buffer, 10), 1):
        records = [r for r in items if not isinstance(r, str)]
        (entry,) = as_applied(decode(encode_batch(sequence, records).request)).float_series
        assert len(entry.values) <= 10
        steps.extend(entry.steps)
        values.extend(entry.values)
    assert steps == [10.0 + v for v in range(25)] and values == [float(v) for v in range(25)]


def test_markers_are_taken_alone_and_in_order() -> None:
    buffer: Buffer[str] = Buffer(10**6, lambda: None)
    buffer.put(rows(1, {"a": 1}), 1)
    buffer.put(rows(2, {"a": 2}), 1)
    buffer.put("config", 0)
    buffer.put(rows(3, {"a": 3}), 1)
    shapes = [[x if isinstance(x, str) else x.step for x in b] for b in drain(buffer, 100)]
    assert shapes == [[1, 2], ["config"], [3]]


def test_wakeup_is_armed_only_when_the_consumer_found_nothing() -> None:
    wakeups: list[int] = []
    buffer: Buffer[str] = Buffer(100, lambda: wakeups.append(1))
    buffer.put(rows(1, {"a": 1}), 1)
    assert wakeups == []  # nobody is waiting yet
    assert buffer.take(10) is not None
    assert buffer.take(10) is None  # empty: arms the wakeup
    buffer.put(rows(2, {"a": 1}), 1)
    buffer.put(rows(3, {"a": 1}), 1)
    assert wakeups == [1]  # once, not per put


def test_put_blocks_while_full_and_resumes_when_the_sender_takes() -> None:
    buffer: Buffer[str] = Buffer(10, lambda: None)
    buffer.put(rows(1, {f"k{i}": i for i in range(8)}), 8)
    done = threading.Event()

    def log() -> None:
        buffer.put(rows(2, {f"k{i}": i for i in range(8)}), 8)
        done.set()

    thread = threading.Thread(target=log)
    thread.start()
    assert not done.wait(0.2), "put must block: 8 + 8 points exceed the bound of 10"
    assert buffer.take(100) is not None
    assert done.wait(5)
    thread.join()
    assert buffer.queued_points == 8 and buffer.logged_points == 16


def test_a_record_larger_than_the_bound_is_accepted_when_the_queue_is_empty() -> None:
    buffer: Buffer[str] = Buffer(10, lambda: None)
    buffer.put(rows(1, {f"k{i}": i for i in range(50)}), 50)
    assert buffer.queued_points == 50


def test_close_wakes_a_blocked_put_with_the_error() -> None:
    buffer: Buffer[str] = Buffer(1, lambda: None)
    buffer.put(rows(1, {"a": 1}), 1)
    errors: list[BaseException] = []

    def log() -> None:
        try:
            buffer.put(rows(2, {"a": 1}), 1)
        except stepstream.RunClosedError as exc:
            errors.append(exc)

    thread = threading.Thread(target=log)
    thread.start()
    time.sleep(0.1)
    left = buffer.close(lambda: stepstream.RunClosedError("closed"))
    thread.join(5)
    assert len(left) == 1 and len(errors) == 1
    with pytest.raises(stepstream.RunClosedError, match="closed"):
        buffer.put("marker", 0)
