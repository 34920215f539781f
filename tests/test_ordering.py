"""The ordering rule (SPEC §2) through the real service, Redis and store."""

from __future__ import annotations

import asyncio
import math
import struct

import pytest
from wire import Stream, create_run, fseries, read_points, sseries

pytestmark = pytest.mark.stores("sqlite", "postgresql")


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


async def test_append_and_read_back(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    opened = await s.open("r1")
    assert opened.opened.last_committed_sequence == 0
    resp = await s.send(fseries("loss", [1, 2, 3], [0.5, 0.4, 0.3]), fseries("acc", [1], [0.9]))
    assert resp.sequence == 1
    assert resp.appended.accepted_count == 4
    assert list(resp.appended.rejections) == []
    await s.close()
    assert await read_points(runs, "r1", "loss") == ([1, 2, 3], [0.5, 0.4, 0.3])
    assert await read_points(runs, "r1", "acc") == ([1], [0.9])


async def test_equal_step_is_rejected(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    await s.send(fseries("loss", [5], [1.0]))
    resp = await s.send(fseries("loss", [5], [2.0]))
    assert resp.appended.accepted_count == 0
    (rej,) = resp.appended.rejections
    assert (rej.series, rej.reason, rej.count, rej.first_step, rej.last_step, rej.floor) == (
        "loss",
        "STEP_NOT_INCREASING",
        1,
        5.0,
        5.0,
        5.0,
    )
    assert rej.message == "1 point(s) at steps 5.0..5.0 are not above the series' floor 5.0"
    assert await read_points(runs, "r1", "loss") == ([5], [1.0])


async def test_identical_resent_point_is_a_duplicate(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    await s.send(fseries("loss", [5], [1.0]))
    resp = await s.send(fseries("loss", [5], [1.0]))
    assert resp.appended.accepted_count == 0
    assert resp.appended.duplicate_count == 1
    assert list(resp.appended.rejections) == []
    assert await read_points(runs, "r1", "loss") == ([5], [1.0])


async def test_lower_step_is_rejected(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    await s.send(fseries("loss", [10], [1.0]))
    resp = await s.send(fseries("loss", [3], [1.0]))
    (rej,) = resp.appended.rejections
    assert (rej.reason, rej.count, rej.first_step, rej.last_step, rej.floor) == (
        "STEP_NOT_INCREASING",
        1,
        3.0,
        3.0,
        10.0,
    )


async def test_rejected_prefix_rest_accepted(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    await s.send(fseries("loss", [1, 2, 3], [1, 2, 3]))
    resp = await s.send(
        fseries("loss", [0, 2, 3, 4, 5], [9, 9, 3, 4, 5]), fseries("other", [1], [1])
    )
    # 0 and 2 are below/at... 3 at the floor with the same value is a duplicate; 4, 5 land.
    assert resp.appended.accepted_count == 3
    assert resp.appended.duplicate_count == 1
    (rej,) = resp.appended.rejections
    assert (rej.reason, rej.count, rej.first_step, rej.last_step, rej.floor) == (
        "STEP_NOT_INCREASING",
        2,
        0.0,
        2.0,
        3.0,
    )
    assert await read_points(runs, "r1", "loss") == ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5])
    assert await read_points(runs, "r1", "other") == ([1], [1])


async def test_new_series_accepts_any_first_step(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    await s.send(fseries("a", [1000], [1]))
    resp = await s.send(fseries("b", [-5.5], [1]), fseries("c", [0.25], [2]))
    assert resp.appended.accepted_count == 2
    assert (await read_points(runs, "r1", "b"))[0] == [-5.5]


async def test_fractional_steps(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    resp = await s.send(fseries("m", [100, 100.1, 100.2], [1, 2, 3]))
    assert resp.appended.accepted_count == 3


async def test_server_assigned_steps(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    r1 = await s.send(fseries("loss", values=[0.002], assign=True))
    assert r1.appended.assigned_steps[0].first_step == 0
    r2 = await s.send(fseries("loss", values=[0.0019], assign=True))
    assert r2.appended.assigned_steps[0].first_step == 1
    r3 = await s.send(fseries("loss", values=[0.0018, 0.0015], assign=True))
    assert (r3.appended.assigned_steps[0].first_step, r3.appended.assigned_steps[0].count) == (2, 2)
    await s.send(fseries("frac", [7.5], [1]))
    r4 = await s.send(fseries("frac", values=[2], assign=True))
    assert r4.appended.assigned_steps[0].first_step == 8
    assert await read_points(runs, "r1", "loss") == ([0, 1, 2, 3], [0.002, 0.0019, 0.0018, 0.0015])


async def test_concurrent_assigned_appenders_never_collide(runs, ingest):
    await create_run(runs, "r1")
    streams = [Stream(ingest) for _ in range(4)]
    for i, s in enumerate(streams):
        await s.open("r1", writer_id=f"w{i}")

    async def append(s: Stream, tag: int) -> list[float]:
        firsts = []
        for k in range(25):
            r = await s.send(
                fseries("shared", values=[tag * 1000 + k, tag * 1000 + k + 0.5], assign=True)
            )
            assert r.appended.accepted_count == 2
            firsts.append(r.appended.assigned_steps[0].first_step)
        return firsts

    results = await asyncio.gather(*(append(s, i) for i, s in enumerate(streams)))
    steps, values = await read_points(runs, "r1", "shared")
    assert steps == [float(i) for i in range(200)]
    assigned = sorted(f for firsts in results for f in firsts)
    assert assigned == [float(i) for i in range(0, 200, 2)]
    # Each writer's pair landed together, in order.
    for i in range(0, 200, 2):
        assert values[i + 1] == values[i] + 0.5


async def test_non_finite_values_round_trip_bit_exact(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    weird_nan = struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0]
    vals = [math.nan, math.inf, -math.inf, -0.0, weird_nan, 5e-324]
    resp = await s.send(fseries("loss", [1, 2, 3, 4, 5, 6], vals))
    assert resp.appended.accepted_count == 6
    _, got = await read_points(runs, "r1", "loss")
    assert [bits(v) for v in got] == [bits(v) for v in vals]
    # A NaN at the floor re-sent is a duplicate, not a rejection.
    again = await s.send(fseries("loss", [6], [5e-324]))
    assert again.appended.duplicate_count == 1


async def test_non_finite_steps_rejected(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    for i, bad in enumerate((math.nan, math.inf, -math.inf)):
        resp = await s.send(fseries("loss", [1, bad], [1, 2]), fseries("fine", [i], [1]))
        (rej,) = resp.appended.rejections
        assert rej.reason == "NON_FINITE_STEP"
        assert rej.count == 2
        assert rej.message == f"step {bad!r} at index 1 is not a finite number"
        assert resp.appended.accepted_count == 1
    assert (await read_points(runs, "r1", "loss"))[0] == []


async def test_string_series_follow_the_same_rules(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    await s.send(sseries("console", [1, 2], ["epoch 1", "épоch 2 ✓"]))
    resp = await s.send(
        sseries("console", [2, 3], ["dup?", "three"]), fseries("console", [1], [1.0])
    )
    # float and string series of one name are apart; "console" float is new.
    assert resp.appended.accepted_count == 2
    (rej,) = resp.appended.rejections
    assert (rej.reason, rej.string_series, rej.floor) == ("STEP_NOT_INCREASING", True, 2.0)
    assert await read_points(runs, "r1", "console", strings=True) == (
        [1, 2, 3],
        ["epoch 1", "épоch 2 ✓", "three"],
    )
    assert await read_points(runs, "r1", "console") == ([1], [1.0])


async def test_series_are_independent_within_a_batch(runs, ingest):
    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    # The second series starts below where the first ends; the third is bad in the middle.
    resp = await s.send(
        fseries("a", [10, 11], [1, 2]),
        fseries("b", [1, 2], [1, 2]),
        fseries("c", [5, 4], [1, 2]),
        fseries("d", [0, 1], [1, 2]),
    )
    assert resp.appended.accepted_count == 6
    (rej,) = resp.appended.rejections
    assert (rej.series, rej.reason) == ("c", "STEPS_NOT_STRICTLY_INCREASING")


async def test_float_block_is_one_series_per_name(runs, ingest):
    from wire import fblock

    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    resp = await s.send(
        fblock(["loss", "acc"], [1, 2, 3], [[0.5, 0.1], [0.4, 0.2], [math.nan, math.inf]])
    )
    assert resp.appended.accepted_count == 6
    assert (await read_points(runs, "r1", "loss"))[0] == [1, 2, 3]
    _, acc = await read_points(runs, "r1", "acc")
    assert acc == [0.1, 0.2, math.inf]
    # Rows below the floor are a rejected prefix for every series of the block.
    resp = await s.send(fblock(["loss", "acc", "new"], [3, 4], [[9, 9, 9], [0.3, 0.3, 0.3]]))
    assert resp.appended.accepted_count == 3 + 1  # step 4 of all three, step 3 of "new"
    assert sorted((r.series, r.reason, r.count, r.floor) for r in resp.appended.rejections) == [
        ("acc", "STEP_NOT_INCREASING", 1, 3.0),
        ("loss", "STEP_NOT_INCREASING", 1, 3.0),
    ]


async def test_float_series_apply_before_blocks(runs, ingest):
    from wire import fblock

    await create_run(runs, "r1")
    s = Stream(ingest)
    await s.open("r1")
    # float_series (step 1) goes first, then the block (steps 2, 3), whatever the send order.
    resp = await s.send(fblock(["m"], [2, 3], [[2], [3]]), fseries("m", [1], [1]))
    assert resp.appended.accepted_count == 3 and not resp.appended.rejections
    assert (await read_points(runs, "r1", "m"))[0] == [1, 2, 3]
