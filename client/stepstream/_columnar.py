"""The columnar encoding of log records into `PointBatch` messages.

The sender thread turns runs of records (see `_records`) into one `AppendPointsRequest`. Rows
logged with explicit steps (a training loop's `log_metrics`) travel as `FloatBlock`s: the keys
once, one step and timestamp per row, and the row-major matrix of values as it was packed in
the trainer thread. Everything else (`log_metric` lists, server-assigned steps, overwrites)
travels as one `FloatSeries` per series with packed steps, values and timestamps.

Float columns are encoded by hand: a packed `repeated double` on the wire is the values as
little-endian 8-byte floats, which is exactly what `struct.pack("<Nd", ...)` produces in the
trainer thread. Slicing those bytes per series and prefixing field tags costs a few nanoseconds
per point, where building protobuf messages value by value costs ~50-150 ns. String series are
rare (console lines) and go through the generated `StringSeries` message. `tests/
test_client_columnar.py` checks the bytes against the generated message classes.

Batching never changes what the service decides: per series, points stay in log order, and a
series entry is closed (a new entry starts) wherever its steps stop strictly increasing or
switch between explicit and server-assigned steps, and a batch ends where a `FloatSeries`
entry would overtake block points of the same series (the service applies a batch's
`float_series` before its `float_blocks`; see `_batches.split_for_blocks`), so each point is judged
against the floor exactly as if it had been sent alone.
"""

from __future__ import annotations

import functools
import itertools
import operator
import struct
from dataclasses import dataclass
from typing import Any

from stepstream.v1 import ingest_pb2

from ._name_bytes import name_size
from ._records import Column, Point, Record, Rows, double_packer, pack_doubles

# Wire tags (field number << 3 | wire type): varint = 0, length-delimited = 2.
_BATCH_SEQUENCE = b"\x08"  # PointBatch.sequence = 1
_BATCH_FLOAT_SERIES = 0x12  # PointBatch.float_series = 2
_BATCH_STRING_SERIES = 0x1A  # PointBatch.string_series = 3
_BATCH_FLOAT_BLOCKS = 0x22  # PointBatch.float_blocks = 4
_BLOCK_NAME = 0x0A  # FloatBlock.names = 1
_BLOCK_STEPS = 0x12  # FloatBlock.steps = 2
_BLOCK_VALUES = 0x1A  # FloatBlock.values = 3
_BLOCK_TIMESTAMPS = 0x22  # FloatBlock.timestamps = 4
_SERIES_NAME = 0x0A  # FloatSeries.name = 1
_SERIES_STEPS = 0x12  # FloatSeries.steps = 2
_SERIES_VALUES = 0x1A  # FloatSeries.values = 3
_SERIES_TIMESTAMPS = 0x22  # FloatSeries.timestamps = 4
_SERIES_ASSIGN_STEPS = b"\x28\x01"  # FloatSeries.assign_steps = 5, true
_SERIES_OVERWRITE = b"\x30\x01"  # FloatSeries.overwrite = 6, true
_REQUEST_BATCH = 0x12  # AppendPointsRequest.batch = 2


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """One encoded `AppendPointsRequest` carrying a batch, ready to (re)send."""

    sequence: int
    request: bytes
    points: int


def varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.lru_cache(maxsize=65536)
def _name_field(name: str) -> bytes:
    encoded = name.encode("utf-8")
    return bytes((_SERIES_NAME,)) + varint(len(encoded)) + encoded


@functools.lru_cache(maxsize=256)
def _block_names(keys: tuple[str, ...]) -> bytes:
    return b"".join(_name_field(key) for key in keys)  # FloatBlock.names has FloatSeries.name's tag


def _field(tag: int, data: bytes) -> bytes:
    return bytes((tag,)) + varint(len(data)) + data if data else b""


class _FloatEntry:
    """Points of one float series that will travel as one `FloatSeries` entry.

    Packed chunks (from `Rows` and `Column` records) go to `steps`/`values`/`times`; `Point`s
    are kept as they came in `points` (one list append each, the per-call pattern's whole
    encoding cost per point) and packed in one go (`seal`) before the next chunk and at
    encoding, so the entry keeps log order.
    """

    __slots__ = ("assign", "last_step", "overwrite", "points", "steps", "times", "values")

    def __init__(self, assign: bool, overwrite: bool = False) -> None:
        self.assign = assign
        self.overwrite = overwrite
        self.last_step = float("-inf")
        self.steps: list[bytes] = []
        self.values: list[bytes] = []
        self.times: list[bytes] = []
        self.points: list[Point] = []

    def seal(self) -> None:
        """Pack the points collected so far behind the chunks."""
        if not self.points:
            return
        steps, times, _, values = zip(*self.points, strict=True)
        self.points = []
        if not self.assign:
            self.steps.append(pack_doubles(steps))
        self.values.append(pack_doubles(values))
        self.times.append(pack_doubles(times))

    def encode(self, name: str) -> bytes:
        self.seal()
        body = b"".join(
            (
                _name_field(name),
                _field(_SERIES_STEPS, b"".join(self.steps)),
                _field(_SERIES_VALUES, b"".join(self.values)),
                _field(_SERIES_TIMESTAMPS, b"".join(self.times)),
                _SERIES_ASSIGN_STEPS if self.assign else b"",
                _SERIES_OVERWRITE if self.overwrite else b"",
            )
        )
        return _field(_BATCH_FLOAT_SERIES, body)


class _Block:
    """Rows of explicit steps for one key set that will travel as one `FloatBlock`."""

    __slots__ = ("keys", "last_step", "steps", "times", "values")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.last_step = float("-inf")
        self.steps: list[float] = []
        self.times: list[float] = []
        self.values: list[bytes] = []  # one packed row per step

    def encode(self) -> bytes:
        values = self.values
        body = b"".join(
            (
                _block_names(self.keys),
                _field(_BLOCK_STEPS, pack_doubles(self.steps)),
                _field(_BLOCK_VALUES, values[0] if len(values) == 1 else b"".join(values)),
                _field(_BLOCK_TIMESTAMPS, pack_doubles(self.times)),
            )
        )
        return _field(_BATCH_FLOAT_BLOCKS, body)


class _StringEntry:
    __slots__ = ("assign", "last_step", "steps", "times", "values")

    def __init__(self, assign: bool) -> None:
        self.assign = assign
        self.last_step = float("-inf")
        self.steps: list[float] = []
        self.values: list[str] = []
        self.times: list[float] = []

    def encode(self, name: str) -> bytes:
        message = ingest_pb2.StringSeries(
            name=name,
            steps=self.steps,
            values=self.values,
            timestamps=self.times,
            assign_steps=self.assign,
        )
        return _field(_BATCH_STRING_SERIES, message.SerializeToString())


def _entry_for(
    entries: list[_FloatEntry] | list[_StringEntry], assign: bool, first_step: float
) -> bool:
    """Whether new points (starting at `first_step`) may join the series' last entry."""
    if not entries:
        return False
    last = entries[-1]
    return last.assign == assign and (assign or first_step > last.last_step)


class BatchEncoder:
    """Collects records, then encodes them as one AppendPointsRequest.

    Whatever the call pattern, each series travels as few entries as its steps allow (one,
    unless its steps stop increasing or switch between explicit and assigned):

    - `Point`s (one-key calls) join their series' last `FloatSeries` entry, so interleaved
      `log_metrics({"loss": v}, step=s)`, `log_metrics({"lr": v}, step=s)`, ... become one
      entry per series.
    - Explicit-step `Rows` join the open `FloatBlock` of their key set: one row-major matrix
      per block, the keys once. A row starts a new block for its key set when its step does
      not increase, or when one of its series has since gone into another block (a batch's
      blocks are applied in order, so a series' points in the earlier block must all come
      first). Alternating dicts ({"loss", "acc"} then {"lr", "wd"} at each step) thus keep
      one block each.
    - Server-assigned and overwriting `Rows` collect into a pending block of consecutive rows
      with the same keys, sliced per series into `FloatSeries` entries when it closes. A
      record with `overwrite` always starts a new entry (flagged `overwrite`) for each of its
      series; later records may join that entry, since the service restarts the series
      before applying the entry's first point.
    """

    def __init__(self) -> None:
        self._floats: dict[str, list[_FloatEntry]] = {}
        self._strings: dict[str, list[_StringEntry]] = {}
        self.points = 0
        # The pending block of server-assigned or overwriting rows.
        self._block_keys: tuple[str, ...] | None = None
        self._block_assign = False
        self._block_overwrite = False
        self._block_steps: list[float] = []
        self._block_times: list[float] = []
        self._block_values: list[bytes] = []
        # Explicit-step blocks, in creation order; the latest per key set and per series.
        self._blocks: list[_Block] = []
        self._open: dict[tuple[str, ...], _Block] = {}
        self._owner: dict[str, _Block] = {}
        self._last_block: _Block | None = None

    def add(self, record: Record) -> None:
        if type(record) is tuple:
            self.points += 1
            self._add_point(record)
            return
        self.points += record.points  # type: ignore[union-attr]
        if isinstance(record, Column):
            self._flush_block()
            self._add_column(record)
        elif isinstance(record.values, bytes):  # type: ignore[union-attr]
            self._add_float_rows(record, record.values)  # type: ignore[arg-type,union-attr]
        else:
            self._flush_block()
            self._add_string_rows(record, record.values)  # type: ignore[arg-type,union-attr]

    def encode(self, sequence: int) -> EncodedBatch:
        """Encode everything added so far as the batch with this sequence number."""
        self._flush_block()
        parts = [_BATCH_SEQUENCE + varint(sequence)]
        for name, floats in self._floats.items():
            parts.extend(entry.encode(name) for entry in floats)
        for name, strings in self._strings.items():
            parts.extend(entry.encode(name) for entry in strings)
        parts.extend(block.encode() for block in self._blocks)
        batch = b"".join(parts)
        request = bytes((_REQUEST_BATCH,)) + varint(len(batch)) + batch
        return EncodedBatch(sequence=sequence, request=request, points=self.points)

    def add_all(self, records: list[Record]) -> None:
        """`add` each record in turn; a point that continues its series' entry (the common
        case) costs a dict lookup and a list append, and a whole batch of interleaved
        one-key calls is sliced per series at C speed (`_add_interleaved`)."""
        if not self.points and self._add_interleaved(records):
            return
        floats = self._floats
        points = 0
        for record in records:
            if type(record) is not tuple:
                self.add(record)
                continue
            points += 1
            if self._block_keys is None:
                entries = floats.get(record[2])
                if entries is not None:
                    entry = entries[-1]
                    step = record[0]
                    if step is None:
                        if entry.assign:
                            entry.points.append(record)
                            continue
                    elif not entry.assign and step > entry.last_step:
                        entry.points.append(record)
                        entry.last_step = step
                        continue
            self._add_point(record)
        self.points += points

    def _add_interleaved(self, records: list[Record]) -> bool:
        """Add a batch of the per-call pattern in one go, or return False having added nothing.

        The pattern: only Points with explicit steps, whose names repeat in one order (`loss`,
        `lr`, `grad_norm`, `loss`, `lr`, ... from any starting name), each series' steps
        increasing strictly. Then every series is one entry, the slice `[j::period]` of the
        batch's columns, which is exactly what adding the points one by one would give (the
        same entries in the same order: the encoded bytes are equal). Anything else (a repeated
        step, an assigned one, another record) takes the general path.
        """
        if len(records) < 2 or set(map(type, records)) != {tuple}:
            return False
        # The four columns, by strided slices of the flattened tuples (zip(*records) is ~5x
        # slower with this many arguments).
        flat: list[Any] = list(itertools.chain.from_iterable(records))  # type: ignore[arg-type]
        steps, times, names, values = flat[0::4], flat[1::4], flat[2::4], flat[3::4]
        first = names[0]
        try:
            period = names.index(first, 1)
        except ValueError:
            period = len(names)
        head = names[:period]
        if names[period:] != names[:-period] or len(set(head)) != period:
            return False
        entries: list[tuple[str, _FloatEntry]] = []
        for j, name in enumerate(head):
            series_steps = steps[j::period]
            try:
                packed_steps = pack_doubles(series_steps)  # a None (assigned) step raises
            except struct.error:
                return False
            if not all(map(operator.lt, series_steps, series_steps[1:])):
                return False
            entry = _FloatEntry(False)
            entry.steps.append(packed_steps)
            entry.values.append(pack_doubles(values[j::period]))
            entry.times.append(pack_doubles(times[j::period]))
            entry.last_step = series_steps[-1]
            entries.append((name, entry))
        for name, entry in entries:
            self._floats[name] = [entry]
        self.points += len(records)
        return True

    def name_bytes(self) -> int:
        """UTF-8 bytes of the series names the batch carries, counted as the service counts
        them: each entry's name, each block's names."""
        self._flush_block()
        size = sum(name_size(name) * len(entries) for name, entries in self._floats.items())
        size += sum(name_size(name) * len(entries) for name, entries in self._strings.items())
        return size + sum(sum(map(name_size, block.keys)) for block in self._blocks)

    def _add_point(self, point: Point) -> None:
        """A point that starts an entry (or follows pending rows); does not count it."""
        if self._block_keys is not None:
            self._flush_block()  # its rows come first in their series' entries
        step, _, name, _ = point
        entries = self._floats.get(name)
        if entries is None:
            entries = self._floats[name] = []
        if step is None:
            if not entries or not entries[-1].assign:
                entries.append(_FloatEntry(True))
        elif not entries or entries[-1].assign or not step > entries[-1].last_step:
            entries.append(_FloatEntry(False))
        entry = entries[-1]
        entry.points.append(point)
        if step is not None:
            entry.last_step = step

    def _add_float_rows(self, rows: Rows, values: bytes) -> None:
        step = rows.step
        if step is None or rows.overwrite:
            self._add_pending_rows(rows, values)
            return
        keys = rows.keys
        block = self._last_block
        if (
            block is None
            or not (keys is block.keys or keys == block.keys)
            or not (step > block.last_step)
        ):
            # Not the key set of the previous block row: its own open block, unless one of
            # its series has since gone into another block.
            block = self._open.get(keys)
            owner = self._owner
            if (
                block is None
                or not step > block.last_step
                or any(owner[key] is not block for key in keys)
            ):
                block = _Block(keys)
                self._blocks.append(block)
                self._open[keys] = block
                for key in keys:
                    owner[key] = block
            self._last_block = block
        block.steps.append(step)
        block.times.append(rows.time)
        block.values.append(values)
        block.last_step = step

    def _add_pending_rows(self, rows: Rows, values: bytes) -> None:
        assign = rows.step is None
        keys = rows.keys
        if not (
            self._block_keys is not None
            and assign
            and self._block_assign
            and not rows.overwrite
            and (keys is self._block_keys or keys == self._block_keys)
        ):
            self._flush_block()
            self._block_keys = keys
            self._block_assign = assign
            self._block_overwrite = rows.overwrite
        self._block_steps.append(0.0 if rows.step is None else rows.step)
        self._block_times.append(rows.time)
        self._block_values.append(values)

    def _flush_block(self) -> None:
        """Slice the pending block of assigned or overwriting rows into FloatSeries entries."""
        keys = self._block_keys
        if keys is None:
            return
        steps, times, values = self._block_steps, self._block_times, self._block_values
        self._block_keys = None
        self._block_steps, self._block_times, self._block_values = [], [], []
        assign = self._block_assign
        overwrite = self._block_overwrite
        width = len(keys)
        step_bytes = b"" if assign else pack_doubles(steps)
        time_bytes = pack_doubles(times)
        matrix = values[0] if len(values) == 1 else b"".join(values)
        # Only ever sliced and copied, never read as numbers, so native order is irrelevant.
        view = memoryview(matrix).cast("d")
        first, last = steps[0], steps[-1]
        floats = self._floats
        for index, key in enumerate(keys):
            column = matrix if width == 1 else view[index::width].tobytes()
            entries = floats.get(key)
            if entries is None:
                entries = floats[key] = []
            if overwrite or not _entry_for(entries, assign, first):
                entries.append(_FloatEntry(assign, overwrite))
            entry = entries[-1]
            entry.seal()
            entry.steps.append(step_bytes)
            entry.values.append(column)
            entry.times.append(time_bytes)
            entry.last_step = last

    def _add_column(self, column: Column) -> None:
        count = column.points
        if count == 0:
            return
        assign = column.first_step is None
        first = 0.0 if column.first_step is None else column.first_step
        entries = self._floats.setdefault(column.name, [])
        if column.overwrite or not _entry_for(entries, assign, first):
            entries.append(_FloatEntry(assign, column.overwrite))
        entry = entries[-1]
        entry.seal()
        if not assign:
            entry.steps.append(pack_doubles([first + i for i in range(count)]))
        entry.values.append(column.values)
        entry.times.append(double_packer(1).pack(column.time) * count)
        entry.last_step = first + count - 1

    def _add_string_rows(self, rows: Rows, values: tuple[str, ...]) -> None:
        assign = rows.step is None
        step = 0.0 if rows.step is None else rows.step
        strings = self._strings
        for key, value in zip(rows.keys, values, strict=True):
            entries = strings.get(key)
            if entries is None:
                entries = strings[key] = []
            if not _entry_for(entries, assign, step):
                entries.append(_StringEntry(assign))
            entry = entries[-1]
            if not assign:
                entry.steps.append(step)
            entry.values.append(value)
            entry.times.append(rows.time)
            entry.last_step = step


def encode_batch(sequence: int, records: list[Record]) -> EncodedBatch:
    """Encode `records` (in log order) as the AppendPointsRequest for batch `sequence`."""
    encoder = BatchEncoder()
    encoder.add_all(records)
    return encoder.encode(sequence)
