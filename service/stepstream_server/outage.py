"""Outages as the ingest worker lives through them: the store refusing writes (one log line
when it starts, one when it ends, the health status in between, and the capped backoff between
attempts), and Redis unreachable (one line when it starts, one when it ends).

The worker reports every attempt that failed because the store refused writes
(`StoreUnavailable`) and every commit that landed; this class turns that into two
transitions (docs/faults.md), never into one line per batch.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from .errors import ServiceError

log = logging.getLogger("stepstream")

# Between attempts while the store refuses writes: doubling from MIN to MAX, with jitter, so
# that the worker notices the store is back within about MAX seconds.
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


class StoreOutage:
    """Whether the store takes writes, as far as the last attempt showed."""

    def __init__(self, on_change: Callable[[bool], Awaitable[None]] | None = None) -> None:
        self.on_change = on_change
        self.since: float | None = None  # monotonic start of the outage under way
        self.attempts = 0  # failed attempts in this outage
        self.outages = 0  # outages since start, for tests and stats
        self._backoff = BACKOFF_MIN

    @property
    def active(self) -> bool:
        return self.since is not None

    async def failed(self, detail: str) -> None:
        """An attempt failed because the store refused it."""
        self.attempts += 1
        if self.since is not None:
            return
        self.since = time.monotonic()
        self.outages += 1
        log.warning(
            "store outage: the store refuses writes (%s); holding queued batches and retrying"
            " every %g s at most, health NOT_SERVING until it takes writes again",
            detail,
            BACKOFF_MAX,
        )
        if self.on_change is not None:
            await self.on_change(False)

    async def succeeded(self) -> None:
        """A commit landed: the store takes writes."""
        self._backoff = BACKOFF_MIN
        if self.since is None:
            return
        lasted, attempts = time.monotonic() - self.since, self.attempts
        self.since, self.attempts = None, 0
        log.warning(
            "store outage over: the store takes writes again after %.1f s (%d failed attempts)",
            lasted,
            attempts,
        )
        if self.on_change is not None:
            await self.on_change(True)

    async def pause(self) -> None:
        """Wait before the next attempt while the outage lasts (jittered, capped doubling)."""
        if self.since is None:
            return
        await asyncio.sleep(self._backoff * (0.5 + random.random() / 2))
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)


class RedisOutage:
    """Whether the ordering check reaches Redis, as far as the last group showed. While it
    does not, each group fails retryably (`FLOORS_UNAVAILABLE`: the judge tried for ~12 s) and
    its clients re-send; this turns that into two log lines, never a traceback per group."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.failures = 0  # groups failed (or leases not released) in this outage
        self.outages = 0

    @property
    def active(self) -> bool:
        return self.since is not None

    @staticmethod
    def caused(exc: BaseException) -> bool:
        """Whether `exc` says that Redis could not be reached."""
        if isinstance(exc, ServiceError):
            return exc.reason == "FLOORS_UNAVAILABLE"
        return isinstance(exc, RedisError)

    def failed(self, detail: str) -> None:
        self.failures += 1
        if self.since is not None:
            return
        self.since = time.monotonic()
        self.outages += 1
        log.warning(
            "redis outage: the ordering check cannot reach Redis (%s); batches fail retryably"
            " (FLOORS_UNAVAILABLE) and clients re-send them until it answers",
            detail,
        )

    def succeeded(self) -> None:
        if self.since is None:
            return
        lasted, failures = time.monotonic() - self.since, self.failures
        self.since, self.failures = None, 0
        log.warning(
            "redis outage over: Redis answers again after %.1f s (%d failed groups)",
            lasted,
            failures,
        )
