"""Where the sender cuts what it took from the queue into batches: where a batch would
reorder a series (`split_for_blocks`, rule 3 of docs/coalescing.md) and where its names would
exceed what the service takes (`MAX_BATCH_NAME_BYTES`); `batch_encoders` does both."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from ._columnar import BatchEncoder
from ._name_bytes import split_by_name_bytes
from ._records import Column, Record, Rows
from .rules import MAX_BATCH_NAME_BYTES


def split_for_blocks(records: list[Record]) -> list[list[Record]]:
    """Cut `records` where a batch would reorder a series.

    The service applies a batch's FloatSeries entries before its FloatBlocks. Explicit-step
    rows travel in blocks; server-assigned, overwriting and `log_metric` list records travel
    as FloatSeries entries. A FloatSeries record for a series that already has block points in
    the batch would thus overtake them: such a record starts the next batch.
    """
    if Rows not in set(map(type, records)):  # no block rows (points, columns): no cut
        return [records] if records else []
    cuts = [0]
    in_blocks: set[str] = set()
    for index, record in enumerate(records):
        if type(record) is tuple:  # a Point travels in its series' FloatSeries entry
            if in_blocks and record[2] in in_blocks:
                cuts.append(index)
                in_blocks = set()
            continue
        if isinstance(record, Column):
            keys: tuple[str, ...] = (record.name,)
            as_block = False
        elif isinstance(record.values, bytes):  # type: ignore[union-attr]
            keys = record.keys  # type: ignore[union-attr]
            as_block = record.step is not None and not record.overwrite  # type: ignore[union-attr]
        else:
            continue  # strings: a namespace of their own, no blocks
        if as_block:
            in_blocks.update(keys)
        elif in_blocks and not in_blocks.isdisjoint(keys):
            cuts.append(index)
            in_blocks = set()
    if len(cuts) == 1:
        return [records] if records else []
    cuts.append(len(records))
    return [records[a:b] for a, b in itertools.pairwise(cuts)]


def batch_encoders(records: list[Record]) -> Iterator[BatchEncoder]:
    """`records` (in log order) as consecutive batches the service takes, each ready to
    `encode` with the next sequence number: cut by `split_for_blocks`, and again between
    records (`split_by_name_bytes`) for a batch whose names exceed MAX_BATCH_NAME_BYTES."""
    for part in split_for_blocks(records):
        encoder = BatchEncoder()
        encoder.add_all(part)
        if encoder.name_bytes() <= MAX_BATCH_NAME_BYTES:
            yield encoder
            continue
        for piece in split_by_name_bytes(part):
            encoder = BatchEncoder()
            encoder.add_all(piece)
            yield encoder
