"""PostgresStore on a real PostgreSQL, called directly (no service): migrations, runs, commits
and their refusals, fences, forks and rewinds, and the same answers as SqliteStore."""

from __future__ import annotations

import dataclasses
import math
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg
import pytest
from pg import create_database, drop_database
from stepstream_server.errors import ServiceError
from stepstream_server.model import (
    ChunkWrite,
    Origin,
    RunRecord,
    RunState,
    SeriesPoints,
    WriterCommit,
    value_token,
)
from stepstream_server.store.base import RunCommit, Store
from stepstream_server.store.codec import ACK_RETENTION
from stepstream_server.store.postgres import MIGRATIONS, PostgresStore
from stepstream_server.store.schema import SchemaTooNew
from stepstream_server.store.sqlite import SqliteStore

INF = math.inf


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(scope="session")
def store(pg_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(pg_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def project() -> str:
    """Every test its own project in the shared database."""
    return "p" + secrets.token_hex(4)


def make_run(
    store: Store,
    project: str,
    run_id: str,
    *,
    parent: str | None = None,
    fork_step: float | None = None,
    experiment: str = "",
    config: dict[str, Any] | None = None,
) -> RunRecord:
    parent_inc = None if parent is None else store.get_incarnation(parent)
    assert parent is None or parent_inc is not None
    return store.create_run(
        project=project,
        run_id=run_id,
        experiment=experiment,
        tags=["t2", "t1", "t2"],
        description=f"run {run_id}",
        config=config or {"lr": 0.1},
        values={"v": 1},
        incarnation_id=f"{project}-{run_id}-1",
        parent=parent_inc,
        fork_step=fork_step,
        now=100.0,
    )


def floats(
    inc: str,
    name: str,
    steps: list[float],
    values: list[float] | None = None,
    *,
    new_generation: bool = False,
) -> ChunkWrite:
    steps_a = np.array(steps, dtype=np.float64)
    vals = steps_a * 10 if values is None else np.array(values, dtype=np.float64)
    return ChunkWrite(inc, name, False, steps_a, vals, steps_a + 1000, new_generation)


def strings(inc: str, name: str, steps: list[float], values: list[str]) -> ChunkWrite:
    steps_a = np.array(steps, dtype=np.float64)
    return ChunkWrite(inc, name, True, steps_a, values, steps_a + 1000)


def part(
    project: str,
    run_id: str,
    epoch: int,
    chunks: list[ChunkWrite],
    writer: str = "w",
    seqs: tuple[int, ...] = (),
) -> RunCommit:
    commits = [WriterCommit(project, run_id, writer, s, f'{{"seq": {s}}}') for s in seqs]
    return RunCommit(project, run_id, epoch, chunks, commits)


def read(
    store: Store,
    inc: str,
    name: str,
    is_string: bool = False,
    lo: float = -INF,
    hi: float = INF,
    generation: int | None = None,
) -> tuple[list[float], list[Any]]:
    segments = store.segments(inc)
    got = list(store.read(segments, name, is_string, lo, hi, generation))
    return _flatten(got)


def _flatten(got: list[SeriesPoints]) -> tuple[list[float], list[Any]]:
    steps = [float(s) for p in got for s in p.steps]
    values: list[Any] = [v if isinstance(v, str) else float(v) for p in got for v in p.values]
    return steps, values


def bits(values: list[Any]) -> list[str]:
    return [value_token(v) for v in values]


# -- schema ---------------------------------------------------------------------------------


def _version_rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()


def test_migrates_an_empty_database_and_reopens_it(fresh_pg_url: str) -> None:
    PostgresStore(fresh_pg_url).close()
    assert _version_rows(fresh_pg_url) == [(n,) for n in range(1, len(MIGRATIONS) + 1)]
    with psycopg.connect(fresh_pg_url) as conn:
        tables = {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    assert {"runs", "incarnations", "series", "chunks", "writers", "acks"} <= tables
    store = PostgresStore(fresh_pg_url)  # already migrated: nothing to do
    try:
        assert store.list_projects() == []
    finally:
        store.close()
    assert _version_rows(fresh_pg_url) == [(n,) for n in range(1, len(MIGRATIONS) + 1)]


def test_concurrent_migrations_do_not_race(fresh_pg_url: str) -> None:
    starters = 6
    barrier = threading.Barrier(starters)
    failures: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            PostgresStore(fresh_pg_url).close()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert _version_rows(fresh_pg_url) == [(n,) for n in range(1, len(MIGRATIONS) + 1)]


def test_a_newer_schema_is_refused(fresh_pg_url: str) -> None:
    PostgresStore(fresh_pg_url).close()
    with psycopg.connect(fresh_pg_url) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(SchemaTooNew) as caught:
        PostgresStore(fresh_pg_url)
    assert caught.value.found == 99 and caught.value.known == len(MIGRATIONS)
    name = fresh_pg_url.rsplit("/", 1)[1]
    assert str(caught.value) == (
        f"the store at postgresql://postgres@127.0.0.1:5432/{name} has schema version 99, but"
        f" this stepstream knows only up to version {len(MIGRATIONS)}: upgrade stepstream (or"
        " point it at another store)"
    )


# -- runs -----------------------------------------------------------------------------------


def test_runs_create_get_list_and_experiment_head(store: PostgresStore, project: str) -> None:
    # Created out of key order: listing follows creation, not the primary key.
    for run_id in ("b", "a", "c"):
        make_run(store, project, run_id, experiment="exp" if run_id != "c" else "")
    record = store.get_run(project, "b")
    assert record is not None
    assert (record.tags, record.config, record.values, record.state) == (
        ("t1", "t2"),
        {"lr": 0.1},
        {"v": 1},
        RunState.RUNNING,
    )
    assert (record.description, record.failure_reason, record.fence) == ("run b", "", 0)
    assert [i.incarnation_id for i in record.incarnations] == [f"{project}-b-1"]
    assert record.incarnations[0].origin is Origin.CREATED
    assert not record.experiment_head
    assert [r.run_id for r in store.list_runs(project, "")] == ["b", "a", "c"]
    assert [(r.run_id, r.experiment_head) for r in store.list_runs(project, "exp")] == [
        ("b", False),
        ("a", True),
    ]
    head = store.experiment_head(project, "exp")
    assert head is not None and head.run_id == "a" and head.experiment_head
    assert store.experiment_head(project, "nothing") is None
    assert store.get_run(project, "missing") is None
    assert project in store.list_projects()

    with pytest.raises(ServiceError) as dup:
        make_run(store, project, "a")
    assert (dup.value.code, dup.value.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "RUN_ALREADY_EXISTS",
    )
    assert dup.value.message == f"run 'a' already exists in project {project!r}"
    assert dup.value.metadata == {"project": project, "run_id": "a"}


def test_update_run_and_its_fence(store: PostgresStore, project: str) -> None:
    make_run(store, project, "r")
    # Text PostgreSQL could not hold as such (NUL) and JSON it could not hold as JSONB (NaN).
    updated = store.update_run(
        project,
        "r",
        now=200.0,
        tags=["x"],
        config={"nan": math.nan},
        description="a\x00b",
        values={"w": [1, 2]},
    )
    assert updated.tags == ("x",) and math.isnan(updated.config["nan"])
    assert (updated.description, updated.values, updated.updated_at, updated.fence) == (
        "a\x00b",
        {"w": [1, 2]},
        200.0,
        0,
    )
    failed = store.update_run(
        project, "r", now=201.0, state=RunState.FAILED, failure_reason="oom\x00"
    )
    assert (failed.state, failed.failure_reason, failed.fence) == (RunState.FAILED, "oom\x00", 1)
    with pytest.raises(ServiceError) as missing:
        store.update_run(project, "nope", now=1.0, description="x")
    assert missing.value.reason == "RUN_NOT_FOUND"


def test_raise_and_advance_fence(store: PostgresStore, project: str) -> None:
    make_run(store, project, "r")
    assert store.raise_fence(project, "r", 5) == 5
    assert store.raise_fence(project, "r", 3) == 5  # never lowered
    assert store.advance_fence(project, "r") == 6
    assert store.raise_fence(project, "r", 6) == 6
    record = store.get_run(project, "r")
    assert record is not None and record.fence == 6
    for call in (
        lambda: store.raise_fence(project, "nope", 1),
        lambda: store.advance_fence(project, "nope"),
    ):
        with pytest.raises(ServiceError) as caught:
            call()
        assert (caught.value.code, caught.value.reason) == (
            grpc.StatusCode.NOT_FOUND,
            "RUN_NOT_FOUND",
        )


def test_fence_and_fork_wait_for_a_commit_holding_the_run(
    store: PostgresStore, pg_url: str, project: str
) -> None:
    parent = make_run(store, project, "r")
    with psycopg.connect(pg_url) as other:
        # What a commit in flight holds: the run row, shared.
        other.execute(
            "SELECT 1 FROM runs WHERE project = %s AND run_id = %s FOR SHARE", (project, "r")
        )
        results: list[Any] = []
        calls = [
            lambda: results.append(store.raise_fence(project, "r", 3)),
            lambda: results.append(
                make_run(
                    store, project, "child", parent=parent.current_incarnation_id, fork_step=1.0
                )
            ),
        ]
        threads = [threading.Thread(target=c) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(0.5)
        assert results == [] and all(t.is_alive() for t in threads)
        other.commit()
        for t in threads:
            t.join(10)
    assert len(results) == 2 and 3 in results


# -- commits and reads ----------------------------------------------------------------------


def test_commit_and_read_back(store: PostgresStore, project: str) -> None:
    inc = make_run(store, project, "r").current_incarnation_id
    special = [math.nan, INF, -INF, -0.0, 5e-324, 1.5]
    texts = ["", "plain", "ünïcødé ✓", "a\x00b", "\ud800 lone surrogate", "x" * 5000]
    refused = store.commit(
        [
            part(
                project,
                "r",
                0,
                [
                    floats(inc, "loss", [1, 2, 3, 4, 5, 6], special),
                    strings(inc, "loss", [1, 2, 3, 4, 5, 6], texts),
                ],
                seqs=(1, 2),
            )
        ]
    )
    assert refused == {}
    assert store.commit([part(project, "r", 0, [floats(inc, "loss", [7, 8])], seqs=(3,))]) == {}
    steps, values = read(store, inc, "loss")
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]
    assert bits(values) == bits([*special, 70.0, 80.0])
    assert read(store, inc, "loss", True) == ([1, 2, 3, 4, 5, 6], texts)
    assert read(store, inc, "loss", lo=2.5, hi=7) == ([3, 4, 5, 6, 7], values[2:7])
    assert read(store, inc, "nothing") == ([], [])
    segments = store.segments(inc)
    got = list(store.read(segments, "loss", False, -INF, INF))
    assert [list(p.timestamps) for p in got] == [[1001, 1002, 1003, 1004, 1005, 1006], [1007, 1008]]
    assert store.series_keys(segments) == [("loss", False, 0), ("loss", True, 0)]
    assert store.floors(segments) == {
        "f:loss": (8.0, value_token(80.0)),
        "s:loss": (6.0, value_token("x" * 5000)),
    }
    assert store.writer_sequence(project, "r", "w") == 3
    assert store.writer_sequence(project, "r", "other") == 0
    assert store.writer_outcome(project, "r", "w", 2) == '{"seq": 2}'
    assert store.writer_outcome(project, "r", "w", 4) is None


def test_overwrite_starts_a_generation(store: PostgresStore, project: str) -> None:
    inc = make_run(store, project, "r").current_incarnation_id
    store.commit([part(project, "r", 0, [floats(inc, "loss", [1, 2, 3])])])
    # One commit: an overwrite, then more points of the new generation.
    store.commit(
        [
            part(
                project,
                "r",
                0,
                [
                    floats(inc, "loss", [1, 2], [7, 8], new_generation=True),
                    floats(inc, "loss", [3]),
                ],
            )
        ]
    )
    assert read(store, inc, "loss") == ([1, 2, 3], [7, 8, 30])
    assert read(store, inc, "loss", generation=0) == ([1, 2, 3], [10, 20, 30])
    assert read(store, inc, "loss", generation=1) == ([1, 2, 3], [7, 8, 30])
    assert store.series_keys(store.segments(inc)) == [("loss", False, 1)]


def test_refused_by_fence_and_missing_run_write_nothing(store: PostgresStore, project: str) -> None:
    a = make_run(store, project, "a").current_incarnation_id
    b = make_run(store, project, "b").current_incarnation_id
    store.raise_fence(project, "a", 4)
    refused = store.commit(
        [
            part(project, "a", 3, [floats(a, "loss", [1])], seqs=(1,)),
            part(project, "b", 0, [floats(b, "loss", [1])], seqs=(1,)),
            part(project, "gone", 9, [floats(b, "loss", [2])], seqs=(1,)),
        ]
    )
    assert refused == {(project, "a"): 4, (project, "gone"): -1}
    assert read(store, a, "loss") == ([], []) and store.series_keys(store.segments(a)) == []
    assert store.writer_sequence(project, "a", "w") == 0
    assert store.writer_outcome(project, "a", "w", 1) is None
    assert read(store, b, "loss") == ([1], [10])
    assert store.writer_sequence(project, "b", "w") == 1
    # At the fence itself a part commits.
    assert store.commit([part(project, "a", 4, [floats(a, "loss", [1])], seqs=(1,))]) == {}
    assert read(store, a, "loss") == ([1], [10])


def test_refused_by_writer_sequence(store: PostgresStore, project: str) -> None:
    a = make_run(store, project, "a").current_incarnation_id
    b = make_run(store, project, "b").current_incarnation_id
    assert store.commit([part(project, "a", 0, [floats(a, "loss", [1])], seqs=(1, 2))]) == {}
    refused = store.commit(
        [
            part(project, "a", 0, [floats(a, "loss", [2])], seqs=(2, 3)),  # 2 is committed
            part(project, "b", 0, [floats(b, "loss", [5])], writer="w2", seqs=(1,)),
        ]
    )
    assert refused == {(project, "a"): 0}
    assert read(store, a, "loss") == ([1], [10])
    assert store.writer_sequence(project, "a", "w") == 2
    assert store.writer_outcome(project, "a", "w", 3) is None
    assert read(store, b, "loss") == ([5], [50])
    assert store.commit([part(project, "a", 0, [floats(a, "loss", [2])], seqs=(3,))]) == {}
    assert store.writer_sequence(project, "a", "w") == 3


def test_acknowledgements_are_trimmed(store: PostgresStore, project: str) -> None:
    inc = make_run(store, project, "r").current_incarnation_id
    last = ACK_RETENTION + 5
    store.commit(
        [part(project, "r", 0, [floats(inc, "loss", [1])], seqs=tuple(range(1, last + 1)))]
    )
    assert store.writer_outcome(project, "r", "w", 5) is None
    assert store.writer_outcome(project, "r", "w", 6) == '{"seq": 6}'
    assert store.writer_sequence(project, "r", "w") == last


# -- forks and rewinds ----------------------------------------------------------------------


def test_fork_sees_a_snapshot_of_its_parent(store: PostgresStore, project: str) -> None:
    g = make_run(store, project, "g").current_incarnation_id
    store.commit([part(project, "g", 0, [floats(g, "loss", [1, 2, 3])])])
    p = make_run(store, project, "p", parent=g, fork_step=10).current_incarnation_id
    # Committed to the parent after the fork, below the fork step: invisible to the child.
    store.commit([part(project, "g", 0, [floats(g, "loss", [4, 5]), floats(g, "late", [1])])])
    store.commit([part(project, "g", 0, [floats(g, "loss", [1], [-1], new_generation=True)])])
    assert read(store, p, "loss") == ([1, 2, 3], [10, 20, 30])
    assert store.series_keys(store.segments(p)) == [("loss", False, 0)]
    assert read(store, g, "loss") == ([1], [-1])
    # A grandchild through a parent without points of its own still sees the grandparent.
    c = make_run(store, project, "c", parent=p, fork_step=2).current_incarnation_id
    assert read(store, c, "loss") == ([1, 2], [10, 20])
    store.commit([part(project, "c", 0, [floats(c, "loss", [3])])])
    assert read(store, c, "loss") == ([1, 2, 3], [10, 20, 30])
    assert store.floors(store.segments(c)) == {"f:loss": (3.0, value_token(30.0))}
    assert store.floors(store.segments(p)) == {"f:loss": (3.0, value_token(30.0))}
    child = store.get_run(project, "c")
    assert child is not None
    inc = child.incarnations[0]
    assert (inc.origin, inc.parent_incarnation_id, inc.parent_run_id, inc.fork_step) == (
        Origin.FORKED,
        p,
        "p",
        2.0,
    )


def test_rewind_raises_the_fence_and_refuses_older_commits(
    store: PostgresStore, project: str
) -> None:
    first = make_run(store, project, "r", config={"lr": 0.1, "keep": 1}).current_incarnation_id
    store.commit([part(project, "r", 0, [floats(first, "loss", [1, 2, 3, 4])], seqs=(1,))])
    store.update_run(project, "r", now=150.0, state=RunState.STOPPED)
    record = store.add_incarnation(
        project=project,
        run_id="r",
        incarnation_id="rw2",
        fork_step=2.0,
        origin=Origin.REWOUND,
        config={"lr": 0.2},
        now=160.0,
    )
    assert (record.current_incarnation_id, record.state, record.fence) == (
        "rw2",
        RunState.RUNNING,
        2,
    )
    assert record.config == {"lr": 0.2, "keep": 1}
    old, new = record.incarnations
    assert old.archived and not new.archived
    assert (new.parent_incarnation_id, new.fork_step, new.origin) == (first, 2.0, Origin.REWOUND)
    assert read(store, "rw2", "loss") == ([1, 2], [10, 20])
    # Judged before the rewind: refused, nothing written.
    refused = store.commit([part(project, "r", 1, [floats(first, "loss", [5])], seqs=(2,))])
    assert refused == {(project, "r"): 2}
    assert read(store, first, "loss")[0] == [1, 2, 3, 4]
    assert store.commit([part(project, "r", 2, [floats("rw2", "loss", [3])], seqs=(2,))]) == {}
    assert read(store, "rw2", "loss") == ([1, 2, 3], [10, 20, 30])
    again = store.add_incarnation(
        project=project,
        run_id="r",
        incarnation_id="rw3",
        fork_step=1.0,
        origin=Origin.REWOUND,
        config={},
        now=170.0,
    )
    assert again.fence == 3 and again.incarnations[1].archived
    assert read(store, "rw3", "loss") == ([1], [10])
    with pytest.raises(ServiceError) as missing:
        store.add_incarnation(
            project=project,
            run_id="nope",
            incarnation_id="x",
            fork_step=1.0,
            origin=Origin.REWOUND,
            config={},
            now=1.0,
        )
    assert missing.value.reason == "RUN_NOT_FOUND"


def test_concurrent_commits_and_reads(store: PostgresStore, project: str) -> None:
    runs = [make_run(store, project, f"r{i}").current_incarnation_id for i in range(4)]
    failures: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for seq in range(1, 21):
                parts = [part(project, f"r{i}", 0, [floats(runs[i], "x", [seq])], seqs=(seq,))]
                assert store.commit(parts) == {}
                read(store, runs[(i + 1) % 4], "x")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    for inc in runs:
        assert read(store, inc, "x")[0] == [float(s) for s in range(1, 21)]


# -- the same answers as SQLite -------------------------------------------------------------


def _scenario(store: Store, project: str) -> dict[str, Any]:
    """One history played on a store; everything it answers, minus chunk IDs (which differ
    between engines by design)."""
    out: dict[str, Any] = {}
    a = make_run(store, project, "a", experiment="e").current_incarnation_id
    c1 = [
        floats(a, "loss", [1, 2, 3, 4, 5], [0.5, math.nan, INF, -0.0, 2]),
        strings(a, "note", [1, 3], ["x", "ÿ\x00"]),
    ]
    out["c1"] = store.commit([part(project, "a", 0, c1, seqs=(1, 2))])
    out["c2"] = store.commit([part(project, "a", 0, [floats(a, "loss", [6, 7, 8])], seqs=(3,))])
    b = make_run(store, project, "b", parent=a, fork_step=4, experiment="e").current_incarnation_id
    out["c3"] = store.commit(
        [
            part(project, "a", 0, [floats(a, "loss", [9, 10])], seqs=(4,)),
            part(
                project,
                "b",
                0,
                [floats(b, "loss", [5, 6]), floats(b, "acc", [1, 2])],
                writer="wb",
                seqs=(1,),
            ),
        ]
    )
    out["c4"] = store.commit(
        [part(project, "a", 0, [floats(a, "loss", [1, 2], [9, 9], new_generation=True)], seqs=(5,))]
    )
    out["c5"] = store.commit([part(project, "a", 0, [floats(a, "x", [1])], seqs=(5,))])
    out["stop"] = store.update_run(project, "a", now=120.0, state=RunState.STOPPED)
    a2 = "a-rewound"
    out["rewind"] = store.add_incarnation(
        project=project,
        run_id="a",
        incarnation_id=a2,
        fork_step=7.0,
        origin=Origin.REWOUND,
        config={"new": True},
        now=130.0,
    )
    out["c6"] = store.commit([part(project, "a", 1, [floats(a2, "loss", [8])], seqs=(6,))])
    out["c7"] = store.commit([part(project, "a", 2, [floats(a2, "loss", [8])], seqs=(6,))])
    c = make_run(store, project, "c", parent=b, fork_step=100).current_incarnation_id
    d = make_run(store, project, "d", parent=c, fork_step=5.5).current_incarnation_id
    out["c8"] = store.commit([part(project, "gone", 0, [], seqs=(1,))])
    for inc in (a, a2, b, c, d):
        segments = store.segments(inc)
        out[inc, "segments"] = [(s.incarnation_id, s.step_cap) for s in segments]
        out[inc, "keys"] = store.series_keys(segments)
        out[inc, "floors"] = store.floors(segments)
        for name, is_string, generation in out[inc, "keys"]:
            for g in {None, generation, 0}:
                got = list(store.read(segments, name, is_string, -INF, INF, g))
                steps, values = _flatten(got)
                ts = [float(t) for p in got for t in p.timestamps]
                out[inc, name, is_string, g] = (steps, bits(values), ts)
            steps, values = _flatten(list(store.read(segments, name, is_string, 2, 5.5)))
            out[inc, name, is_string, "part"] = (steps, bits(values))
    out["runs"] = store.list_runs(project, "")
    out["head"] = store.experiment_head(project, "e")
    out["writers"] = [
        (store.writer_sequence(project, r, w), store.writer_outcome(project, r, w, 3))
        for r in "ab"
        for w in ("w", "wb")
    ]
    for key, value in list(out.items()):
        out[key] = _without_chunk_ids(value)
    return out


def _without_chunk_ids(value: Any) -> Any:
    if isinstance(value, list):
        return [_without_chunk_ids(v) for v in value]
    if isinstance(value, RunRecord):
        incs = tuple(dataclasses.replace(i, snapshot_chunk=None) for i in value.incarnations)
        return dataclasses.replace(value, incarnations=incs, config=repr(value.config))
    return value


def test_same_answers_as_sqlite(store: PostgresStore, project: str, tmp_path: Path) -> None:
    sqlite = SqliteStore(tmp_path / "store.db")
    try:
        expected = _scenario(sqlite, project)
    finally:
        sqlite.close()
    got = _scenario(store, project)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key


def test_two_replicas_one_writer_and_one_new_series(pg_url: str, project: str) -> None:
    replicas = [PostgresStore(pg_url), PostgresStore(pg_url)]
    try:
        inc = make_run(replicas[0], project, "r").current_incarnation_id
        barrier = threading.Barrier(2)
        results: list[Any] = [None, None]

        def commit(i: int, parts: list[RunCommit]) -> None:
            barrier.wait()
            try:
                results[i] = replicas[i].commit(parts)
            except BaseException as exc:
                results[i] = exc

        def both(parts: list[list[RunCommit]]) -> list[Any]:
            threads = [threading.Thread(target=commit, args=(i, parts[i])) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            return list(results)

        # The same batch of one writer applied on both at once: exactly one lands.
        same = [part(project, "r", 0, [floats(inc, "loss", [1])], seqs=(1,))]
        assert sorted(both([same, same]), key=len) == [{}, {(project, "r"): 0}]
        assert read(replicas[1], inc, "loss") == ([1], [10])
        # Two writers creating one new series at once: one series, both chunks.
        got = both(
            [
                [part(project, "r", 0, [floats(inc, "new", [1])], writer="a", seqs=(1,))],
                [part(project, "r", 0, [floats(inc, "new", [2])], writer="b", seqs=(1,))],
            ]
        )
        assert got == [{}, {}]
        assert sorted(read(replicas[0], inc, "new")[0]) == [1, 2]
        assert replicas[0].series_keys(replicas[0].segments(inc)) == [
            ("loss", False, 0),
            ("new", False, 0),
        ]
    finally:
        for r in replicas:
            r.close()
