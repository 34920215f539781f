"""A store's background thread (the WAL checkpointer, the staged log's flusher): started on
the first `poke`, woken by every later one, ended by `stop`.

The thread is handed only a weak reference to its owner and the two events it waits on, so a
store dropped without close() lets its thread end."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

# The thread's body: (a weak reference to the owner, the wake event, the stop event).
Loop = Callable[[Any, threading.Event, threading.Event], None]


class OwnedThread:
    def __init__(self, name: str, loop: Loop, join_timeout: float) -> None:
        self._name = name
        self._loop = loop
        self._join_timeout = join_timeout
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def poke(self, owner: object) -> None:
        """Start the thread for `owner` if it is not running yet, and wake it."""
        if self._thread is None:
            with self._guard:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(
                        target=self._loop,
                        args=(weakref.ref(owner), self._wake, self._stop),
                        name=self._name,
                        daemon=True,
                    )
                    self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        """End the thread after the pass under way, if any; later pokes do nothing."""
        with self._guard:
            self._stop.set()
            self._wake.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._join_timeout)
