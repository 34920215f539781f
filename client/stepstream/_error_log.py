"""What a Run keeps of the errors the service reported: the recent ones, counts per kind, the
warnings logged without an on_error callback, and the summary `close()` logs."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

from ._types import IngestError, SenderStats

logger = logging.getLogger("stepstream")

MAX_KEPT_ERRORS = 1000
# Without on_error, this many errors per (reason, series) are logged; the rest only counted.
LOGGED_ERRORS_PER_KIND = 10


class ErrorLog:
    """The errors of one run. `report` is called from the sender's thread; the rest from any."""

    def __init__(self, run_id: str, on_error: Callable[[IngestError], None] | None) -> None:
        self.run_id = run_id  # set once the service named the run
        self._on_error = on_error
        self._errors: collections.deque[IngestError] = collections.deque(maxlen=MAX_KEPT_ERRORS)
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._points: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()

    @property
    def errors(self) -> list[IngestError]:
        """The most recent errors (up to MAX_KEPT_ERRORS), oldest first."""
        with self._lock:
            return list(self._errors)

    def report(self, error: IngestError) -> None:
        key = (error.reason, error.series)
        with self._lock:
            self._errors.append(error)
            self._counts[key] += 1
            self._points[key] += error.count
            seen = self._counts[key]
        if self._on_error is not None:
            self._on_error(error)
        elif seen <= LOGGED_ERRORS_PER_KIND:
            more = (
                " (further ones are counted and summarised at close())"
                if (seen == LOGGED_ERRORS_PER_KIND)
                else ""
            )
            logger.warning("stepstream: run %r: %s%s", self.run_id, error, more)

    def summarise(self, stats: SenderStats) -> None:
        """Log, once the run is closed, every kind of error and the points never acknowledged."""
        with self._lock:
            kinds = sorted(self._counts.items())
            points = dict(self._points)
        lines = []
        for (reason, series), count in kinds:
            where = f"series {series!r}" if series else "whole batches/run"
            lines.append(
                f"  {reason} ({where}): {points[reason, series]:,} points in {count:,} reports"
            )
        lost = stats.pending_points - stats.spooled_points  # spooled: the spool's own warning
        if lost > 0:
            lines.append(f"  {lost:,} logged points were never acknowledged")
        if lines:
            logger.warning(
                "stepstream: run %r closed with problems (acknowledged %s of %s points):\n%s",
                self.run_id,
                f"{stats.acknowledged_points:,}",
                f"{stats.logged_points:,}",
                "\n".join(lines),
            )
