"""The ordering check: per-series floors cached in Redis, judged and advanced atomically, and
the epochs and leases that keep the judgments of many replicas honest (docs/replicas.md).

Keys (one run's keys share the hash tag `{project/run_id}`, so every script of a run runs in one
Redis Cluster slot):

    ss:{<project>/<run_id>}:run                       hash
        "epoch"      ->  the run's current epoch (an integer, as text)
        "t:<token>"  ->  lease deadline (ms, Redis clock) of an in-flight judgment
    ss:{<project>/<run_id>}:floors:<incarnation_id>:<epoch>   hash
        "f:<name>" / "s:<name>"  ->  "<floor step, %.17g> <value token> <mover>", the mover
                                     being the token of the judgment that last moved it, or "-";
                                     or "!": the series has no point in the store (a new one)
        "!loaded"                ->  "1" once the store's fence reached the epoch: the hash is
                                     open, and a series it lacks is loaded on first use

The store is the source of truth; floors are loaded from it per series, on first use, only
while "!loaded" stands (so after the store's fence reached the epoch), and never over a field
that is there: a floor a judgment moved at this epoch is never replaced (docs/replicas.md).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import NoScriptError, RedisError

LOADED = "!loaded"
# Floors of an idle run fall out of Redis after a day; they are rebuilt from the store.
FLOORS_TTL_MS = 86_400_000

# Raise the run's epoch to `target` (dropping every lease) unless it is already there.
_RAISE_LUA = """
local function raise(run, target)
  local cur = tonumber(redis.call('HGET', run, 'epoch') or '-1')
  if cur >= target then return tostring(cur) end
  redis.call('DEL', run)
  redis.call('HSET', run, 'epoch', tostring(target))
  return tostring(target)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS[1]: the run hash. KEYS[2]: the floor hash of the incarnation at ARGV[1].
# ARGV[1]: the epoch the caller believes; ARGV[2]: this judgment's token; ARGV[3]: lease (ms);
# ARGV[4]: the caller's own token prefix (its earlier judgments are not dependencies);
# ARGV[5]: the entries, 4 fields each, every field ended by a NUL byte (names never hold NUL):
#   field   "f:<name>" or "s:<name>"
#   mode    "e" (explicit steps) or "a" (assign steps); "oe" / "oa" overwrite first: the
#           series' floor is taken as absent (-inf), as for a new series
#   arg     mode e: the entry's last (largest) step as %.17g; mode a: the number of points
#   token   value token of the entry's last point
# Returns {"epoch", <current epoch or "">} when the caller's epoch is not current (also after
# this script raised it: a lease had expired, or the floors are missing while a lease is held);
# {"load"} when the floors at this epoch are not open; {"need", fields} (each ended by NUL)
# when some entries' series are not loaded yet (nothing is judged then); else
# {"ok", floors, dependencies}:
# for each entry its floor before it was applied ("" for a new series, else "<step> <token>"),
# and the tokens of other callers' in-flight judgments that moved a floor read here, each ended
# by NUL. An explicit entry advances the floor to its last step when that is above it; an
# assigned entry takes steps floor+1 (math.floor(floor)+1 for a fractional floor; 0 for a new
# series) onwards. A judgment that moved a floor takes a lease under its token.
CHECK_SCRIPT = (
    _RAISE_LUA
    + """
local run, floors = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', run, 'epoch')
if epoch ~= ARGV[1] then return {'epoch', epoch or ''} end
local now = now_ms()
local leases = redis.call('HGETALL', run)
local held = false
for i = 1, #leases, 2 do
  if string.sub(leases[i], 1, 2) == 't:' then
    held = true
    if tonumber(leases[i + 1]) < now then
      return {'epoch', raise(run, tonumber(epoch) + 1)}
    end
  end
end
if redis.call('HEXISTS', floors, '!loaded') == 0 then
  if held then return {'epoch', raise(run, tonumber(epoch) + 1)} end
  return {'load'}
end
local me, own = ARGV[2], ARGV[4]
-- The entries, parsed in one pass; then every series' floor read with HMGET (in slices: Lua's
-- unpack takes a few thousand values at most) and written back with HSET at the end, the
-- floors of this script kept in `cur` meanwhile (a series may come more than once).
local fields, modes, args, tokens = {}, {}, {}, {}
for f, m, a, t in string.gmatch(ARGV[5], '(%Z*)%z(%Z*)%z(%Z*)%z(%Z*)%z') do
  local n = #fields + 1
  fields[n], modes[n], args[n], tokens[n] = f, m, a, t
end
local SLICE = 1000
local cur, asked, distinct, need = {}, {}, {}, {}
for i = 1, #fields do
  local field = fields[i]
  if not asked[field] then
    asked[field] = true
    distinct[#distinct + 1] = field
  end
end
for s = 1, #distinct, SLICE do
  local e = math.min(s + SLICE - 1, #distinct)
  local got = redis.call('HMGET', floors, unpack(distinct, s, e))
  for j = 1, e - s + 1 do
    if got[j] then cur[distinct[s + j - 1]] = got[j] else need[#need + 1] = distinct[s + j - 1] end
  end
end
if #need > 0 then
  need[#need + 1] = ''
  return {'need', table.concat(need, '\0')}
end
local out, seen, deps, sets = {}, {}, {}, {}
local moved = false
for i = 1, #fields do
  local field, mode, arg, token = fields[i], modes[i], args[i], tokens[i]
  local c = cur[field]
  local floor = nil
  if c == '!' then c = nil end
  if c then
    local a = string.find(c, ' ', 1, true)
    local b = string.find(c, ' ', a + 1, true)
    -- An overwrite starts the series afresh, but still follows whoever moved it last: its
    -- new generation must not be committed before that judgment's points.
    local mover = string.sub(c, b + 1)
    if mover ~= '-' and mover ~= me and string.sub(mover, 1, #own) ~= own then
      seen[mover] = true
    end
    if string.byte(mode, 1) ~= 111 then -- not 'o' (overwrite)
      floor = tonumber(string.sub(c, 1, a - 1))
      out[#out + 1] = string.sub(c, 1, b - 1)
    end
  end
  if floor == nil then out[#out + 1] = '' end
  if string.byte(mode, 1) == 111 then mode = string.sub(mode, 2) end
  local new = nil
  if mode == 'e' then
    if floor == nil or tonumber(arg) > floor then new = arg .. ' ' .. token .. ' ' .. me end
  else
    local start = 0
    if floor ~= nil then start = math.floor(floor) + 1 end
    local last = start + tonumber(arg) - 1
    if floor == nil or (start > floor and last >= start) then
      new = string.format('%.17g', last) .. ' ' .. token .. ' ' .. me
    end
  end
  if new then
    cur[field] = new
    sets[#sets + 1] = field
    sets[#sets + 1] = new
    moved = true
  end
end
for s = 1, #sets, 2 * SLICE do
  redis.call('HSET', floors, unpack(sets, s, math.min(s + 2 * SLICE - 1, #sets)))
end
for mover in pairs(seen) do
  if redis.call('HEXISTS', run, 't:' .. mover) == 1 then deps[#deps + 1] = mover end
end
if moved then redis.call('HSET', run, 't:' .. me, tostring(now + tonumber(ARGV[3]))) end
out[#out + 1] = ''
deps[#deps + 1] = ''
return {'ok', table.concat(out, '\0'), table.concat(deps, '\0')}
"""
)

# KEYS[1]: the run hash; KEYS[2]: the floor hash at ARGV[1]. Opens the floors at ARGV[1] if it
# is still the epoch (the caller raised the store's fence to it first); no floor is read here.
# Returns 1 when opened (or open already), 0 when the epoch moved.
LOAD_SCRIPT = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
if redis.call('HSETNX', KEYS[2], '!loaded', '1') == 1 then redis.call('PEXPIRE', KEYS[2], TTL) end
return 1
""".replace("TTL", str(FLOORS_TTL_MS))

# KEYS[1]: the run hash; KEYS[2]: the floor hash at ARGV[1]. ARGV[2..]: field, "<step> <token>"
# (or "!" for a series with no point) pairs as read from the store. Sets each field that is not
# there yet, only while ARGV[1] is the epoch and the floors are open: a field that is there was
# loaded or moved by a judgment already, and is newer than the store read. Returns the number set.
FILL_SCRIPT = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[2], '!loaded') == 0 then return 0 end
local set = 0
for i = 2, #ARGV, 2 do set = set + redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) end
return set
"""

# KEYS[1]: the run hash; KEYS[2] (optional): the floor hash the caller judged under, dropped
# when the epoch moves. ARGV[1]: the epoch to raise to. Returns the epoch now in force.
RAISE_SCRIPT = (
    _RAISE_LUA
    + """
local before = redis.call('HGET', KEYS[1], 'epoch')
local after = raise(KEYS[1], tonumber(ARGV[1]))
if KEYS[2] and after ~= before then redis.call('DEL', KEYS[2]) end
return after
"""
)

# KEYS[1]: the run hash. ARGV[1]: the epoch of the waiting judgment; ARGV[2..]: the tokens it
# depends on. Returns "moved" when the epoch is no longer ARGV[1] (also after raising it here
# because a dependency's lease expired), "wait" while a dependency holds its lease, else "ok":
# every dependency committed and released.
AWAIT_SCRIPT = (
    _RAISE_LUA
    + """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch ~= ARGV[1] then return 'moved' end
local now = now_ms()
local waiting = false
for i = 2, #ARGV do
  local deadline = redis.call('HGET', KEYS[1], 't:' .. ARGV[i])
  if deadline then
    if tonumber(deadline) < now then
      raise(KEYS[1], tonumber(epoch) + 1)
      return 'moved'
    end
    waiting = true
  end
end
if waiting then return 'wait' end
return 'ok'
"""
)


def run_key(project: str, run_id: str) -> str:
    return f"ss:{{{project}/{run_id}}}:run"


def floor_key(project: str, run_id: str, incarnation_id: str, epoch: int) -> str:
    return f"ss:{{{project}/{run_id}}}:floors:{incarnation_id}:{epoch}"


def fmt_step(step: float) -> str:
    return f"{step:.17g}"


def assigned_start(floor: float) -> float:
    """The first step the check script assigns after `floor` (-inf for a new series)."""
    return 0.0 if floor == -math.inf else float(math.floor(floor) + 1)


def pack_entries(
    fields: Sequence[str], modes: Sequence[str], args: Sequence[str], tokens: Sequence[str]
) -> str:
    """The check script's ARGV[5]: each entry's field, mode, argument and token, each ended
    by a NUL byte (see CHECK_SCRIPT)."""
    parts = [""] * (4 * len(fields))
    parts[0::4], parts[1::4], parts[2::4], parts[3::4] = fields, modes, args, tokens
    return "\0".join(parts) + "\0" if parts else ""


@dataclass(frozen=True)
class CheckRequest:
    """One run's entries to judge under `epoch`, in the floors of one incarnation: their
    fields, and the entries as the script reads them (`pack_entries`)."""

    project: str
    run_id: str
    incarnation_id: str
    epoch: int
    fields: Sequence[str]
    packed: str


@dataclass(frozen=True)
class CheckAnswer:
    """`kind` "ok" (floors, dependencies), "load", "need" (the fields to load from the store
    first), or "epoch" (the epoch in force, None if the run has none in this Redis). The
    floors are each entry's floor before it as the script returns it: "<step> <token>", or ""
    for a new series (verdict.py reads them)."""

    kind: str
    floors: list[str]
    dependencies: tuple[str, ...] = ()
    epoch: int | None = None
    needed: tuple[str, ...] = ()


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


class FloorCache:
    """Runs the scripts; one pipelined round trip serves every run of a group. Works with
    redis-py's standalone and cluster clients alike (every call names its keys)."""

    def __init__(self, client: Any, *, replica: str, lease_seconds: float) -> None:
        self.client = client
        self.replica = replica
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self._check = client.register_script(CHECK_SCRIPT)
        self._load = client.register_script(LOAD_SCRIPT)
        self._fill = client.register_script(FILL_SCRIPT)
        self._raise = client.register_script(RAISE_SCRIPT)
        self._await = client.register_script(AWAIT_SCRIPT)

    async def check(self, token: str, requests: Sequence[CheckRequest]) -> list[CheckAnswer]:
        """Judge every request in one round trip, under the judgment token `token`."""
        calls = []
        for r in requests:
            keys = [
                run_key(r.project, r.run_id),
                floor_key(r.project, r.run_id, r.incarnation_id, r.epoch),
            ]
            args = [str(r.epoch), token, self.lease_ms, self.replica + ".", r.packed]
            calls.append((keys, args))
        return [_answer(reply) for reply in await self._pipelined(self._check, calls)]

    async def _pipelined(
        self, script: Any, calls: Sequence[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """Run one script for many key sets in one round trip. EVALSHA goes through
        `execute_command` because redis-py's cluster pipeline refuses Script objects; a node
        that does not know the script (NOSCRIPT: it did not run) gets it loaded and only those
        calls are sent again. Any other error is raised: its script may have run."""
        if not calls:
            return []
        replies = await self._send(script, calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self.client.script_load(script.script)
            again = await self._send(script, [calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _send(self, script: Any, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    async def load(self, project: str, run_id: str, incarnation_id: str, epoch: int) -> None:
        """Open the floors at `epoch` (after the store's fence reached it)."""
        await self._load(
            keys=[run_key(project, run_id), floor_key(project, run_id, incarnation_id, epoch)],
            args=[str(epoch)],
        )

    async def fill(
        self,
        project: str,
        run_id: str,
        incarnation_id: str,
        epoch: int,
        floors: dict[str, tuple[float, str] | None],
    ) -> None:
        """Load these series' floors as read from the store (None: no point there)."""
        argv: list[str] = [str(epoch)]
        for field, floor in floors.items():
            argv += [field, "!" if floor is None else f"{fmt_step(floor[0])} {floor[1]} -"]
        await self._fill(
            keys=[run_key(project, run_id), floor_key(project, run_id, incarnation_id, epoch)],
            args=argv,
        )

    async def raise_epoch(
        self, project: str, run_id: str, target: int, judged: tuple[str, int] | None = None
    ) -> int:
        """Raise the run's epoch to at least `target`; `judged` (incarnation, epoch) names
        floors to drop when it moves. Returns the epoch in force."""
        keys = [run_key(project, run_id)]
        if judged is not None:
            keys.append(floor_key(project, run_id, *judged))
        return int(_text(await self._raise(keys=keys, args=[target])))

    async def await_dependencies(
        self, waits: Sequence[tuple[str, str, int, Sequence[str]]]
    ) -> list[str]:
        """For each (project, run_id, epoch, tokens): "ok", "wait" or "moved"."""
        calls = [([run_key(p, r)], [str(epoch), *tokens]) for p, r, epoch, tokens in waits]
        return [_text(r) for r in await self._pipelined(self._await, calls)]

    async def release(self, token: str, runs: Sequence[tuple[str, str]]) -> None:
        """Drop the leases of a committed judgment so that its dependents may commit."""
        if not runs:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for project, run_id in runs:
                pipe.hdel(run_key(project, run_id), "t:" + token)
            await pipe.execute()


def _answer(reply: Any) -> CheckAnswer:
    kind = _text(reply[0])
    if kind == "epoch":
        text = _text(reply[1])
        return CheckAnswer("epoch", [], epoch=int(text) if text else None)
    if kind == "load":
        return CheckAnswer("load", [])
    if kind == "need":
        return CheckAnswer("need", [], needed=tuple(_text(reply[1]).split("\0")[:-1]))
    floors = _text(reply[1]).split("\0")[:-1]
    dependencies = tuple(_text(reply[2]).split("\0")[:-1])
    return CheckAnswer("ok", floors, dependencies)


class Judged(Protocol):
    """What a waiting judgment of one run names (judge.RunPart)."""

    project: str
    run_id: str
    epoch: int
    dependencies: tuple[str, ...]


async def await_judgments(floors: FloorCache, parts: Sequence[Judged]) -> set[tuple[str, str]]:
    """Wait until every judgment these parts read from has committed; the runs whose epoch
    moved meanwhile (a dependency died or failed) are returned, to be judged again."""
    waiting = [p for p in parts if p.dependencies]
    moved: set[tuple[str, str]] = set()
    delay = 0.001
    while waiting:
        try:
            answers = await floors.await_dependencies(
                [(p.project, p.run_id, p.epoch, p.dependencies) for p in waiting]
            )
        except RedisError:  # cannot tell: judging again is always safe
            answers = ["moved"] * len(waiting)
        still = []
        for p, answer in zip(waiting, answers, strict=True):
            if answer == "moved":
                moved.add((p.project, p.run_id))
            elif answer == "wait":
                still.append(p)
        waiting = still
        if waiting:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
    return moved
