"""Fresh planner statistics after a bulk load into PostgreSQL (issue 8).

Right after a large first load, `series` and `chunks` have never been analyzed, and the
planner's guesses make a ListSeries page of a wide run take ~0.5 s instead of 60-90 ms, until
autovacuum's first ANALYZE (a minute or more later). So the store checks, at most every
`CHECK_SECONDS` after a commit, whether either table changed by more than `MIN_ROWS` rows and
half its estimated size since it was last analyzed, and then ANALYZEs it on a thread of its
own (the commit does not wait; one ANALYZE at a time; best effort: a failure is logged and the
next check tries again).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from .base import StoreUnavailable

log = logging.getLogger(__name__)

TABLES = ("series", "chunks")
CHECK_SECONDS = 2.0
MIN_ROWS = 10_000

_STALE = (
    "SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
    " WHERE s.schemaname = current_schema() AND s.relname = ANY(%s)"
    " AND s.n_mod_since_analyze > GREATEST(%s, c.reltuples * 0.5)"
)


class Analyzer:
    """Decides when to ANALYZE and runs it; `read` lends an autocommit cursor."""

    def __init__(self, read: Callable[[], contextlib.AbstractContextManager[Any]]) -> None:
        self._read = read
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._running = False
        self.analyzed = 0  # ANALYZE statements run, for tests and stats

    def after_commit(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        with self._lock:
            if self._running:
                return
            self._running = True
            self._next_check = now + CHECK_SECONDS
        threading.Thread(target=self._check, name="store-analyze", daemon=True).start()

    def _check(self) -> None:
        try:
            with self._quiet(), self._read() as cur:
                cur.execute(_STALE, (list(TABLES), MIN_ROWS))
                for (table,) in cur.fetchall():
                    if table in TABLES:  # the names come from the catalogue; only ours
                        started = time.monotonic()
                        cur.execute(f"ANALYZE {table}")
                        self.analyzed += 1
                        log.info("ANALYZE %s took %.2f s", table, time.monotonic() - started)
        finally:
            with self._lock:
                self._running = False

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        try:
            yield
        except (StoreUnavailable, psycopg.Error, RuntimeError) as exc:  # the pool may be closed
            log.info("ANALYZE skipped: %s", exc)
