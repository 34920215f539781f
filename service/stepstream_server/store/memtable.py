"""The SQLite store's staged points (docs/staging.md): how a staged row's body is laid out, the
memtable that serves its pieces until a flush rewrites them as chunks, how a flush cuts and
encodes them, and the thread that flushes.

A piece is one series' points from one staged row, under the chunk ID the row reserved for it;
its columns are the bytes a chunk row would hold, so the read paths treat it as one more chunk.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from ..model import ChunkWrite
from .background import OwnedThread
from .codec import chunk_rows, decode_values, encode_values

log = logging.getLogger(__name__)

# A flush is due when the memtable holds this many points or pieces, or its oldest row is this
# old: a flush writes one chunk per series, so it pays the per-series index cost once per flush.
FLUSH_POINTS = 500_000
FLUSH_PIECES = 50_000
# Past this multiple of the flush thresholds a commit is refused (StoreUnavailable) until a
# flush succeeds: the memtable's hard bound (docs/staging.md).
HARD_BOUND = 4
# STEPSTREAM_FLUSH_SECONDS: for tests that need rows to stay staged (kill -9 with staged rows).
FLUSH_SECONDS = float(os.environ.get("STEPSTREAM_FLUSH_SECONDS", "1.0"))
# A part with at least this many points per series on average is written as chunk rows at
# once (when none of its series has a staged piece): its rows' own cost is small beside its
# points, and staging would write them twice.
DIRECT_POINTS = 16


def is_long(chunks: Sequence[ChunkWrite]) -> bool:
    """Whether a part's chunks average DIRECT_POINTS points or more."""
    return sum(len(c.steps) for c in chunks) >= DIRECT_POINTS * len(chunks)


# After a failed flush (a full disk), the next try waits this long.
RETRY_SECONDS = 0.5


class Piece(NamedTuple):
    """One series' points of one staged row; `steps`, `vals`, `ts` as a chunk row holds them."""

    chunk_id: int
    row: int
    n: int
    min_step: float
    max_step: float
    steps: bytes
    vals: bytes
    ts: bytes
    is_string: bool

    @property
    def points(self) -> tuple[int, bytes, bytes, bytes]:
        """(n, steps, vals, ts): the columns `codec.points_of` reads."""
        return (self.n, self.steps, self.vals, self.ts)


# -- a staged row's body ---------------------------------------------------------------------
#
# int64 k, then int64 arrays of k series IDs, point counts, string flags (0/1) and value-column
# lengths; then every piece's steps (float64), then every piece's timestamps (float64), then the
# float pieces' values (float64), then the string pieces' values columns
# (codec.encode_values), each in piece order: a flush reads a row's float points as arrays.


def encode_row(entries: Sequence[tuple[int, ChunkWrite]]) -> bytes:
    """The body of a staged row holding these (series_id, points) pieces, in order."""
    floats = [c.values for _, c in entries if not c.is_string]
    strings = [encode_values(c.values) for _, c in entries if c.is_string]
    lengths = iter(len(v) for v in strings)
    header = np.array(
        [
            len(entries),
            *(sid for sid, _ in entries),
            *(len(c.steps) for _, c in entries),
            *(int(c.is_string) for _, c in entries),
            *(next(lengths) if c.is_string else 8 * len(c.steps) for _, c in entries),
        ],
        dtype=np.int64,
    )
    steps = np.concatenate([c.steps for _, c in entries]).astype(np.float64, copy=False)
    ts = np.concatenate([c.timestamps for _, c in entries]).astype(np.float64, copy=False)
    values = np.concatenate(floats).astype(np.float64, copy=False) if floats else _EMPTY
    return b"".join([header.tobytes(), steps.tobytes(), ts.tobytes(), values.tobytes(), *strings])


_EMPTY = np.empty(0, dtype=np.float64)


class Columns(NamedTuple):
    """A staged row's body as arrays (views of it)."""

    first_chunk: int
    sids: np.ndarray[Any, np.dtype[np.int64]]
    ns: np.ndarray[Any, np.dtype[np.int64]]
    flags: np.ndarray[Any, np.dtype[np.int64]]
    vlens: np.ndarray[Any, np.dtype[np.int64]]
    steps: np.ndarray[Any, np.dtype[np.float64]]
    ts: np.ndarray[Any, np.dtype[np.float64]]
    floats: np.ndarray[Any, np.dtype[np.float64]]  # the float pieces' values
    strings_at: int  # where the string pieces' values columns begin


def columns(first_chunk: int, body: bytes) -> Columns:
    k = int(np.frombuffer(body, dtype=np.int64, count=1)[0])
    head = np.frombuffer(body, dtype=np.int64, count=1 + 4 * k)
    sids, ns, flags, vlens = (head[1 + i * k : 1 + (i + 1) * k] for i in range(4))
    total = int(ns.sum())
    float_points = int(ns[flags == 0].sum())
    at = 8 * (1 + 4 * k)
    steps = np.frombuffer(body, dtype=np.float64, count=total, offset=at)
    ts = np.frombuffer(body, dtype=np.float64, count=total, offset=at + 8 * total)
    floats = np.frombuffer(body, dtype=np.float64, count=float_points, offset=at + 16 * total)
    strings_at = at + 16 * total + 8 * float_points
    return Columns(first_chunk, sids, ns, flags, vlens, steps, ts, floats, strings_at)


def decode_row(first_chunk: int, body: bytes) -> list[tuple[int, Piece]]:
    """(series_id, piece) of every piece of the staged row `first_chunk`, in order."""
    c = columns(first_chunk, body)
    total = len(c.steps)
    starts = np.concatenate([[0], np.cumsum(c.ns)[:-1]]).astype(np.int64)
    lows = c.steps[starts].tolist() if total else [0.0] * len(starts)
    highs = c.steps[np.maximum(starts + c.ns - 1, 0)].tolist() if total else lows
    steps_at = 8 * (1 + 4 * len(c.sids))
    ts_at = steps_at + 8 * total
    float_at, string_at = ts_at + 8 * total, c.strings_at
    out = []
    for i, (sid, n, flag, vlen, start) in enumerate(
        zip(
            c.sids.tolist(),
            c.ns.tolist(),
            c.flags.tolist(),
            c.vlens.tolist(),
            starts.tolist(),
            strict=True,
        )
    ):
        if flag:
            vals = body[string_at : string_at + vlen]
            string_at += vlen
        else:
            vals = body[float_at : float_at + vlen]
            float_at += vlen
        piece = Piece(
            chunk_id=first_chunk + i,
            row=first_chunk,
            n=n,
            min_step=lows[i],
            max_step=highs[i],
            steps=body[steps_at + 8 * start : steps_at + 8 * (start + n)],
            vals=vals,
            ts=body[ts_at + 8 * start : ts_at + 8 * (start + n)],
            is_string=bool(flag),
        )
        out.append((sid, piece))
    return out


# -- the memtable ----------------------------------------------------------------------------


@dataclass
class _Row:
    body: bytes
    series: list[int]
    points: int
    staged_at: float


class Memtable:
    """series_id -> its staged pieces in ID order, and the staged rows in row order. A list a
    reader copied is only ever appended to; a flush replaces a series' list."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[int, list[Piece]] = {}
        self._rows: dict[int, _Row] = {}
        self.points = 0
        self.pieces = 0

    def add(self, row: int, body: bytes, now: float) -> None:
        """A staged row, after its transaction committed (rows in commit order)."""
        pieces = decode_row(row, body)
        points = sum(p.n for _, p in pieces)
        with self._lock:
            for sid, piece in pieces:
                self._series.setdefault(sid, []).append(piece)
            self._rows[row] = _Row(body, [sid for sid, _ in pieces], points, now)
            self.points += points
            self.pieces += len(pieces)

    def holds(self, series_id: int) -> bool:
        """Whether the series has a staged piece (flushed or not: then it is about to go)."""
        return series_id in self._series

    def view(self) -> dict[int, list[Piece]]:
        """What a read merges with the chunk rows: taken before its SQL snapshot begins."""
        with self._lock:
            return dict(self._series)

    def due(self, now: float) -> bool:
        with self._lock:
            if not self._rows:
                return False
            oldest = next(iter(self._rows.values())).staged_at
        return (
            self.points >= FLUSH_POINTS
            or self.pieces >= FLUSH_PIECES
            or now - oldest >= FLUSH_SECONDS
        )

    def over_bound(self) -> bool:
        """Whether commits must wait for a flush (HARD_BOUND times a flush threshold)."""
        return self.points >= HARD_BOUND * FLUSH_POINTS or self.pieces >= HARD_BOUND * FLUSH_PIECES

    def take(self) -> list[tuple[int, bytes]]:
        """(first chunk, body) of every row staged now, in row order."""
        with self._lock:
            return [(row, record.body) for row, record in self._rows.items()]

    def drop(self, through: int) -> None:
        """Forget the rows <= `through` and their pieces: a flush of them committed."""
        with self._lock:
            gone = [row for row in self._rows if row <= through]
            series: set[int] = set()
            for row in gone:
                record = self._rows.pop(row)
                series.update(record.series)
                self.points -= record.points
                self.pieces -= len(record.series)
            for sid in series:
                pieces = self._series[sid]
                first = len(pieces)  # the pieces of later rows are a suffix: usually none
                while first and pieces[first - 1].row > through:
                    first -= 1
                kept = pieces[first:]
                if kept:
                    self._series[sid] = kept
                else:
                    del self._series[sid]


@dataclass(frozen=True)
class Staged:
    """The pieces a read merges: those of rows above `through`, the rows its snapshot has not
    seen flushed (docs/staging.md, Reads)."""

    pieces: dict[int, list[Piece]]
    through: int

    def of(
        self, series_id: int, chunk_cap: int, lo: float = -math.inf, hi: float = math.inf
    ) -> list[Piece]:
        """The series' staged pieces with ID <= chunk_cap overlapping [lo, hi], in ID order."""
        return [
            p
            for p in tuple(self.pieces.get(series_id, ()))
            if p.row > self.through
            and p.chunk_id <= chunk_cap
            and p.min_step <= hi
            and p.max_step >= lo
        ]


# -- a flush's chunks ------------------------------------------------------------------------

ChunkRow = tuple[Any, ...]  # (chunk_id, series_id, min_step, max_step, n, steps, vals, ts, stats)


def merged_chunks(rows: Sequence[tuple[int, bytes]], cuts: Sequence[int]) -> list[ChunkRow]:
    """One chunk row per series holding all of its pieces in these staged rows, cut wherever
    a snapshot in `cuts` lies between two pieces' IDs; each chunk takes its last piece's ID.
    Float points are sorted into chunks as arrays (no work per piece); string pieces, rare,
    are joined one by one."""
    ordered = np.array(sorted(cuts), dtype=np.int64)
    ids: list[tuple[int, int]] = []
    writes: list[ChunkWrite] = []
    cols = [columns(first, body) for first, body in rows]
    sid, cid, steps, ts = [], [], [], []
    for c in cols:
        floats = np.repeat(c.flags == 0, c.ns)
        sid.append(np.repeat(c.sids, c.ns)[floats])
        cid.append(np.repeat(c.first_chunk + np.arange(len(c.sids)), c.ns)[floats])
        steps.append(c.steps[floats])
        ts.append(c.ts[floats])
    if cols and sum(len(c.floats) for c in cols):
        s_all, c_all = np.concatenate(sid), np.concatenate(cid)
        order = np.lexsort((c_all, s_all))  # by series, then ID; stable within a piece
        s_all, c_all = s_all[order], c_all[order]
        group = np.searchsorted(ordered, c_all, side="left")  # snapshots below each point
        cut = np.flatnonzero((s_all[1:] != s_all[:-1]) | (group[1:] != group[:-1])) + 1
        bounds = np.concatenate([[0], cut, [len(s_all)]]).tolist()
        st = np.concatenate(steps)[order]
        tt = np.concatenate(ts)[order]
        vv = np.concatenate([c.floats for c in cols])[order]
        for a, b in itertools.pairwise(bounds):
            ids.append((int(c_all[b - 1]), int(s_all[a])))
            writes.append(ChunkWrite("", "", False, st[a:b], vv[a:b], tt[a:b]))
    strings: dict[int, list[Piece]] = {}
    for c, (first, body) in zip(cols, rows, strict=True):
        if c.flags.any():
            for series, piece in decode_row(first, body):
                if piece.is_string:
                    strings.setdefault(series, []).append(piece)
    for series, pieces in strings.items():
        run: list[Piece] = []
        for piece in pieces:
            if run and _cut_between(ordered, run[-1].chunk_id, piece.chunk_id):
                ids.append((run[-1].chunk_id, series))
                writes.append(_joined(run))
                run = []
            run.append(piece)
        ids.append((run[-1].chunk_id, series))
        writes.append(_joined(run))
    return [(cid, sid, *packed) for (cid, sid), packed in zip(ids, chunk_rows(writes), strict=True)]


def _cut_between(cuts: np.ndarray[Any, np.dtype[np.int64]], low: int, high: int) -> bool:
    """Whether some snapshot s (`cuts` sorted) has low <= s < high."""
    i = int(np.searchsorted(cuts, low, side="left"))
    return i < len(cuts) and int(cuts[i]) < high


def _joined(run: Sequence[Piece]) -> ChunkWrite:
    steps = np.concatenate([np.frombuffer(p.steps, dtype=np.float64) for p in run])
    ts = np.concatenate([np.frombuffer(p.ts, dtype=np.float64) for p in run])
    values = [v for p in run for v in decode_values(p.vals, p.n, True)]
    return ChunkWrite("", "", True, steps, values, ts)


# -- the flusher thread ----------------------------------------------------------------------


class Flushable(Protocol):
    def flush_due(self) -> bool: ...

    def flush(self) -> None: ...


class Flusher(OwnedThread):
    """Runs `owner.flush()` when due; started on the first `poke`, checks at least every
    quarter of FLUSH_SECONDS (a quiet run's last points must reach the chunks too)."""

    def __init__(self) -> None:
        super().__init__("sqlite-flush", _run, join_timeout=60)


def _run(ref: weakref.ref[Flushable], wake: threading.Event, stop: threading.Event) -> None:
    while not stop.is_set():
        wake.wait(timeout=FLUSH_SECONDS / 4)
        wake.clear()
        if stop.is_set():
            break
        owner = ref()
        if owner is None:
            break
        try:
            if owner.flush_due():
                owner.flush()
        except Exception as exc:  # a full disk, an I/O error: the rows stay staged
            log.warning("flushing staged points failed (retrying): %s", exc)
            stop.wait(RETRY_SECONDS)
        finally:
            del owner
