"""Domain values shared by the worker, the store and the servicer. No protobuf below the servicer."""

from __future__ import annotations

import enum
import hashlib
import json
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
NO_CHUNK_CAP = 2**62


class RunState(enum.IntEnum):
    """Lifecycle states; the numbers are those of `stepstream.v1.RunState`."""

    RUNNING = 1
    STOPPED = 2
    FINISHED = 3
    FAILED = 4


class Origin(enum.IntEnum):
    """How an incarnation came to be; the numbers are those of `IncarnationOrigin`."""

    CREATED = 1
    FORKED = 2
    REWOUND = 3


@dataclass(frozen=True)
class Incarnation:
    """One immutable stretch of a run's history."""

    incarnation_id: str
    project: str
    run_id: str
    parent_incarnation_id: str | None
    parent_run_id: str | None
    fork_step: float | None
    # A chunk ID at least as high as every chunk of the parent's lineage that was durable when
    # the incarnation was created, and below every one written later: inheritance is a
    # snapshot, so parent chunks written later stay invisible to it.
    snapshot_chunk: int | None
    origin: Origin
    created_at: float
    archived: bool


@dataclass(frozen=True)
class RunRecord:
    """A run as stored."""

    project: str
    run_id: str
    experiment: str
    state: RunState
    tags: tuple[str, ...]
    description: str
    config: dict[str, Any]
    current_incarnation_id: str
    created_at: float
    updated_at: float
    failure_reason: str
    incarnations: tuple[Incarnation, ...] = ()
    values: dict[str, Any] = field(default_factory=dict)
    experiment_head: bool = False
    # Raised by every change ingest must see (docs/replicas.md); commits under an older epoch
    # of the run are refused.
    fence: int = 0


@dataclass(frozen=True)
class Segment:
    """One incarnation's contribution to a view: its points with step <= step_cap written in
    chunks with ID <= chunk_cap."""

    incarnation_id: str
    step_cap: float = math.inf
    chunk_cap: int = NO_CHUNK_CAP


@dataclass
class SeriesEntry:
    """One series' points in one batch, decoded and validated for shape."""

    name: str
    is_string: bool
    steps: Floats | None  # None when the server assigns steps
    values: Floats | list[str]
    timestamps: Floats
    assign: bool
    overwrite: bool = False

    def __post_init__(self) -> None:
        # Read for every entry on the hot path; computed once.
        self.first_step = math.nan if self.steps is None else float(self.steps[0])
        self.last_step = math.nan if self.steps is None else float(self.steps[-1])
        # The series' key among its incarnation's floors: float and string names are apart.
        self.field = ("s:" if self.is_string else "f:") + self.name

    @classmethod
    def block(
        cls, names: list[str], steps: Floats, columns: Floats, timestamps: Floats
    ) -> list[SeriesEntry]:
        """The entries of one FloatBlock's series (row i of `columns` is names[i]'s values):
        they share the steps and timestamps arrays (the store packs those once) and the
        fields __post_init__ would compute for each."""
        shared = {
            "is_string": False,
            "steps": steps,
            "timestamps": timestamps,
            "assign": False,
            "overwrite": False,
            "first_step": float(steps[0]),
            "last_step": float(steps[-1]),
        }
        new = object.__new__
        out = []
        for name, column in zip(names, columns, strict=True):
            e = new(cls)
            d = e.__dict__  # filled as a dict: setting attributes one by one costs twice
            d.update(shared)
            d["name"] = name
            d["values"] = column
            d["field"] = "f:" + name
            out.append(e)
        return out

    @property
    def count(self) -> int:
        return len(self.values)


_PACK_DOUBLE = struct.Struct("<d").pack


def value_token(value: float | str) -> str:
    """A short exact fingerprint of a value, to recognise a re-sent point at the floor. Floats
    by their bits, so a re-sent NaN matches only the very same NaN."""
    if isinstance(value, str):
        digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=12)
        return "s" + digest.hexdigest()
    return _PACK_DOUBLE(value).hex()


@dataclass(frozen=True)
class Rejection:
    """Points of one series entry that were not stored, and why."""

    series: str
    reason: str
    message: str
    count: int
    first_step: float = math.nan
    last_step: float = math.nan
    floor: float = math.nan
    is_string: bool = False


@dataclass(frozen=True)
class Assigned:
    """Steps the server gave an entry sent with assign_steps."""

    series: str
    first_step: float
    count: int
    is_string: bool = False


@dataclass(frozen=True)
class AppendAck:
    """The acknowledgement of an applied batch; stored with the batch for exact re-acks."""

    accepted: int
    duplicates: int
    rejections: tuple[Rejection, ...]
    assigned: tuple[Assigned, ...]
    incarnation_id: str
    duplicate_batch: bool = False

    def to_json(self) -> str:
        return json.dumps({"kind": "ack", **asdict(self)}, allow_nan=True)


@dataclass(frozen=True)
class BatchFailure:
    """A whole batch refused; stored like an ack so that a re-send gets the same answer."""

    code: str  # grpc.StatusCode name
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    duplicate_batch: bool = False

    def to_json(self) -> str:
        return json.dumps({"kind": "failure", **asdict(self)})


Outcome = AppendAck | BatchFailure


def outcome_from_json(text: str, *, duplicate: bool) -> Outcome:
    data = json.loads(text)
    kind = data.pop("kind")
    data["duplicate_batch"] = duplicate
    if kind == "failure":
        return BatchFailure(**data)
    data["rejections"] = tuple(Rejection(**r) for r in data["rejections"])
    data["assigned"] = tuple(Assigned(**a) for a in data["assigned"])
    return AppendAck(**data)


@dataclass(frozen=True)
class ChunkWrite:
    """Accepted points of one series to store as one chunk."""

    incarnation_id: str
    name: str
    is_string: bool
    steps: Floats
    values: Floats | list[str]
    timestamps: Floats
    # The first chunk of a new generation of the series (an overwrite).
    new_generation: bool = False

    @classmethod
    def whole(cls, incarnation_id: str, entries: Sequence[SeriesEntry]) -> list[ChunkWrite]:
        """One chunk per entry, of all its points (explicit steps, no overwrite)."""
        return cls._many(
            incarnation_id,
            [e.name for e in entries],
            [e.is_string for e in entries],
            [e.steps for e in entries],  # type: ignore[misc]
            [e.values for e in entries],
            [e.timestamps for e in entries],
        )

    @classmethod
    def shared(
        cls, incarnation_id: str, names: list[str], steps: Floats, values: Floats, ts: Floats
    ) -> list[ChunkWrite]:
        """Float series sharing steps and timestamps: names[i]'s values are row i."""
        return cls._many(incarnation_id, names, repeat(False), repeat(steps), values, repeat(ts))

    @classmethod
    def _many(
        cls,
        incarnation_id: str,
        names: Iterable[str],
        is_string: Iterable[bool],
        steps: Iterable[Floats],
        values: Iterable[Floats | list[str]],
        timestamps: Iterable[Floats],
    ) -> list[ChunkWrite]:
        # Filled in directly rather than through the frozen __init__, which sets each field by
        # `object.__setattr__`: a wide block makes a thousand of these per batch.
        new = object.__new__
        out = []
        for name, string, s, v, t in zip(names, is_string, steps, values, timestamps, strict=False):
            w = new(cls)
            d = w.__dict__  # item by item: a dict's update() with keywords costs twice as much
            d["incarnation_id"] = incarnation_id
            d["name"] = name
            d["is_string"] = string
            d["steps"] = s
            d["values"] = v
            d["timestamps"] = t
            d["new_generation"] = False
            out.append(w)
        return out


@dataclass(frozen=True)
class WriterCommit:
    """A writer's batch outcome to record with the points of the same transaction."""

    project: str
    run_id: str
    writer_id: str
    sequence: int
    outcome_json: str


@dataclass(frozen=True)
class SeriesPoints:
    """Points read back from the store, in step order."""

    name: str
    is_string: bool
    steps: Floats
    values: Floats | list[str]
    timestamps: Floats


@dataclass(frozen=True)
class SeriesSummary:
    """Count, last, min and max of one series in a view."""

    name: str
    is_string: bool
    count: int
    last_step: float
    last: float
    minimum: float
    maximum: float
    last_string: str = ""
    generation: int = 0
