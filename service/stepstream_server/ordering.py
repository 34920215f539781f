"""The ordering check: per-series floors cached in Redis, judged and advanced atomically.

Keys (one run's keys share the hash tag `{project/run_id}`, so every check for a batch of one
run runs in one Redis Cluster slot):

    ss:{<project>/<run_id>}:floors:<incarnation_id>   hash
        "f:<name>" / "s:<name>"  ->  "<floor step, %.17g> <value token of the point at the floor>"
        "!loaded"                ->  "1" once every floor of the incarnation came from the store

The store is the source of truth. A hash without "!loaded" (a restarted or evicted Redis, a new
incarnation) makes the check answer NEED_LOAD; the caller reads the floors from the store, loads
them with LOAD_SCRIPT and asks again, so no point is judged against a missing floor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from .model import Floats, value_token

LOADED = "!loaded"

# KEYS[1]: the floor hash of one incarnation.
# ARGV[1]: the entries, 4 fields each, every field ended by a NUL byte (names never hold NUL):
#   field   "f:<name>" or "s:<name>"
#   mode    "e" (explicit steps) or "a" (assign steps); "oe" / "oa" overwrite first: the
#           series' floor is taken as absent (-inf), as for a new series
#   arg     mode e: the entry's last (largest) step as %.17g; mode a: the number of points
#   token   value token of the entry's last point
# Entries are applied in order. Returns 0 when the hash is not loaded (nothing changed), else
# one string: for each entry, its floor before it was applied ("" for a new series) and that
# point's token, each ended by NUL. An explicit entry advances the floor to its last step when
# that is above it; an assigned entry takes steps floor+1 (math.floor(floor)+1 for a fractional
# floor; 0 for a new series) onwards. The caller derives accepted points, duplicates and assigned
# steps from the returned floors.
CHECK_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], '!loaded') == 0 then return 0 end
local packed = ARGV[1]
local out = {}
local pos = 1
local function nxt()
  local z = string.find(packed, '\\0', pos, true)
  local v = string.sub(packed, pos, z - 1)
  pos = z + 1
  return v
end
while pos <= #packed do
  local field = nxt()
  local mode = nxt()
  local arg = nxt()
  local token = nxt()
  local cur = redis.call('HGET', KEYS[1], field)
  if string.byte(mode, 1) == 111 then -- 'o': overwrite
    cur = false
    mode = string.sub(mode, 2)
  end
  local floor = nil
  if cur then
    local sp = string.find(cur, ' ', 1, true)
    floor = tonumber(string.sub(cur, 1, sp - 1))
    out[#out + 1] = cur
  else
    out[#out + 1] = ''
  end
  if mode == 'e' then
    if floor == nil or tonumber(arg) > floor then
      redis.call('HSET', KEYS[1], field, arg .. ' ' .. token)
    end
  else
    local start = 0
    if floor ~= nil then start = math.floor(floor) + 1 end
    local last = start + tonumber(arg) - 1
    if floor == nil or (start > floor and last >= start) then
      redis.call('HSET', KEYS[1], field, string.format('%.17g', last) .. ' ' .. token)
    end
  end
end
out[#out + 1] = ''
return table.concat(out, '\\0')
"""

# KEYS[1]: the floor hash of one incarnation. ARGV: field, "<step> <token>", field, ... as read
# from the store. Loads them and marks the hash loaded unless another loader got there first
# (its floors may already have advanced). Returns 1 when loaded, 0 when it already was.
LOAD_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], '!loaded') == 1 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], '!loaded', '1')
return 1
"""


def floor_key(project: str, run_id: str, incarnation_id: str) -> str:
    return f"ss:{{{project}/{run_id}}}:floors:{incarnation_id}"


def fmt_step(step: float) -> str:
    return f"{step:.17g}"


def assigned_start(floor: float) -> float:
    """The first step the check script assigns after `floor` (-inf for a new series)."""
    return 0.0 if floor == -math.inf else float(math.floor(floor) + 1)


@dataclass(frozen=True)
class CheckEntry:
    """One series entry to judge: explicit last step or a count of steps to assign."""

    field: str
    assign: bool
    overwrite: bool
    last_step: float
    count: int
    last_token: str


class LazyToken:
    """The token of an entry's last value, computed only when a duplicate check needs it."""

    __slots__ = ("values",)

    def __init__(self, values: Floats | list[str]) -> None:
        self.values = values

    def __str__(self) -> str:
        return value_token(self.values[-1])


@dataclass(frozen=True)
class Floor:
    """A series' floor before an entry was applied."""

    step: float  # -inf for a new series
    token: str | LazyToken


NO_FLOOR = Floor(-math.inf, "")


class FloorCache:
    """Runs the check and load scripts; one pipelined round trip serves many incarnations."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._check = client.register_script(CHECK_SCRIPT)
        self._load = client.register_script(LOAD_SCRIPT)

    async def check(
        self, requests: Sequence[tuple[str, Sequence[CheckEntry]]]
    ) -> list[list[Floor] | None]:
        """Judge each (key, entries) in one round trip; None for a key that needs loading."""
        if not requests:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for key, entries in requests:
                parts = []
                for e in entries:
                    mode = ("o" if e.overwrite else "") + ("a" if e.assign else "e")
                    arg = str(e.count) if e.assign else fmt_step(e.last_step)
                    parts.append(f"{e.field}\0{mode}\0{arg}\0{e.last_token}\0")
                await self._check(keys=[key], args=["".join(parts)], client=pipe)
            replies = await pipe.execute()
        out: list[list[Floor] | None] = []
        for reply in replies:
            if reply == 0:
                out.append(None)
                continue
            text = reply.decode() if isinstance(reply, bytes) else str(reply)
            floors = []
            for item in text.split("\0")[:-1]:
                if not item:
                    floors.append(NO_FLOOR)
                else:
                    step, token = item.split(" ", 1)
                    floors.append(Floor(float(step), token))
            out.append(floors)
        return out

    async def load(self, key: str, floors: dict[str, tuple[float, str]]) -> None:
        argv: list[str] = []
        for field, (step, token) in floors.items():
            argv += [field, f"{fmt_step(step)} {token}"]
        await self._load(keys=[key], args=argv)

    async def forget(self, keys: Sequence[str]) -> None:
        """Drop cached floors (after a failed commit) so the next check reloads from the store."""
        if keys:
            await self.client.delete(*keys)
