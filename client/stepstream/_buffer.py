"""The bounded, thread-safe queue between the trainer's log calls and the sender thread."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from ._records import Column, Point, Record, Rows

Marker = TypeVar("Marker")


class Buffer(Generic[Marker]):
    """A FIFO of log records (counted in points) and markers (operations, counted as 0).

    `put` is what a log call costs: one lock round and a deque append. When the records queued
    hold `max_points` points or more, `put` blocks until the sender has taken some (the
    backpressure policy: never drop). A single record larger than the bound is still accepted
    when the queue is empty, so nothing can deadlock.

    The consumer (the sender's event loop) calls `take`; when it finds the queue empty it arms
    `wakeup`, which the next `put` calls once, so a busy stream costs no wakeups at all.
    """

    def __init__(self, max_points: int, wakeup: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._items: deque[Record | Marker] = deque()
        self._max_points = max_points
        self._points = 0
        self._blocked = 0
        self._consumer_asleep = False
        self._wakeup = wakeup
        # Builds the exception a put raises once the buffer is closed (a fresh one each time).
        self._closed: Callable[[], BaseException] | None = None
        self._taken = 0  # points that left the queue: taken, or dropped by close()

    @property
    def queued_points(self) -> int:
        return self._points

    @property
    def logged_points(self) -> int:
        """Every point ever put (counted as taken + queued: one counter less per put)."""
        with self._lock:
            return self._taken + self._points

    def put(self, item: Record | Marker, points: int) -> None:
        """Append `item`; block while the queue is full. Raises once the buffer is closed."""
        with self._lock:
            if self._closed is not None:
                raise self._closed()
            if points and self._points and self._points + points > self._max_points:
                self._blocked += 1
                try:
                    while (
                        self._closed is None
                        and self._points
                        and self._points + points > self._max_points
                    ):
                        self._not_full.wait()
                finally:
                    self._blocked -= 1
                if self._closed is not None:
                    raise self._closed()
            self._items.append(item)
            self._points += points
            wake = self._consumer_asleep
            self._consumer_asleep = False
        if wake:
            self._wakeup()

    def put_point(self, point: Point) -> None:
        """`put(point, 1)` for a one-key log call, without the general path's branches: the
        per-call pattern's whole queueing cost. Falls back to `put` when the queue is full or
        closed."""
        with self._lock:
            if self._closed is None and self._points < self._max_points:
                self._items.append(point)
                self._points += 1
                if not self._consumer_asleep:
                    return
                self._consumer_asleep = False
                full = False
            else:
                full = True
        if full:
            self.put(point, 1)
        else:
            self._wakeup()

    def take(self, max_points: int) -> list[Record | Marker] | None:
        """Pop records worth at most `max_points` points, or one marker.

        Records come in order and stop before a marker; a record larger than `max_points`
        is split and its tail stays at the front. Returns None when the queue is empty, after
        arming the wakeup for the next `put`.
        """
        with self._lock:
            items = self._items
            if not items:
                self._consumer_asleep = True
                return None
            taken: list[Record | Marker] = []
            budget = max_points
            while items:
                item = items[0]
                if type(item) is tuple:  # a Point: the per-call pattern's fast lane
                    taken.append(items.popleft())
                    budget -= 1
                    if budget == 0:
                        break
                    continue
                if isinstance(item, (Rows, Column)):
                    size = item.points
                else:
                    if not taken:
                        taken.append(items.popleft())
                    break
                if size <= budget:
                    taken.append(items.popleft())
                    budget -= size
                elif not taken:
                    head, tail = item.split(budget)
                    items[0] = tail
                    taken.append(head)
                    budget = 0
                else:
                    break
                if budget == 0:
                    break
            self._points -= max_points - budget
            self._taken += max_points - budget
            if self._blocked:
                self._not_full.notify_all()
            return taken

    def close(self, error: Callable[[], BaseException]) -> list[Record | Marker]:
        """Make every later put raise `error()`, wake blocked ones, and return what was queued."""
        with self._lock:
            if self._closed is None:
                self._closed = error
            left = list(self._items)
            self._items.clear()
            self._taken += self._points
            self._points = 0
            self._not_full.notify_all()
            return left
