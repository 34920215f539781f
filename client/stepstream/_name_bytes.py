"""Cut a batch's records so that no batch carries more series-name bytes than the service
takes (`rules.MAX_BATCH_NAME_BYTES`; the service refuses such a batch with
`BATCH_NAME_BYTES_TOO_LARGE`). Counted as the service counts them: every record's names,
each time they appear. Most batches need no counting at all: a name is at most
`MAX_NAME_BYTES` bytes, so few points cannot reach the bound.
"""

from __future__ import annotations

from ._records import Column, Record, Rows
from .rules import MAX_BATCH_NAME_BYTES, MAX_NAME_BYTES


def name_size(name: str) -> int:
    """A series name's UTF-8 bytes, as the service counts them."""
    return len(name) if name.isascii() else len(name.encode("utf-8", "surrogatepass"))


def _names(record: Record) -> int:
    if isinstance(record, tuple):  # a one-key call's Point: (step, time, name, value)
        return name_size(record[2])
    if isinstance(record, Column):
        return name_size(record.name)
    return sum(map(name_size, record.keys))


def _count(record: Record) -> int:
    """Names a record carries, without measuring them."""
    return len(record.keys) if isinstance(record, Rows) else 1


def split_by_name_bytes(
    records: list[Record], limit: int = MAX_BATCH_NAME_BYTES
) -> list[list[Record]]:
    """`records` in order, in as few consecutive parts as keep each part's name bytes within
    `limit`; a `Rows` record with more name bytes than that is itself cut between keys."""
    names = sum(map(_count, records))
    if names * MAX_NAME_BYTES <= limit:
        return [records]
    parts: list[list[Record]] = [[]]
    size = 0
    for record in records:
        pieces: list[Record] = [record]
        if isinstance(record, Rows) and _names(record) > limit:
            pieces = _cut_rows(record, limit)
        for piece in pieces:
            n = _names(piece)
            if parts[-1] and size + n > limit:
                parts.append([])
                size = 0
            parts[-1].append(piece)
            size += n
    return parts


def _cut_rows(rows: Rows, limit: int) -> list[Record]:
    out: list[Record] = []
    while rows.keys:
        size = count = 0
        for key in rows.keys:
            n = name_size(key)
            if count and size + n > limit:
                break
            size += n
            count += 1
        if count == len(rows.keys):
            out.append(rows)
            break
        head, rows = rows.split(count)
        out.append(head)
    return out
