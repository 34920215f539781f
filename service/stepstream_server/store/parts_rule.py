"""The store's rule for a batch committed in parts (docs/faults.md, section 5), shared by
both engines: what a part's writer commit carries, how its progress is written in the `acks`
row of the batch's sequence, and when the store must refuse it.

A part lands only right after the one before it: its start must be the progress stored for
its sequence (no partial row for the first part). Checked in the part's own transaction,
after the writer's row is read (and, in PostgreSQL, locked), so a part lands at most once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..model import AppendAck, Outcome, WriterCommit, outcome_from_json

Position = tuple[int, int]


@dataclass(frozen=True)
class PartCommit(WriterCommit):
    """A writer commit of one part of a batch: `start` is the part's first point;
    `partial` when it does not finish the batch (the writer's last sequence then stays)."""

    start: Position = (0, 0)
    partial: bool = False


def advances(w: WriterCommit) -> bool:
    """Whether the commit moves the writer's last sequence to its sequence."""
    return not (isinstance(w, PartCommit) and w.partial)


def refuses(w: WriterCommit, stored_outcome: str | None) -> bool:
    """A part whose start is not the stored progress of its sequence (read in the same
    transaction): it landed already, or the part before it has not."""
    if not isinstance(w, PartCommit):
        return False
    found = read_partial(stored_outcome)
    if w.start == (0, 0):
        return found is not None
    return found is None or found[0] != w.start


def partial_json(progress: Position, so_far: Outcome) -> str:
    """The acknowledgement row of a batch whose parts before `progress` are stored."""
    return json.dumps(
        {"kind": "partial", "progress": list(progress), "so_far": json.loads(so_far.to_json())},
        allow_nan=True,
    )


def read_partial(text: str | None) -> tuple[Position, AppendAck] | None:
    """(progress, acknowledgement so far) of a stored partial row; None for anything else."""
    if text is None:
        return None
    data = json.loads(text)
    if data.get("kind") != "partial":
        return None
    so_far = outcome_from_json(json.dumps(data["so_far"]), duplicate=False)
    if not isinstance(so_far, AppendAck):
        return None
    e, p = data["progress"]
    return (int(e), int(p)), so_far
