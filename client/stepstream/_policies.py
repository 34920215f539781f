"""What a Run does when the tracker is away or says no: its policies, checked in one place.

- `mode`: "online" (default) or "offline" (`STEPSTREAM_MODE=offline`): log only to the spool.
- `on_full`: "spill" (default: what the memory bound cannot hold goes to the disk spool) or
  "block" (log calls wait for the sender).
- `on_unavailable`: "offline" (default: an unreachable service turns the run offline, the
  training loop goes on) or "raise" (fail fast, as before).
- `on_rejection`: "report" (default: to on_error / the log) or "raise" (the first rejected
  point's error is raised at the next log call).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from ._exceptions import InvalidArgumentError, PointsRejectedError, RPCError
from ._types import IngestError

MODES = ("online", "offline")
ON_FULL = ("spill", "block")
ON_UNAVAILABLE = ("offline", "raise")
ON_REJECTION = ("report", "raise")
# Reasons that are not about points the service refused (the sender giving up is a
# RunClosedError of its own; a failed config update has count 0).
_NOT_REJECTIONS = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "NOT_REPEATED"})


def _choice(value: object, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidArgumentError(
            f"{what} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
        )
    return str(value)


@dataclass
class Policies:
    mode: str
    on_full: str
    on_unavailable: str
    on_rejection: str
    spool_max_bytes: int | None
    generated_writer: bool = True  # the Run generated its writer ID (no writer_id given)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rejection: IngestError | None = field(default=None, repr=False)
    _raised: bool = field(default=False, repr=False)

    @classmethod
    def check(
        cls,
        mode: str | None,
        on_full: str,
        on_unavailable: str,
        on_rejection: str,
        spool_max_bytes: int | None,
        writer_id: str | None,
    ) -> Policies:
        if mode is None:
            env = os.environ.get("STEPSTREAM_MODE", "").strip().lower()
            mode = env or "online"
            what = "STEPSTREAM_MODE" if env else "mode"
        else:
            what = "mode"
        mode = _choice(mode, MODES, what)
        if spool_max_bytes is not None and (
            isinstance(spool_max_bytes, bool)
            or not isinstance(spool_max_bytes, int)
            or spool_max_bytes < 65536
        ):
            raise InvalidArgumentError(
                f"spool_max_bytes must be an int of at least 65536 (bytes), got {spool_max_bytes!r}"
            )
        if mode == "offline" and writer_id is not None:
            raise InvalidArgumentError(
                "an offline run numbers its batches from 1 under a writer ID of its own; "
                f"writer_id={writer_id!r} may already have batches on the service: omit it"
            )
        return cls(
            mode=mode,
            on_full=_choice(on_full, ON_FULL, "on_full"),
            on_unavailable=_choice(on_unavailable, ON_UNAVAILABLE, "on_unavailable"),
            on_rejection=_choice(on_rejection, ON_REJECTION, "on_rejection"),
            spool_max_bytes=spool_max_bytes,
            generated_writer=writer_id is None,
        )

    @property
    def offline(self) -> bool:
        return self.mode == "offline"

    def goes_offline(self, error: RPCError) -> bool:
        """Whether a creation that failed with `error` turns the run offline instead."""
        return (
            self.on_unavailable == "offline"
            and self.generated_writer
            and error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        )

    def watch(self, report: Callable[[IngestError], None]) -> Callable[[IngestError], None]:
        """`report`, noting the first rejection of points for `check_rejection`."""
        if not self.raises_rejections:
            return report

        def watched(error: IngestError) -> None:
            if error.count and error.reason not in _NOT_REJECTIONS:
                with self._lock:
                    if self._rejection is None:
                        self._rejection = error
            report(error)

        return watched

    @property
    def raises_rejections(self) -> bool:
        """Whether log calls must `check_rejection` (only `on_rejection="raise"` records one)."""
        return self.on_rejection == "raise"

    def check_rejection(self) -> None:
        """Raise the first rejection, once, at the log call after it arrived."""
        if self._rejection is None or self._raised:
            return
        with self._lock:
            if self._raised:
                return
            self._raised = True
            error = self._rejection
        raise PointsRejectedError(error)
