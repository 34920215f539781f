"""The client cuts batches by series-name bytes as well as by points, so that it never sends
a batch the service must refuse (`BATCH_NAMES_TOO_LARGE`, limits.MAX_BATCH_NAME_BYTES)."""

from __future__ import annotations

import stepstream
import test_seeds
from stepstream._batches import batch_encoders
from stepstream._name_bytes import split_by_name_bytes
from stepstream._records import Column, Rows, pack_doubles
from stepstream.rules import MAX_BATCH_NAME_BYTES

address = test_seeds.address  # the real service, on its own event loop thread


def _rows(keys: list[str]) -> Rows:
    return Rows(1.0, 0.0, tuple(keys), pack_doubles([1.0] * len(keys)))


def _bytes(part: list[object]) -> int:
    return sum(
        len(r.name.encode()) if isinstance(r, Column) else sum(len(k.encode()) for k in r.keys)
        for r in part  # type: ignore[union-attr]
    )


def test_parts_keep_order_and_stay_within_the_limit() -> None:
    keys = [f"é{i:04d}" + "x" * 94 for i in range(50)]  # 100 bytes each (é takes two)
    records = [
        _rows(keys[:30]),
        Column("c" * 200, None, 0.0, pack_doubles([1.0, 2.0])),
        _rows(keys[30:]),
    ]
    parts = split_by_name_bytes(records, limit=1_000)  # type: ignore[arg-type]
    assert all(_bytes(p) <= 1_000 for p in parts)  # type: ignore[arg-type]
    flat = [k for p in parts for r in p for k in (r.keys if isinstance(r, Rows) else (r.name,))]
    assert flat == [*keys[:30], "c" * 200, *keys[30:]]
    assert len(parts) == 6  # 10 keys (1,000 bytes) a part; the column in one of its own
    # Few names cannot reach the limit: the records go as they are, uncounted.
    assert split_by_name_bytes(records) == [records]  # type: ignore[arg-type]


def test_a_wide_row_of_long_names_is_sent_in_batches_the_service_takes(address: str) -> None:
    """10,000 names of 1,000 bytes in one log call: 10 MB of names, over the 8 MiB a batch may
    carry. Every point lands (the service would refuse the whole batch otherwise)."""
    names = [f"{i:05d}/" + "n" * 994 for i in range(10_000)]
    assert sum(map(len, names)) > MAX_BATCH_NAME_BYTES
    with stepstream.Run("wide-names", address=address) as run:
        run.log_metrics(dict.fromkeys(names, 1.0), step=0)
    with stepstream.Run("wide-names", address=address, resume=True) as run:
        listed = run.list_series()
    assert len(listed) == 10_000
    assert {s.name for s in listed} == set(names)


def test_one_key_points_count_their_names_and_are_cut_between_points() -> None:
    # One-key log calls travel as Point tuples (step, time, name, value): 300 points under
    # names of 100 bytes hold 30,000 name bytes, cut at 10,000 into three parts of 100.
    points = [(float(i), 0.0, f"{i:03d}" + "n" * 97, 1.0) for i in range(300)]
    parts = split_by_name_bytes(points, limit=10_000)  # type: ignore[arg-type]
    assert [len(p) for p in parts] == [100, 100, 100]
    assert [p for part in parts for p in part] == points


def test_the_cut_counts_the_names_a_batch_carries_not_every_call() -> None:
    """20,000 one-key calls under 10 names of 600 bytes: 12 MB of names counted call by call,
    but one entry per series on the wire (6,000 bytes), so one batch. 15,000 distinct names
    of 600 bytes do carry 9 MB, over the 8 MiB limit: cut into two batches below it."""
    names = [f"{i:02d}" + "n" * 598 for i in range(10)]
    points = [(float(s), 0.0, n, 1.0) for s in range(2_000) for n in names]
    (encoder,) = batch_encoders(points)  # type: ignore[arg-type]
    assert encoder.name_bytes() == 6_000 and encoder.points == 20_000
    distinct = [(1.0, 0.0, f"{i:05d}" + "n" * 595, 1.0) for i in range(15_000)]
    parts = list(batch_encoders(distinct))  # type: ignore[arg-type]
    assert len(parts) == 2 and sum(p.points for p in parts) == 15_000
    assert all(p.name_bytes() <= MAX_BATCH_NAME_BYTES for p in parts)
