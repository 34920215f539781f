"""Log records: what a log call turns into on the trainer's thread.

`RecordMaker` validates a log call's arguments and packs its values into one cheap record
(`Rows`, `Column` or `Point`); the sender thread later encodes runs of records into batches
(`_columnar`). This is the only per-point work a trainer's thread does, so it stays at C speed:
`tuple(data)` for the keys, one `struct.pack` for all values (which also rejects non-numbers),
and name checks only for names not seen before (`set.issuperset`).

A one-key call with a step (`log_metrics({"loss": v}, step=s)`, `log_metric("loss", v, s)`)
is the per-call pattern of W&B and Neptune users; it becomes a `Point`, a plain tuple, which
costs a fraction of a `Rows`. The encoder gathers points per series, so interleaved one-key
calls still travel as one entry per series per batch.
"""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._exceptions import InvalidArgumentError
from ._validate import check_name, check_real

_BAD_VALUE = (struct.error, TypeError, ValueError, OverflowError)


@functools.lru_cache(maxsize=4096)
def double_packer(count: int) -> struct.Struct:
    """A cached `struct.Struct` packing `count` doubles little-endian (the wire format)."""
    return struct.Struct(f"<{count}d")


def pack_doubles(values: Sequence[float]) -> bytes:
    return double_packer(len(values)).pack(*values)


@dataclass(slots=True)
class Rows:
    """One `log_metrics`/`log_strings` call: one point per key, all at `step`.

    `values` holds the float values packed little-endian (`pack_doubles`), or the strs of a
    string call. `step` None asks the service to assign each series' next step. `overwrite`
    restarts every one of these (float) series before its point is applied.
    """

    step: float | None
    time: float
    keys: tuple[str, ...]
    values: bytes | tuple[str, ...]
    overwrite: bool = False

    @property
    def points(self) -> int:
        return len(self.keys)

    def split(self, count: int) -> tuple[Rows, Rows]:
        """Split after the first `count` points (to respect the batch size limit).

        Both halves keep `overwrite`: they hold different series, each to be restarted.
        """
        width = 8 if isinstance(self.values, bytes) else 1
        step, when, keys, values = self.step, self.time, self.keys, self.values
        head = Rows(step, when, keys[:count], values[: count * width], self.overwrite)
        tail = Rows(step, when, keys[count:], values[count * width :], self.overwrite)
        return head, tail


@dataclass(slots=True)
class Column:
    """One `log_metric(name, [v0, v1, ...])` call: one float series at consecutive steps.

    Steps are `first_step`, `first_step + 1`, ...; `first_step` None asks the service to
    assign them. `values` is packed like `Rows.values`. `overwrite` restarts the series before
    the first value is applied.
    """

    name: str
    first_step: float | None
    time: float
    values: bytes
    overwrite: bool = False

    @property
    def points(self) -> int:
        return len(self.values) // 8

    def split(self, count: int) -> tuple[Column, Column]:
        """Split after the first `count` values; only the head restarts the series."""
        rest = None if self.first_step is None else self.first_step + count
        head = Column(
            self.name, self.first_step, self.time, self.values[: count * 8], self.overwrite
        )
        tail = Column(self.name, rest, self.time, self.values[count * 8 :])
        return head, tail


# One float point of a one-key call: (step, time, name, value). `value` is the float exactly as
# it goes on the wire (numbers that are not floats are converted the way `struct.pack` does);
# `step` None asks the service to assign the series' next step. Never `overwrite`: an
# overwriting call is a `Rows`. A tuple, not a class: building it costs ~20 ns, a slotted
# dataclass ~10 times more, and this is the per-point cost of the per-call pattern.
Point = tuple[float | None, float, str, float]

Record = Rows | Column | Point


def record_points(record: Record) -> int:
    """How many points a record holds (a Point holds one)."""
    return 1 if type(record) is tuple else record.points  # type: ignore[union-attr]


class RecordMaker:
    """Turns log calls into records, remembering the series names already checked.

    One per Run. Safe to share between threads: the caches only ever grow, and a race at
    worst checks a name twice.
    """

    def __init__(self) -> None:
        self._float_names: set[str] = set()
        self._string_names: set[str] = set()
        self._last_keys: tuple[str, ...] = ()

    def float_rows(
        self,
        data: Mapping[str, float | Iterable[float]],
        step: float | None,
        timestamp: float | None,
        overwrite: bool = False,
    ) -> Record | list[Record] | None:
        """The record(s) of `log_metrics(data, step, timestamp=..., overwrite=...)`.

        A `Point` for one key holding a number (unless `overwrite`), one `Rows` when every
        value is a number (the fast path), None for an empty dict. A
        dict that also holds lists (DigitalHub: a list is appended at consecutive steps) gives
        a list of records: one `Rows` for the numbers, one `Column` per list. Every value is
        checked before anything is returned, so a bad value queues nothing.
        """
        if step is not None and (type(step) is not float or step - step != 0.0):
            # Not a finite float (x - x is 0.0 for those alone): ints convert as check_real does.
            step = float(step) if type(step) is int else check_real(step, "step")
        when = _now() if timestamp is None else check_real(timestamp, "timestamp")
        keys = tuple(data)
        if len(keys) == 1 and not overwrite:
            name = keys[0]
            if name not in self._float_names:
                _learn(keys, self._float_names)
            value = data[name]
            if type(value) is not float:
                try:
                    value = _UNPACK_ONE(_PACK_ONE(value))[0]
                except _BAD_VALUE:
                    return _mixed_rows(data, step, when, overwrite)
            return (step, when, name, value)
        if not keys:
            return None
        if keys == self._last_keys:
            # One shared tuple for a repeated key set: less memory, and the encoder groups
            # records with identical keys cheaply.
            keys = self._last_keys
        else:
            if not self._float_names.issuperset(keys):
                _learn(keys, self._float_names)
            self._last_keys = keys
        try:
            values = double_packer(len(keys)).pack(*data.values())
        except _BAD_VALUE:
            return _mixed_rows(data, step, when, overwrite)
        return Rows(step, when, keys, values, overwrite)

    def float_values(
        self,
        name: str,
        value: float | Iterable[float],
        step: float | None,
        timestamp: float | None,
        overwrite: bool = False,
    ) -> Record | None:
        """The record of `log_metric(name, value, step, timestamp=..., overwrite=...)`.

        A number becomes a `Point` (a one-point `Rows` with `overwrite`); a list (or other
        iterable) of values becomes one Column at consecutive steps; None for an empty list.
        """
        if name not in self._float_names:
            _learn((name,), self._float_names)
        if step is not None:
            step = check_real(step, "step")
        when = time.time() if timestamp is None else check_real(timestamp, "timestamp")
        try:
            packed = _PACK_ONE(value)
        except _BAD_VALUE:
            return _column(name, value, step, when, overwrite)
        if overwrite:
            return Rows(step, when, (name,), packed, overwrite)
        return (step, when, name, _UNPACK_ONE(packed)[0])

    def string_rows(
        self, data: Mapping[str, str], step: float | None, timestamp: float | None
    ) -> Rows | None:
        """The record of `log_strings(data, step, timestamp=...)`; None for an empty dict."""
        if step is not None:
            step = check_real(step, "step")
        when = time.time() if timestamp is None else check_real(timestamp, "timestamp")
        keys = tuple(data)
        if not keys:
            return None
        if not self._string_names.issuperset(keys):
            _learn(keys, self._string_names)
        values = tuple(data.values())
        for key, value in zip(keys, values, strict=True):
            if type(value) is not str:
                raise InvalidArgumentError(
                    f"value of string series {key!r} must be a str, got {type(value).__name__}"
                )
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise InvalidArgumentError(
                        f"value of string series {key!r} is not valid UTF-8 ({exc.reason})"
                    ) from None
        return Rows(step, when, keys, values)


_PACK_ONE = double_packer(1).pack
_now = time.time
_UNPACK_ONE = double_packer(1).unpack
_NOT_A_SEQUENCE = (str, bytes, bytearray, Mapping, set, frozenset)


def _column(
    name: str, value: object, step: float | None, when: float, overwrite: bool
) -> Column | None:
    """The Column of a list value, or None for an empty list; InvalidArgumentError otherwise.

    Any ordered iterable of numbers will do (list, tuple, generator, numpy array); text,
    mappings and sets are not sequences of points.
    """
    if isinstance(value, _NOT_A_SEQUENCE) or not isinstance(value, Iterable):
        raise _bad_value({name: value})
    items = list(value)
    if not items:
        return None
    try:
        packed = pack_doubles(items)
    except _BAD_VALUE:
        raise _bad_value({f"{name}[{i}]": v for i, v in enumerate(items)}) from None
    return Column(name, step, when, packed, overwrite)


def _mixed_rows(
    data: Mapping[str, object], step: float | None, when: float, overwrite: bool
) -> list[Record]:
    """The slow path of `float_rows`: numbers into one Rows, each list into its own Column."""
    keys: list[str] = []
    numbers: list[object] = []
    records: list[Record] = []
    for key, value in data.items():
        try:
            _PACK_ONE(value)
        except _BAD_VALUE:
            column = _column(key, value, step, when, overwrite)
            if column is not None:
                records.append(column)
            continue
        keys.append(key)
        numbers.append(value)
    if keys:
        packed = double_packer(len(numbers)).pack(*numbers)
        records.insert(0, Rows(step, when, tuple(keys), packed, overwrite))
    return records


def _learn(keys: Iterable[object], known: set[str]) -> None:
    for key in keys:
        if key not in known:
            known.add(check_name(key, "series name"))


def _bad_value(data: Mapping[Any, Any]) -> InvalidArgumentError:
    for key, value in data.items():
        try:
            _PACK_ONE(value)
        except _BAD_VALUE:
            return InvalidArgumentError(
                f"value of {key!r} must be a real number, got {type(value).__name__}: {value!r:.60}"
            )
    return InvalidArgumentError("values must be real numbers")
