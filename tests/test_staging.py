"""The SQLite store's staged log and memtable (docs/staging.md): every read path sees staged
points exactly as it sees them once flushed (forks across hops, a fork while the parent's
points are staged, a rewind, an overwrite generation); a reader and a flush interleaved at
either seam see every point once; a failed flush leaves the staged rows and the memtable as
they were; kill -9 of a real service loses nothing acknowledged; an old file migrates."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import free_port
from procs import ServiceProcess
from stepstream.v1 import ingest_pb2_grpc, runs_pb2_grpc
from stepstream_server.embedded_redis import EmbeddedRedis
from stepstream_server.model import ChunkWrite, Origin, WriterCommit
from stepstream_server.store import memtable
from stepstream_server.store import sqlite as sqlite_module
from stepstream_server.store.base import RunCommit
from stepstream_server.store.codec import points_of
from stepstream_server.store.sqlite import SqliteStore
from store_runs import create_plain_run
from wire import Stream, create_run, fseries, read_points

INF = math.inf


def commit(
    store: SqliteStore,
    inc: str,
    sequence: int,
    steps: range,
    *,
    names: tuple[str, ...] = ("loss", "acc"),
    text: bool = True,
    new_generation: bool = False,
    run_id: str = "r",
) -> None:
    """One group: float series `names` and a string series at `steps`, as writer w."""
    s = np.array(steps, dtype=np.float64)
    chunks = [
        ChunkWrite(inc, name, False, s, s * (k + 1) + 0.5, s + 1e9, new_generation)
        for k, name in enumerate(names)
    ]
    if text:
        chunks.append(ChunkWrite(inc, "note", True, s, [f"n{x:g}é" for x in s], s + 1e9))
    record = store.get_run("p", run_id)
    assert record is not None
    writers = [WriterCommit("p", run_id, "w", sequence, "{}")]
    assert store.commit([RunCommit("p", run_id, record.fence, chunks, writers)]) == {}


def everything(store: SqliteStore, inc: str) -> dict[str, Any]:
    """What every read path answers for the view of `inc`, in a comparable form."""
    segments = store.segments(inc)
    keys = store.series_keys(segments)
    out: dict[str, Any] = {"floors": store.floors(segments), "keys": keys}
    summaries = store.read_summary_pieces(segments, [(n, k) for n, k, _ in keys])
    for name, is_string, _ in keys:
        parts = list(store.read(segments, name, is_string, -INF, INF))
        steps = [x for p in parts for x in p.steps.tolist()]
        values = [x for p in parts for x in list(p.values)]
        ts = [x for p in parts for x in p.timestamps.tolist()]
        out[f"read:{name}:{is_string}"] = (steps, values, ts)
        # At least the points: those of the chunks (or pieces) overlapping the range.
        assert store.count(segments, name, is_string, -INF, INF) >= len(steps)
        generation, pieces = summaries[(name, is_string)]
        floats = [v for p in pieces for v in p[3].tolist()]
        out[f"summary:{name}:{is_string}"] = (
            generation,
            sum(p[0] for p in pieces),
            pieces[-1][1],
            pieces[-1][2],
            (min(floats), max(floats)) if floats else None,
        )
        if not is_string:
            sampled = list(store.read_sampled(segments, name, -INF, INF))
            got = {
                x: v
                for p in sampled
                for x, v in zip(p.steps.tolist(), p.values.tolist(), strict=True)
            }
            real = dict(zip(steps, values, strict=True))
            assert all(real[x] == v for x, v in got.items())  # only real points
            assert steps[0] in got and steps[-1] in got
        # A range read cuts pieces and chunks alike.
        if len(steps) > 4:
            lo, hi = steps[1], steps[-2]
            parts = list(store.read(segments, name, is_string, lo, hi))
            out[f"range:{name}:{is_string}"] = [x for p in parts for x in p.steps.tolist()]
    return out


def staged_rows(store: SqliteStore) -> int:
    return int(store._conn().execute("SELECT COUNT(*) FROM staged").fetchone()[0])


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SqliteStore(tmp_path / "s.sqlite3")
    s._flusher.stop()  # the tests flush by hand: nothing moves under them
    try:
        yield s
    finally:
        s.close()


def test_reads_see_staged_points_as_they_see_flushed_ones(store: SqliteStore) -> None:
    inc = create_plain_run(store).current_incarnation_id
    for seq in range(1, 6):
        commit(store, inc, seq, range(seq * 10, seq * 10 + 10))
    assert staged_rows(store) == 5
    before = everything(store, inc)
    assert before["read:loss:False"][0] == [float(x) for x in range(10, 60)]
    assert {k: v[0] for k, v in before["floors"].items()} == {
        "f:loss": 59.0, "f:acc": 59.0, "s:note": 59.0
    }  # fmt: skip
    store.flush()
    assert staged_rows(store) == 0 and store._memtable.pieces == 0
    # One chunk per series, holding all five pieces, under the last piece's reserved ID.
    chunks = store._conn().execute("SELECT series_id, n FROM chunks ORDER BY series_id").fetchall()
    assert [n for _, n in chunks] == [50, 50, 50]
    assert everything(store, inc) == before
    # Half flushed, half staged: the same again.
    for seq in range(6, 9):
        commit(store, inc, seq, range(seq * 10, seq * 10 + 10))
    mixed = everything(store, inc)
    assert mixed["read:note:True"][0] == [float(x) for x in range(10, 90)]
    store.flush()
    assert everything(store, inc) == mixed


def test_a_fork_of_staged_points_sees_what_it_saw_across_hops_and_flushes(
    store: SqliteStore,
) -> None:
    a = create_plain_run(store, run_id="a", incarnation_id="p-a-1")
    commit(store, "p-a-1", 1, range(0, 10), run_id="a")  # staged when b forks
    b = store.create_run(
        project="p", run_id="b", experiment="", tags=[], description="", config={}, values={},
        incarnation_id="p-b-1", parent=a.incarnations[-1], fork_step=100.0, now=2.0,
    )  # fmt: skip
    commit(store, "p-a-1", 2, range(10, 20), run_id="a")  # after the fork: not b's
    commit(store, "p-b-1", 1, range(50, 55), run_id="b")
    c = store.create_run(
        project="p", run_id="c", experiment="", tags=[], description="", config={}, values={},
        incarnation_id="p-c-1", parent=b.incarnations[-1], fork_step=52.0, now=3.0,
    )  # fmt: skip
    commit(store, "p-c-1", 1, range(60, 62), run_id="c")
    views = {inc: everything(store, inc) for inc in ("p-a-1", "p-b-1", "p-c-1")}
    assert views["p-a-1"]["read:loss:False"][0] == [float(x) for x in range(20)]
    assert views["p-b-1"]["read:loss:False"][0] == [
        *map(float, range(10)),
        *map(float, range(50, 55)),
    ]
    assert views["p-c-1"]["read:loss:False"][0] == [
        *map(float, range(10)), 50.0, 51.0, 52.0, 60.0, 61.0
    ]  # fmt: skip
    assert c.incarnations[-1].snapshot_chunk is not None
    store.flush()
    # a's pieces were cut at b's snapshot: two chunks a series, the first at or below it.
    snap_b = b.incarnations[-1].snapshot_chunk
    assert snap_b is not None
    a_chunks = (
        store._conn()
        .execute(
            "SELECT c.chunk_id, c.n FROM chunks c JOIN series s USING (series_id)"
            " WHERE s.incarnation_id = 'p-a-1' AND s.name = 'loss' ORDER BY c.chunk_id"
        )
        .fetchall()
    )
    assert [n for _, n in a_chunks] == [10, 10] and a_chunks[0][0] <= snap_b < a_chunks[1][0]
    assert {inc: everything(store, inc) for inc in views} == views


def test_a_rewind_and_an_overwrite_generation_read_the_same_staged_and_flushed(
    store: SqliteStore,
) -> None:
    inc = create_plain_run(store).current_incarnation_id
    commit(store, inc, 1, range(0, 10))
    commit(store, inc, 2, range(10, 20))
    # An overwrite: a new generation of loss, from step 0 again, hides the older one.
    commit(store, inc, 3, range(0, 5), names=("loss",), text=False, new_generation=True)
    over = everything(store, inc)
    assert over["read:loss:False"][0] == [float(x) for x in range(5)]
    assert over["read:acc:False"][0] == [float(x) for x in range(20)]
    # A rewind to step 3: the new incarnation sees loss up to 3, then its own points.
    rewound = store.add_incarnation(
        project="p", run_id="r", incarnation_id="p-r-2", fork_step=3.0,
        origin=Origin.REWOUND, config={}, now=2.0,
    )  # fmt: skip
    commit(store, "p-r-2", 4, range(4, 8))
    views = {i: everything(store, i) for i in (inc, rewound.current_incarnation_id)}
    assert views["p-r-2"]["read:loss:False"][0] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert views["p-r-2"]["read:acc:False"][0] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    # The generation's first reserved ID decides which snapshots see it.
    created = (
        store._conn()
        .execute("SELECT created_chunk FROM series WHERE name = 'loss' AND generation = 1")
        .fetchone()[0]
    )
    assert created > 0
    store.flush()
    assert {i: everything(store, i) for i in views} == views


@pytest.mark.parametrize("seam", ["after the memtable copy", "inside the read snapshot"])
def test_a_flush_at_a_readers_seam_shows_every_point_once(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch, seam: str
) -> None:
    inc = create_plain_run(store).current_incarnation_id
    commit(store, inc, 1, range(0, 10))
    store.flush()
    commit(store, inc, 2, range(10, 20))
    commit(store, inc, 3, range(20, 30))
    flushed: list[bool] = []

    def flush_elsewhere() -> None:
        if not flushed:  # the first read only: later ones see it done
            t = threading.Thread(target=store.flush)
            t.start()
            t.join()
            flushed.append(True)

    if seam == "after the memtable copy":
        view = store._memtable.view

        def view_then_flush() -> Any:
            copied = view()
            flush_elsewhere()
            return copied

        monkeypatch.setattr(store._memtable, "view", view_then_flush)
    else:
        through = sqlite_module._flushed_through

        def through_then_flush(conn: sqlite3.Connection) -> int:
            found = through(conn)  # the snapshot has begun: the flush lands after it
            flush_elsewhere()
            return found

        monkeypatch.setattr(sqlite_module, "_flushed_through", through_then_flush)
    for i, read in enumerate(("floors", "series_keys", "read", "count", "summary")):
        flushed.clear()
        commit(store, inc, 10 + i, range(100 + 10 * i, 105 + 10 * i))  # staged again
        segments = store.segments(inc)
        assert store._memtable.pieces > 0
        if read == "floors":
            assert store.floors(segments)["f:loss"][0] == 104.0
        elif read == "series_keys":
            assert [k[0] for k in store.series_keys(segments)] == ["acc", "loss", "note"]
        elif read == "read":
            parts = list(store.read(segments, "loss", False, -INF, INF))
            steps = [x for p in parts for x in p.steps.tolist()]
            assert steps == sorted(set(steps)) and len(steps) == len(set(steps))
            assert set(range(30)) <= set(steps)
        elif read == "count":
            assert store.count(segments, "acc", False, -INF, INF) == 30 + 5 * 4
        else:
            (_, pieces) = store.read_summary_pieces(segments, [("loss", False)])[("loss", False)]
            assert sum(p[0] for p in pieces) == 30 + 5 * 5
        assert flushed and store._memtable.pieces == 0


def test_a_failed_flush_leaves_staged_rows_and_memtable_and_the_next_succeeds(
    store: SqliteStore,
) -> None:
    inc = create_plain_run(store).current_incarnation_id
    commit(store, inc, 1, range(0, 10))
    commit(store, inc, 2, range(10, 20))
    before = everything(store, inc)
    pieces = store._memtable.pieces
    # Fail the flush between its chunk insert and its staged delete (as a full disk would).
    with sqlite3.connect(store.path) as other:
        other.execute(
            "CREATE TRIGGER fail_flush BEFORE DELETE ON staged"
            " BEGIN SELECT RAISE(FAIL, 'disk full at the seam'); END"
        )
    with pytest.raises(sqlite3.IntegrityError, match="disk full at the seam"):
        store.flush()
    conn = store._conn()
    assert conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0  # rolled back
    assert staged_rows(store) == 2 and store._memtable.pieces == pieces
    assert conn.execute("SELECT flushed_through FROM staging").fetchone()[0] == 0
    assert everything(store, inc) == before
    with sqlite3.connect(store.path) as other:
        other.execute("DROP TRIGGER fail_flush")
    store.flush()
    assert staged_rows(store) == 0 and store._memtable.pieces == 0
    assert everything(store, inc) == before


def test_a_failed_commit_gives_back_its_reserved_ids(store: SqliteStore) -> None:
    inc = create_plain_run(store).current_incarnation_id
    commit(store, inc, 1, range(0, 10))
    reserved = store._next_chunk
    with sqlite3.connect(store.path) as other:
        other.execute(
            "CREATE TRIGGER fail_stage BEFORE INSERT ON staged"
            " BEGIN SELECT RAISE(FAIL, 'no room'); END"
        )
    with pytest.raises(sqlite3.IntegrityError):
        commit(store, inc, 2, range(10, 20))
    assert store._next_chunk == reserved and store._memtable.pieces == 3
    with sqlite3.connect(store.path) as other:
        other.execute("DROP TRIGGER fail_stage")
    commit(store, inc, 2, range(10, 20))
    assert everything(store, inc)["read:loss:False"][0] == [float(x) for x in range(20)]


def test_staged_rows_replay_on_open_and_ids_continue_above_them(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SqliteStore(path)
    store._flusher.stop()
    inc = create_plain_run(store).current_incarnation_id
    commit(store, inc, 1, range(0, 10))
    fork = store.create_run(
        project="p", run_id="f", experiment="", tags=[], description="", config={}, values={},
        incarnation_id="p-f-1", parent=store.get_incarnation(inc),
        fork_step=INF, now=2.0,
    )  # fmt: skip
    commit(store, inc, 2, range(10, 20))
    views = {i: everything(store, i) for i in (inc, fork.current_incarnation_id)}
    top = store._next_chunk
    # As a kill -9 leaves it: the staged rows, no flush (no close()).
    store._checkpointer.stop()
    for conn in store._connections:
        conn.close()
    store._owner_lock.close()  # the dead process's flock goes with it
    again = SqliteStore(path)
    try:
        again._flusher.stop()
        assert again._next_chunk == top and staged_rows(again) == 2
        assert {i: everything(again, i) for i in views} == views
        assert views["p-f-1"]["read:loss:False"][0] == [float(x) for x in range(10)]
        commit(again, inc, 3, range(20, 30))
        again.flush()
        assert everything(again, "p-f-1") == views["p-f-1"]
        assert everything(again, inc)["read:loss:False"][0] == [float(x) for x in range(30)]
    finally:
        again.close()


def test_an_old_file_migrates_and_reads_and_writes_on(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    store = SqliteStore(path)
    inc = create_plain_run(store).current_incarnation_id
    commit(store, inc, 1, range(0, 10))
    store.close()  # flushed: chunk rows only
    with sqlite3.connect(path) as conn:  # back to schema version 4, as before staging
        conn.execute("DROP TABLE staged")
        conn.execute("DROP TABLE staging")
        conn.execute("PRAGMA user_version = 4")
    store = SqliteStore(path)
    try:
        assert store._conn().execute("PRAGMA user_version").fetchone()[0] == 5
        assert everything(store, inc)["read:loss:False"][0] == [float(x) for x in range(10)]
        top = store._conn().execute("SELECT MAX(chunk_id) FROM chunks").fetchone()[0]
        assert store._next_chunk == top + 1
        commit(store, inc, 2, range(10, 20))
        store.flush()
        assert everything(store, inc)["read:acc:False"][0] == [float(x) for x in range(20)]
    finally:
        store.close()


def test_the_flusher_thread_flushes_a_quiet_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    try:
        inc = create_plain_run(store).current_incarnation_id
        commit(store, inc, 1, range(0, 10))
        for _ in range(600):  # bounded wait for the event (FLUSH_SECONDS after the commit)
            if store._memtable.pieces == 0:
                break
            threading.Event().wait(0.05)
        assert store._memtable.pieces == 0 and staged_rows(store) == 0
        assert everything(store, inc)["read:loss:False"][0] == [float(x) for x in range(10)]
    finally:
        store.close()


async def test_kill_9_with_staged_rows_loses_nothing_acknowledged(
    tmp_path: Path, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPSTREAM_FLUSH_SECONDS", "3600")  # nothing flushes before the kill
    svc = ServiceProcess(tmp_path / "data", redis_server.url, free_port()).start()
    try:
        async with grpc.aio.insecure_channel(svc.address) as ch:
            await create_run(runs_pb2_grpc.RunServiceStub(ch), "r1")
            s = Stream(ingest_pb2_grpc.IngestServiceStub(ch))
            await s.open("r1", writer_id="w")
            for b in range(20):
                ack = await s.send(
                    *(
                        fseries(
                            f"k{k}",
                            [float(b * 5 + i) for i in range(5)],
                            [float(k * 1000 + b * 5 + i) for i in range(5)],
                        )
                        for k in range(50)
                    )
                )
                assert ack.appended.accepted_count == 250
        svc.kill9()
        with sqlite3.connect(tmp_path / "data" / "stepstream.sqlite3") as conn:
            assert conn.execute("SELECT COUNT(*) FROM staged").fetchone()[0] > 0
            assert conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0
        monkeypatch.setenv("STEPSTREAM_FLUSH_SECONDS", "1")
        await asyncio.to_thread(svc.start)
        async with grpc.aio.insecure_channel(svc.address) as ch:
            runs = runs_pb2_grpc.RunServiceStub(ch)
            for k in (0, 17, 49):
                steps, values = await read_points(runs, "r1", f"k{k}")
                assert steps == [float(i) for i in range(100)]
                assert values == [float(k * 1000 + i) for i in range(100)]
    finally:
        svc.terminate()


def test_merged_chunks_match_joining_the_pieces_one_by_one() -> None:
    """The flush's array path against the plain rule: per series, its pieces in ID order,
    cut where a snapshot lies between two pieces, under the last piece's ID."""
    rng = np.random.default_rng(7)
    rows = []
    first = 1
    steps_of: dict[int, float] = {}
    for _ in range(6):
        entries = []
        for sid in rng.permutation([1, 2, 3, 4])[: rng.integers(1, 5)].tolist():
            n = int(rng.integers(1, 6))
            start = steps_of.get(sid, 0.0)
            s = start + np.arange(n, dtype=np.float64)
            steps_of[sid] = start + n
            values: Any = [f"v{x}" for x in s] if sid == 4 else rng.normal(size=n)
            entries.append((sid, ChunkWrite("", "", sid == 4, s, values, s * 10)))
        rows.append((first, memtable.encode_row(entries)))
        first += len(entries)
    pieces = [(sid, p) for row, body in rows for sid, p in memtable.decode_row(row, body)]
    for cuts in ([], [3, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]):
        got = {(r[0], r[1]): r for r in memtable.merged_chunks(rows, cuts)}
        want = {}
        for sid in (1, 2, 3, 4):
            runs: list[list[Any]] = []
            for p in sorted((p for s, p in pieces if s == sid), key=lambda p: p.chunk_id):
                if runs and not any(runs[-1][-1].chunk_id <= c < p.chunk_id for c in cuts):
                    runs[-1].append(p)
                else:
                    runs.append([p])
            for run in runs:
                want[(run[-1].chunk_id, sid)] = [x for p in run for x in points_of(
                    "x", sid == 4, p.points, -INF, INF
                ).steps.tolist()]  # fmt: skip
        assert set(got) == set(want)
        for key, row in got.items():
            points = points_of("x", key[1] == 4, (row[4], row[5], row[6], row[7]), -INF, INF)
            assert points is not None and points.steps.tolist() == want[key]
            assert points.timestamps.tolist() == [x * 10 for x in want[key]]


def test_a_long_part_goes_straight_to_chunk_rows_unless_its_series_has_staged_pieces(
    store: SqliteStore,
) -> None:
    inc = create_plain_run(store).current_incarnation_id
    long = memtable.DIRECT_POINTS
    commit(store, inc, 1, range(0, 2))  # short: staged
    assert staged_rows(store) == 1
    before = everything(store, inc)
    # Long, and its series have staged pieces: they are flushed first, then it is chunk rows.
    commit(store, inc, 2, range(2, 2 + long))
    assert staged_rows(store) == 0 and store._memtable.pieces == 0
    chunks = store._conn().execute("SELECT series_id, n FROM chunks ORDER BY chunk_id")
    assert [n for _, n in chunks.fetchall()] == [2, 2, 2, long, long, long]
    assert everything(store, inc)["read:loss:False"][0][:2] == before["read:loss:False"][0]
    # A long part whose series' IDs are not cached (as after a restart) is staged: the
    # transaction finds the staged pieces itself.
    commit(store, inc, 3, range(2 + long, 4 + long))  # short: staged
    store._series_ids = type(store._series_ids)(10)
    commit(store, inc, 4, range(4 + long, 4 + 2 * long))
    assert staged_rows(store) == 2
    mixed = everything(store, inc)
    store.flush()
    assert everything(store, inc) == mixed
    commit(store, inc, 5, range(4 + 2 * long, 4 + 3 * long))  # long, nothing staged
    assert staged_rows(store) == 0
    commit(store, inc, 6, range(4 + 3 * long, 6 + 3 * long))  # short again: staged, above
    assert staged_rows(store) == 1
    view = everything(store, inc)
    assert view["read:loss:False"][0] == [float(x) for x in range(6 + 3 * long)]
    assert view["floors"]["f:loss"][0] == 5 + 3 * long
    store.flush()
    assert everything(store, inc) == view


def test_the_token_cli_beside_a_live_store_only_migrates(store: SqliteStore) -> None:
    """`stepstream tokens` on a live SQLite file neither replays nor flushes its staged rows:
    the live store's flush then writes every point once."""
    from stepstream_server.auth.cli import open_tokens

    inc = create_plain_run(store).current_incarnation_id
    commit(store, inc, 1, range(0, 5))
    commit(store, inc, 2, range(5, 10))
    open_tokens(f"sqlite://{store.path}")
    assert staged_rows(store) == 2  # untouched
    commit(store, inc, 3, range(10, 15))
    store.flush()
    assert staged_rows(store) == 0
    assert everything(store, inc)["read:loss:False"][0] == [float(x) for x in range(15)]


def test_a_flush_refuses_rows_another_process_flushed(store: SqliteStore) -> None:
    inc = create_plain_run(store).current_incarnation_id
    commit(store, inc, 1, range(0, 5))
    commit(store, inc, 2, range(5, 10))
    rows = [r for r, _ in store._memtable.take()]
    # As another process's flush of the first row leaves the file.
    with sqlite3.connect(store.path) as other:
        other.execute("DELETE FROM staged WHERE first_chunk = ?", (rows[0],))
        other.execute("UPDATE staging SET flushed_through = ?", (rows[0],))
    with pytest.raises(sqlite_module.StoreUnavailable) as caught:
        store.flush()
    assert caught.value.reason == "STORE_UNAVAILABLE"
    assert caught.value.message == (
        f"the store cannot take this now (staged rows {rows[0]}..{rows[1]} were flushed by"
        f" another process (flushed_through {rows[0]}, 1 of 2 rows still staged);"
        " not flushing them again); retry later"
    )
    conn = store._conn()
    assert conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0  # nothing written
    assert staged_rows(store) == 1


def test_a_second_owner_of_one_file_is_refused(store: SqliteStore) -> None:
    with pytest.raises(sqlite_module.StoreLocked) as caught:
        SqliteStore(store.path)
    assert str(caught.value) == (
        f"the SQLite store {store.path} is already open in another process"
        f" (it holds {store.path}.lock); one service owns a SQLite file"
    )
    sqlite_module.migrate(store.path)  # the migrate-only path takes no lock
    store.close()
    SqliteStore(store.path).close()  # released on close


def test_commits_are_refused_over_the_hard_bound_until_a_flush_succeeds(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memtable, "FLUSH_POINTS", 10)  # hard bound: 40 points
    inc = create_plain_run(store).current_incarnation_id
    commit(store, inc, 1, range(0, 10))  # 30 points (three series)
    commit(store, inc, 2, range(10, 20))  # 60: over the bound
    with sqlite3.connect(store.path) as other:
        other.execute(
            "CREATE TRIGGER fail_flush BEFORE DELETE ON staged"
            " BEGIN SELECT RAISE(FAIL, 'disk full at the seam'); END"
        )
    refusal = (
        "the store cannot take this now (the staged points are over their bound"
        " (60 points, 6 pieces) until a flush succeeds); retry later"
    )
    for _ in range(2):
        with pytest.raises(sqlite_module.StoreUnavailable) as caught:
            commit(store, inc, 3, range(20, 30))
        assert caught.value.reason == "STORE_UNAVAILABLE" and caught.value.message == refusal
        with pytest.raises(sqlite3.IntegrityError, match="disk full at the seam"):
            store.flush()
    with sqlite3.connect(store.path) as other:
        other.execute("DROP TRIGGER fail_flush")
    store.flush()
    commit(store, inc, 3, range(20, 30))  # accepted again
    store.flush()
    assert everything(store, inc)["read:loss:False"][0] == [float(x) for x in range(30)]


def test_a_second_serve_of_one_sqlite_file_refuses_to_start(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    """Two `serve` with different --data-dir and the same --store sqlite:///file: the second
    exits 1 with the owner lock's message (docs/staging.md, One owner)."""
    import subprocess
    import sys

    db = tmp_path / "shared.sqlite3"
    store_args = ["--store", f"sqlite://{db}"]
    first = ServiceProcess(tmp_path / "a", redis_server.url, free_port(), extra=store_args)
    first.start()
    try:
        second = subprocess.run(
            [
                sys.executable, "-m", "stepstream_server.cli", "serve",
                "--address", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "b"),
                "--redis-url", redis_server.url, *store_args,
            ],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1] == (
            f"stepstream: the SQLite store {db} is already open in another process"
            f" (it holds {db}.lock); one service owns a SQLite file"
        )
    finally:
        first.terminate()
