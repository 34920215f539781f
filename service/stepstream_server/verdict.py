"""One run's entries of a group judged against their floors, over the whole group at once.

`plan` turns the run's batches into the check script's entries. A series whose entries in the
group all carry explicit steps is sent once, as its largest step: the script advances the floor
to it, and the floor before each entry follows from the returned starting floor. A series with
assigned steps or an overwrite sends every entry, in order: its floors depend on what came
before. `settle` then splits each entry into rejected prefix, duplicate and accepted rest
(SPEC §2) and gathers the accepted points into the store's chunk writes.

The work is over arrays: every entry's first step is compared with the floor before it in one
numpy comparison, and only an entry that is not simply above its floor (a re-send, a rejected
prefix, assigned steps) takes the per-entry path. The common group, every series once with
explicit steps (one FloatBlock per batch), builds no per-entry object but its chunk write.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter, is_, itemgetter
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .model import (
    AppendAck,
    Assigned,
    ChunkWrite,
    Floats,
    Outcome,
    Rejection,
    SeriesEntry,
    value_token,
)
from .ordering import assigned_start, fmt_step, pack_entries

if TYPE_CHECKING:
    from .pending import Pending

# Accepted points per (incarnation, is_string, name): runs of parts, each run flagged when it
# starts a new generation of the series (an overwrite).
Part = tuple[Floats, Floats | list[str], Floats]
Chunks = dict[tuple[str, bool, str], list[tuple[bool, list[Part]]]]
# Where the token of the floor before an entry comes from: the floor's text as the script
# returned it ("<step> <token>"), or the index of the group's entry whose last point it is.
TokenSource = str | int
_steps, _values, _timestamps = attrgetter("steps"), attrgetter("values"), attrgetter("timestamps")
_is_string = attrgetter("is_string")


@dataclass
class RunPlan:
    """One run's judged batches (group indices), their entries flattened in group order, and
    the check script's entries for them."""

    indices: list[int]
    items: list[Pending]
    entries: list[SeriesEntry]
    starts: list[int]  # batch b's entries are entries[starts[b]:starts[b + 1]]
    fields: list[str]  # of the script's entries, in the order sent
    packed: str  # the script's entries (ordering.pack_entries)
    first: Floats  # each entry's first and last step (NaN for assigned steps)
    last: Floats
    # No assigned steps, no overwrite: each series sent once. Then `ids` numbers each entry's
    # series in first-use order (the order sent), or is None when every series comes once:
    # script entry i is then entries[i].
    explicit: bool
    ids: npt.NDArray[np.int64] | None = None
    mixed: set[str] = field(default_factory=set)  # series with assigned steps or an overwrite


def plan(indices: list[int], items: list[Pending]) -> RunPlan:
    """What to send for one run's batches `items` (at group indices `indices`)."""
    entries = [e for item in items for e in item.entries]
    n = len(entries)
    starts = [0]
    for item in items:
        starts.append(starts[-1] + len(item.entries))
    first = np.fromiter([e.first_step for e in entries], np.float64, n)
    last = np.fromiter([e.last_step for e in entries], np.float64, n)
    fields = [e.field for e in entries]
    mixed = {f for f, e in zip(fields, entries, strict=True) if e.assign or e.overwrite}
    p = RunPlan(indices, items, entries, starts, fields, "", first, last, not mixed)
    if not mixed:
        if len(set(fields)) < n:
            index: dict[str, int] = {}
            p.ids = np.fromiter([index.setdefault(f, len(index)) for f in fields], np.int64, n)
            # Each series' entry of the largest last step (the first of equals) is sent.
            order = np.lexsort((np.arange(n), -last, p.ids))
            by_series = p.ids[order]
            heads = np.flatnonzero(np.r_[True, by_series[1:] != by_series[:-1]])
            p.fields = list(index)
            p.packed = _pack([entries[i] for i in order[heads].tolist()], p.fields)
        else:
            p.packed = _pack(entries, fields)
        return p
    p.mixed = mixed
    sent: list[int] = []
    for name, idxs in _uses(fields).items():
        if name in mixed:
            sent.extend(idxs)
        else:
            best = idxs[0]
            for i in idxs[1:]:
                if entries[i].last_step > entries[best].last_step:
                    best = i  # the first of equal largest steps, as the floor keeps
            sent.append(best)
    p.fields = [fields[i] for i in sent]
    p.packed = _pack([entries[i] for i in sent], p.fields)
    return p


def _uses(fields: list[str]) -> dict[str, list[int]]:
    """Each series' entries, in first-use order."""
    uses: dict[str, list[int]] = {}
    for i, name in enumerate(fields):
        found = uses.get(name)
        if found is None:
            uses[name] = [i]
        else:
            found.append(i)
    return uses


def _pack(entries: Sequence[SeriesEntry], fields: list[str]) -> str:
    """The script's entries for these, one each: mode, step or count, last value's token."""
    steps: dict[float, str] = {}  # a block's series share their last step: formatted once
    modes, args = [], []
    for e in entries:
        modes.append(("o" if e.overwrite else "") + ("a" if e.assign else "e"))
        if e.assign:
            args.append(str(e.count))
        else:
            found = steps.get(e.last_step)
            if found is None:
                found = steps[e.last_step] = fmt_step(e.last_step)
            args.append(found)
    return pack_entries(fields, modes, args, last_tokens(entries))


def last_tokens(entries: Sequence[SeriesEntry]) -> list[str]:
    """`value_token` of each entry's last value; the floats' all at once, from their bits."""
    if any(e.is_string for e in entries):
        return [value_token(e.values[-1]) for e in entries]
    if not entries:
        return []
    text = np.array([e.values[-1] for e in entries], dtype="<f8").tobytes().hex()
    return [text[k : k + 16] for k in range(0, len(text), 16)]


def floor_steps(texts: list[str]) -> Floats:
    """The steps of floors as the script returned them ("" for a new series: -inf)."""
    return np.array([float(t[: t.index(" ")]) if t else -math.inf for t in texts], dtype=np.float64)


def _floors(p: RunPlan, texts: list[str]) -> tuple[Floats, list[TokenSource]]:
    """The floor before each entry (step, token source), from the script's answer, entry by
    entry: a series sent once moves its floor along its entries."""
    n = len(p.entries)
    steps = np.empty(n, dtype=np.float64)
    tokens: list[TokenSource] = [""] * n
    replies = iter(zip(floor_steps(texts).tolist(), texts, strict=True))
    for name, idxs in _uses([e.field for e in p.entries]).items():
        if name in p.mixed:
            for i in idxs:
                steps[i], tokens[i] = next(replies)
            continue
        step, text = next(replies)
        source: TokenSource = text
        for i in idxs:
            steps[i], tokens[i] = step, source
            last = p.entries[i].last_step
            if last > step:  # the entry moved the floor: the next one's starts from it
                step, source = last, i
    return steps, tokens


def _above(p: RunPlan, texts: list[str]) -> npt.NDArray[np.bool_] | None:
    """Whether each entry is simply above the floor before it, all at once: None when that
    takes the entry-by-entry walk (assigned steps, overwrites). While a series' entries are
    each above the one before, the floor before one is the last step of the one before (or
    the script's floor for the first), and those are what it is compared with; the entries
    after one that is not are found not above by the walk too (`_floors`)."""
    if not p.explicit:
        return None
    floor = floor_steps(texts)
    if p.ids is None:
        return p.first > floor
    floor = floor[p.ids]
    by_series = np.argsort(p.ids, kind="stable")  # each series' entries in group order
    same = p.ids[by_series[1:]] == p.ids[by_series[:-1]]
    floor[by_series[1:][same]] = p.last[by_series[:-1][same]]
    return p.first > floor


def settle(
    p: RunPlan, texts: list[str], incarnation: str, applied: set[int]
) -> tuple[dict[int, Outcome], list[ChunkWrite]]:
    """The acknowledgement of each batch at a group index in `applied` (the others of the plan
    moved their floors but are answered otherwise), and the chunks to write."""
    above = _above(p, texts)
    if above is not None and bool(above.all()):  # the common group: every point is new
        writes = _whole(p, incarnation, len(applied) == len(p.indices))
        outcomes: dict[int, Outcome] = {}
        for b, (index, item) in enumerate(zip(p.indices, p.items, strict=True)):
            if index in applied:
                points = sum(map(len, map(_values, p.entries[p.starts[b] : p.starts[b + 1]])))
                outcomes[index] = AppendAck(points, 0, tuple(item.rejections), (), incarnation)
        if writes is not None:
            return outcomes, writes
    steps, tokens = _floors(p, texts)
    # Assigned steps have no first step (NaN): never simply above the floor.
    fast = (p.first > steps).tolist()
    outcomes = {}
    chunks: Chunks = {}
    for b, (index, item) in enumerate(zip(p.indices, p.items, strict=True)):
        if index in applied:
            lo, hi = p.starts[b], p.starts[b + 1]
            outcomes[index] = _apply(p, item, lo, hi, fast, steps, tokens, incarnation, chunks)
    return outcomes, _chunk_writes(chunks)


def _whole(p: RunPlan, incarnation: str, every_batch: bool) -> list[ChunkWrite] | None:
    """The chunks of a group whose entries are all accepted whole, or None when they take
    `_chunk_writes` (a batch not applied, strings repeated, series of unequal shapes). A series
    in several batches of blocks of the same series (a trainer's steps, one batch each) gets
    its entries' points joined: the blocks' steps once for all, the values as one matrix."""
    if p.ids is None:
        if every_batch:
            return ChunkWrite.whole(incarnation, p.entries)
        return None
    n, width = len(p.entries), len(p.fields)
    if not every_batch or n % width or any(map(_is_string, p.entries)):
        return None
    if bool((np.bincount(p.ids, minlength=width) != n // width).any()):
        return None
    grid = np.argsort(p.ids, kind="stable").reshape(width, n // width)  # series x batch
    steps, times, values = [], [], []
    for column in grid.T.tolist():  # one batch's entries, in the order of the series
        entries = itemgetter(*column)(p.entries) if width > 1 else (p.entries[column[0]],)
        s, t = entries[0].steps, entries[0].timestamps
        # One block's series, or none to join this way (`map`: no Python code per entry).
        if not all(map(is_, map(_steps, entries), repeat(s))):
            return None
        if not all(map(is_, map(_timestamps, entries), repeat(t))):
            return None
        assert s is not None
        steps.append(s)
        times.append(t)
        values.append(np.concatenate(list(map(_values, entries))).reshape(width, len(s)))
    names = [p.entries[i].name for i in grid[:, 0].tolist()]
    return ChunkWrite.shared(
        incarnation,
        names,
        np.concatenate(steps),
        np.concatenate(values, axis=1),
        np.concatenate(times),
    )


def _apply(
    p: RunPlan,
    item: Pending,
    lo: int,
    hi: int,
    fast: list[bool],
    floors: Floats,
    tokens: list[TokenSource],
    incarnation: str,
    chunks: Chunks,
) -> AppendAck:
    """One batch entry by entry: rejected prefix, duplicate and accepted rest (SPEC §2)."""
    accepted = duplicates = 0
    rejections = list(item.rejections)
    assigned: list[Assigned] = []
    for i in range(lo, hi):
        entry = p.entries[i]
        floor = float(floors[i])
        if fast[i]:
            steps, values, ts = entry.steps, entry.values, entry.timestamps
        elif entry.assign:
            start = assigned_start(floor)
            if not start > floor:
                rejections.append(
                    Rejection(
                        entry.name,
                        "STEP_OVERFLOW",
                        f"no step above floor {floor!r} is representable",
                        entry.count,
                        floor=floor,
                        is_string=entry.is_string,
                    )
                )
                continue
            steps = start + np.arange(entry.count, dtype=np.float64)
            assigned.append(Assigned(entry.name, start, entry.count, entry.is_string))
            values, ts = entry.values, entry.timestamps
        else:
            assert entry.steps is not None
            steps = entry.steps
            cut = int(np.searchsorted(steps, floor, side="right"))
            rejected = cut
            if (
                cut > 0
                and steps[cut - 1] == floor
                and value_token(entry.values[cut - 1]) == _token(p, tokens[i])
            ):
                duplicates += 1
                rejected -= 1
            if rejected:
                rejections.append(
                    Rejection(
                        entry.name,
                        "STEP_NOT_INCREASING",
                        f"{rejected} point(s) at steps {float(steps[0])!r}..{float(steps[rejected - 1])!r}"
                        f" are not above the series' floor {floor!r}",
                        rejected,
                        float(steps[0]),
                        float(steps[rejected - 1]),
                        floor,
                        entry.is_string,
                    )
                )
            if cut == len(steps):
                continue
            steps, values, ts = steps[cut:], entry.values[cut:], entry.timestamps[cut:]
        assert steps is not None
        accepted += len(steps)
        generations = chunks.setdefault((incarnation, entry.is_string, entry.name), [])
        if entry.overwrite or not generations:
            generations.append((entry.overwrite, []))
        generations[-1][1].append((steps, values, ts))
    return AppendAck(accepted, duplicates, tuple(rejections), tuple(assigned), incarnation)


def _token(p: RunPlan, source: TokenSource) -> str:
    if isinstance(source, int):
        return value_token(p.entries[source].values[-1])
    return source[source.index(" ") + 1 :] if source else ""


def _chunk_writes(chunks: Chunks) -> list[ChunkWrite]:
    # The series of one block share their steps and timestamps arrays: joined once for all.
    # (Keyed by the parts' ids, which stay distinct while `chunks` holds every part.)
    joined: dict[tuple[int, ...], Floats] = {}

    def shared(parts: list[Floats]) -> Floats:
        if len(parts) == 1:
            return parts[0]
        key = tuple(map(id, parts))
        found = joined.get(key)
        if found is None:
            found = joined[key] = np.concatenate(parts)
        return found

    return [
        ChunkWrite(
            inc,
            name,
            is_string,
            shared([p[0] for p in parts]),
            _concat_values([p[1] for p in parts], is_string),
            shared([p[2] for p in parts]),
            new_generation,
        )
        for (inc, is_string, name), generations in chunks.items()
        for new_generation, parts in generations
    ]


def _concat_values(parts: list[Floats | list[str]], is_string: bool) -> Floats | list[str]:
    if len(parts) == 1:
        return parts[0]
    if is_string:
        out: list[str] = []
        for p in parts:
            out.extend(p)
        return out
    return np.concatenate(parts)
