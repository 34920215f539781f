"""The spool as the sender's queue: what is in the file, what is loaded for sending, what is
durable, and how a queued operation becomes a spool entry and back (docs/spool.md).
`_spill` decides when to use it; `_spool` is the file."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepstream.v1 import runs_pb2

from ._columnar import EncodedBatch
from ._spool import Entry, NewEntry, SpoolError, SpoolFile

logger = logging.getLogger("stepstream")

# Answered batches are deleted from the file at most this often (a lost delete only means a
# re-send answered as duplicate_batch).
DELETE_EVERY = 0.2


class _Recorder:
    """Stands in for the RunService stub: `op.call(_Recorder())` returns (method, request)
    instead of calling, so a queued operation can be written to the spool."""

    def __getattr__(self, method: str) -> Callable[..., tuple[str, bytes]]:
        def record(request: Any, **_: Any) -> tuple[str, bytes]:
            return method, request.SerializeToString()

        return record


def record_call(call: Callable[[Any], Any]) -> tuple[str, bytes]:
    """The (RunService method, serialized request) of an operation's unary call."""
    method, body = call(_Recorder())
    return str(method), bytes(body)


def replay_call(method: str, body: bytes, timeout: float) -> Callable[[Any], Any]:
    """The unary call of a spooled operation, for Sender._unary."""
    request_type = getattr(runs_pb2, f"{method}Request", None)
    if request_type is None:
        raise SpoolError(f"the spool holds an unknown operation {method!r}")
    request = request_type.FromString(body)
    return lambda stub: getattr(stub, method)(request, timeout=timeout)


@dataclass(frozen=True, slots=True)
class Planned:
    """An append being written: its entries, how many re-write in-memory batches first."""

    entries: list[NewEntry]
    prefix: int
    had_unloaded: bool
    top_before: int


class Spill:
    """The spool of one sender: its file (opened lazily), what is loaded, what is durable."""

    def __init__(
        self,
        *,
        path: Path | None,
        meta: dict[str, str],
        max_bytes: int | None,
        file: SpoolFile | None = None,
    ) -> None:
        self.path = file.path if file is not None else path
        self._meta = meta
        self._max_bytes = max_bytes
        self.file = file
        self.loaded_pos = 0  # entries up to this position are in memory, or done
        self.last_pos = 0
        self.top_sequence = 0  # highest batch sequence in the file
        self._spooled: dict[int, int] = {}  # sequence -> points of batches in the file
        self.spooled_points = 0
        self._answered = 0
        self._deleted = 0
        self._last_delete = 0.0
        self.full_until = 0.0
        self.warned_full = False
        self.engaged = False
        if file is not None:
            for entry in file.entries():
                if entry.is_batch:
                    self._spooled[entry.sequence] = entry.points
            self.spooled_points = sum(self._spooled.values())
            self.last_pos = file.last_pos()
            self.top_sequence = file.last_sequence()
            self.engaged = self.last_pos > 0

    @property
    def available(self) -> bool:
        return self.path is not None

    @property
    def has_unloaded(self) -> bool:
        return self.last_pos > self.loaded_pos

    def append(self, unacked: Iterable[EncodedBatch], new: list[NewEntry]) -> None:
        """Write `new` durably, after every unanswered in-memory batch not in the file yet
        (so that nothing older than a spooled batch lives only in memory)."""
        planned = self.prepare(unacked, new)
        if planned is not None:
            self.committed(planned, self.write(planned))

    def prepare(self, unacked: Iterable[EncodedBatch], new: list[NewEntry]) -> Planned | None:
        """The entries of an append (on the loop thread); None when there is nothing."""
        if self.file is None:
            if self.path is None:
                raise SpoolError("this run has no spool")
            self.file = SpoolFile(self.path, create=self._meta, max_bytes=self._max_bytes)
        prefix = [b for b in unacked if b.sequence > self.top_sequence]
        entries: list[NewEntry] = [(b.sequence, b.points, "", b.request) for b in prefix]
        entries += new
        if not entries:
            return None
        planned = Planned(entries, len(prefix), self.has_unloaded, self.top_sequence)
        top = max((e[0] for e in entries if not e[2]), default=0)
        self.top_sequence = max(self.top_sequence, top)  # a later prepare must not repeat them
        return planned

    def write(self, planned: Planned) -> list[int]:
        """The file I/O of an append (may run on the writer thread); SpoolFull on no room."""
        assert self.file is not None
        return self.file.append(planned.entries)

    def failed(self, planned: Planned) -> None:
        self.top_sequence = planned.top_before

    def committed(self, planned: Planned, positions: list[int]) -> None:
        self.last_pos = positions[-1]
        if planned.prefix and not planned.had_unloaded:
            self.loaded_pos = positions[planned.prefix - 1]  # those are in memory already
        for sequence, points, method, _ in planned.entries:
            if not method:
                self._spooled[sequence] = points
                self.spooled_points += points

    def load(self, room: int) -> list[Entry]:
        """The next entries to send: up to `room` batches, or one operation."""
        assert self.file is not None
        entries = self.file.entries(after=self.loaded_pos, limit=max(room, 1))
        if not entries:
            self.loaded_pos = self.last_pos
            return []
        if not entries[0].is_batch:
            entries = entries[:1]
        else:
            cut = next((i for i, e in enumerate(entries) if not e.is_batch), len(entries))
            entries = entries[:cut]
        self.loaded_pos = entries[-1].pos
        return entries

    def unload(self, pos: int) -> None:
        """An operation could not be run (the service went away): load it again later."""
        self.loaded_pos = min(self.loaded_pos, pos - 1)

    def answered(self, sequence: int) -> None:
        points = self._spooled.pop(sequence, None)
        if points is not None:
            self.spooled_points -= points
            self._answered = max(self._answered, sequence)

    def op_done(self, pos: int) -> None:
        if self.file is not None:
            self.file.delete(pos)

    def flush_deletes(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.file is None or self._answered <= self._deleted:
            return
        if force or now - self._last_delete >= DELETE_EVERY:
            with contextlib.suppress(SpoolError, OSError):
                self.file.delete_batches(self._answered)
                self._deleted = self._answered
            self._last_delete = now

    def close(self) -> None:
        """Close the file at the sender's end; removed when it holds nothing."""
        if self.file is None:
            return
        try:
            self.flush_deletes(force=True)
            left, points = self.file.counts()
            removed = self.file.close()
        except Exception as exc:  # a broken disk must not hide what the run did
            logger.warning("stepstream: closing the spool %s failed: %s", self.path, exc)
            return
        self.file = None
        if not removed:
            logger.warning(
                "stepstream: %d entries (%s points) wait in the spool %s; upload them with: "
                "stepstream sync %s",
                left,
                f"{points:,}",
                self.path,
                self.path,
            )
