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

    A `Point` (a one-key call, the per-call pattern) takes no lock at all: `put_point` is one
    deque append, which the GIL makes atomic and ordered with every other append, so queue
    order stays log order. The lock guards the counters of everything else: `_others` items
    that are not Points, holding `_other_points` points; the Points queued are therefore
    `len(_items) - _others`, and nothing counts them one by one. The bound is read without
    the lock, so threads logging at once may overshoot it by one point each.

    The consumer (the sender's event loop) calls `take`; when it finds the queue empty it arms
    `wakeup`, which the next put calls once, so a busy stream costs no wakeups at all. Arming
    sets the flag first and then looks at the queue again: a Point appended in between is
    either seen by that second look or sees the flag (and wakes the consumer), never neither.
    """

    def __init__(self, max_points: int, wakeup: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._items: deque[Record | Marker] = deque()
        self._max_points = max_points
        self._others = 0  # items that are not Points (Rows, Columns, markers)
        self._other_points = 0  # points those hold
        self._blocked = 0
        self._consumer_asleep = False
        self._wakeup = wakeup
        # Builds the exception a put raises once the buffer is closed (a fresh one each time).
        self._closed: Callable[[], BaseException] | None = None
        self._taken = 0  # points that left the queue: taken, or dropped by close()

    @property
    def queued_points(self) -> int:
        return self._other_points + len(self._items) - self._others

    @property
    def logged_points(self) -> int:
        """Every point ever put (counted as taken + queued: no counter per put)."""
        with self._lock:
            return self._taken + self.queued_points

    def put(self, item: Record | Marker, points: int) -> None:
        """Append `item`; block while the queue is full. Raises once the buffer is closed."""
        with self._lock:
            if self._closed is not None:
                raise self._closed()
            if points and self.queued_points and self.queued_points + points > self._max_points:
                self._blocked += 1
                try:
                    while (
                        self._closed is None
                        and self.queued_points
                        and self.queued_points + points > self._max_points
                    ):
                        self._not_full.wait()
                finally:
                    self._blocked -= 1
                if self._closed is not None:
                    raise self._closed()
            self._items.append(item)
            if type(item) is not tuple:  # a Point is counted by the deque's length
                self._others += 1
                self._other_points += points
            wake = self._consumer_asleep
            self._consumer_asleep = False
        if wake:
            self._wakeup()

    def put_point(self, point: Point) -> None:
        """`put(point, 1)` for a one-key log call without the lock: the per-call pattern's
        whole queueing cost. Falls back to `put` when the queue is full or closed."""
        items = self._items
        if (
            self._closed is not None
            or len(items) - self._others + self._other_points >= self._max_points
        ):
            self.put(point, 1)
            return
        items.append(point)
        if self._closed is not None:
            # close() ran between the check and the append. If its drain popped this point,
            # it left with the rest of the queue; if not, it landed after the drain, where
            # nothing would ever take it: take it back and raise, as `put` does.
            with self._lock:
                try:
                    items.remove(point)
                except ValueError:
                    return
            raise self._closed()
        if self._consumer_asleep:
            self._wake_consumer()

    def _wake_consumer(self) -> None:
        with self._lock:
            wake = self._consumer_asleep
            self._consumer_asleep = False
        if wake:
            self._wakeup()

    def take(self, max_points: int) -> list[Record | Marker] | None:
        """Pop records worth at most `max_points` points, or one marker.

        Records come in order and stop before a marker; a record larger than `max_points`
        is split and its tail stays at the front. Returns None when the queue is empty, after
        arming the wakeup for the next put.
        """
        with self._lock:
            items = self._items
            if not items:
                self._consumer_asleep = True
                if not items:  # looked at again after arming: see the class docstring
                    return None
                self._consumer_asleep = False
            if not self._others:  # only Points: no sizes to read, no markers to stop at
                popleft = items.popleft
                count = min(len(items), max_points)
                taken: list[Record | Marker] = [popleft() for _ in range(count)]
                self._taken += count
            else:
                taken = self._take_mixed(max_points)
            if self._blocked:
                self._not_full.notify_all()
            return taken

    def _take_mixed(self, max_points: int) -> list[Record | Marker]:
        """`take` (under the lock) from a queue that holds other records or markers."""
        items = self._items
        taken: list[Record | Marker] = []
        budget = max_points
        others = other_points = 0  # of those taken
        while items:
            item = items[0]
            if type(item) is tuple:  # a Point
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
                    others += 1
                break
            if size <= budget:
                taken.append(items.popleft())
                others += 1
                other_points += size
                budget -= size
            elif not taken:
                head, tail = item.split(budget)
                items[0] = tail
                taken.append(head)
                other_points += budget
                budget = 0
            else:
                break
            if budget == 0:
                break
        self._others -= others
        self._other_points -= other_points
        self._taken += max_points - budget
        return taken

    def close(self, error: Callable[[], BaseException]) -> list[Record | Marker]:
        """Make every later put raise `error()`, wake blocked ones, and return what was queued.

        A Point whose put_point was already past its check when the buffer closed either
        leaves with the rest (returned here) or is taken back by put_point, which raises.
        """
        with self._lock:
            if self._closed is None:
                self._closed = error
            items = self._items
            left = []
            while items:  # popped one by one: a concurrent put_point is never cleared away
                left.append(items.popleft())
            self._taken += self._other_points + len(left) - self._others
            self._others = self._other_points = 0
            self._not_full.notify_all()
            return left
