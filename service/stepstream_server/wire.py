"""An AppendPointsRequest's raw bytes to a request: the entry bound counted on the wire, and a
large batch parsed off the event loop.

gRPC calls the deserializer (`lenient_request`) on the event loop, for every stream. A small
request (`WHOLE_BYTES` or less: at most a few milliseconds of parsing, and too short to hold
more than MAX_BATCH_ENTRIES entries, each taking at least two bytes) is parsed there at once. A
large one in the shape every client sends, one `batch` field and nothing else, is handed over
unparsed (`Unparsed`) and parsed by its stream on a thread, in pieces of `PIECE_FIELDS` fields
of the batch (`parse`): each piece is counted on the wire (a batch of more than
MAX_BATCH_ENTRIES entries is refused before the rest is looked at, whatever the request's size)
and merged into the batch with the C parser. Merging a message's fields piece by piece is
parsing their concatenation (protobuf's merge rule), so the request is the one the parser would
have made. A large request of another shape (fields other than its batch: no client sends
one) is counted on the wire up to the limit and parsed at once, as before.

Field numbers: see ingest.proto (AppendPointsRequest.batch = 2; PointBatch.sequence = 1,
float_series = 2, string_series = 3, float_blocks = 4), the same tags the client's encoder
writes by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from stepstream.v1 import ingest_pb2

from .decode import too_many_entries
from .limits import MAX_BATCH_ENTRIES
from .model import BatchFailure

__all__ = ["Malformed", "Oversized", "Parsed", "Request", "Unparsed", "lenient_request", "parse"]

# A request of at most this many bytes is parsed at once by the deserializer.
WHOLE_BYTES = 64 * 1024
assert WHOLE_BYTES < 2 * (MAX_BATCH_ENTRIES + 1)  # so it cannot exceed the entry bound
# Fields of the batch merged at a time (a few hundred microseconds of scanning and parsing).
PIECE_FIELDS = 512

_REQUEST_BATCH = 0x12  # AppendPointsRequest.batch, length-delimited
_SEQUENCE = 0x08  # PointBatch.sequence, a varint
_ENTRY_TAGS = (0x12, 0x1A, 0x22)  # float_series, string_series, float_blocks


@dataclass(frozen=True)
class Malformed:
    """A request that could not be decoded (garbage bytes); answered, never fatal."""

    detail: str


@dataclass(frozen=True)
class Oversized:
    """A batch refused on its raw bytes, before parsing."""

    sequence: int
    failure: BatchFailure


@dataclass(frozen=True)
class Unparsed:
    """A large request whose one field is its batch, `data[start:]`; parsed by `parse`."""

    data: bytes
    start: int


Parsed = ingest_pb2.AppendPointsRequest | Malformed | Oversized
Request = Parsed | Unparsed


class _TooManyEntries(Exception):
    def __init__(self, sequence: int) -> None:
        self.sequence = sequence


def lenient_request(data: bytes) -> Request:
    """The deserializer of AppendPoints: never raises, never holds the loop for long."""
    if len(data) > WHOLE_BYTES:
        start = _lone_batch(data)
        if start is not None:
            return Unparsed(data, start)
        refused = oversized(data)
        if refused is not None:
            return Oversized(*refused)
    return _whole(data)


def parse(request: Unparsed) -> Parsed:
    """The request, its batch merged a piece at a time, or Oversized once its entries pass the
    bound, or Malformed. On a thread: each piece holds the GIL for a few hundred microseconds at
    most, where one parse of a 19 MB request would hold it for a second."""
    data = request.data
    parsed = ingest_pb2.AppendPointsRequest()
    batch = parsed.batch
    batch.SetInParent()  # an empty batch is still a batch
    try:
        for start, end in _pieces(data, request.start, len(data)):
            batch.MergeFromString(data[start:end])
    except _TooManyEntries as exc:
        return Oversized(exc.sequence, too_many_entries(None))
    except (IndexError, ValueError):  # does not scan: the parser says what is wrong
        return _whole(data)
    except DecodeError as exc:
        return Malformed(str(exc))
    return parsed


def oversized(data: bytes) -> tuple[int, BatchFailure] | None:
    """(sequence, failure) when the raw AppendPointsRequest carries a batch of more than
    MAX_BATCH_ENTRIES entries; None otherwise, also for bytes that do not scan (the parser then
    says what is wrong with them)."""
    try:
        i, end = 0, len(data)
        while i < end:
            key, i = _varint(data, i)
            if key == _REQUEST_BATCH:
                size, i = _varint(data, i)
                for _ in _pieces(data, i, min(end, i + size)):
                    pass
                return None
            i = _skip(data, i, key)
    except _TooManyEntries as exc:
        return exc.sequence, too_many_entries(None)
    except (IndexError, ValueError):
        return None
    return None


def _whole(data: bytes) -> Parsed:
    try:
        return ingest_pb2.AppendPointsRequest.FromString(data)
    except DecodeError as exc:
        return Malformed(str(exc))


def _lone_batch(data: bytes) -> int | None:
    """Where the batch starts when the request is one batch field and nothing else."""
    if data[0] != _REQUEST_BATCH:
        return None
    try:
        size, start = _varint(data, 1)
    except (IndexError, ValueError):
        return None
    return start if start + size == len(data) else None


def _pieces(data: bytes, i: int, end: int) -> Iterator[tuple[int, int]]:
    """The batch's fields in `data[i:end]`, as ranges of up to PIECE_FIELDS whole fields;
    raises _TooManyEntries at entry MAX_BATCH_ENTRIES + 1, IndexError or ValueError for bytes
    that do not scan."""
    sequence = entries = fields = 0
    start = i
    while i < end:
        key = data[i]
        if key in _ENTRY_TAGS:
            entries += 1
            if entries > MAX_BATCH_ENTRIES:
                raise _TooManyEntries(sequence)
            size = data[i + 1]
            if size < 0x80:  # the common short entry: one length byte
                i += 2 + size
            else:
                size, i = _varint(data, i + 1)
                i += size
        else:
            key, i = _varint(data, i)
            if key == _SEQUENCE:
                sequence, i = _varint(data, i)
            else:
                i = _skip(data, i, key)
        fields += 1
        if fields == PIECE_FIELDS:
            if i > end:
                raise IndexError("a field runs past the batch")
            yield start, i
            start, fields = i, 0
    if i != end:
        raise IndexError("a field runs past the batch")
    if i > start:
        yield start, i


def _skip(data: bytes, i: int, key: int) -> int:
    wire = key & 7
    if wire == 0:
        return _varint(data, i)[1]
    if wire == 2:
        size, i = _varint(data, i)
        return i + size
    if wire == 1:
        return i + 8
    if wire == 5:
        return i + 4
    raise ValueError(f"wire type {wire}")


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at data[i] and the index after it."""
    value, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
