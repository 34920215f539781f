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
from typing import Any

import redis.asyncio as aioredis

LOADED = "!loaded"

# KEYS[1]: the floor hash of one incarnation.
# ARGV[1]: the number of entries; then 4 values per entry, applied in order:
#   field   "f:<name>" or "s:<name>"
#   mode    "e" (explicit steps) or "a" (assign steps); "oe" / "oa" overwrite first: the
#           series' floor is taken as absent (-inf), as for a new series
#   arg     mode e: the entry's last (largest) step as %.17g; mode a: the number of points
#   token   value token of the entry's last point
# Returns {0} when the hash is not loaded (nothing changed), else {1, floor_1, token_1, ...}:
# each entry's floor before it was applied ("" for a new series) and that point's token. An
# explicit entry advances the floor to its last step when that is above it; an assigned entry
# takes steps floor+1 (math.floor(floor)+1 for a fractional floor; 0 for a new series) onwards.
# The caller derives accepted points, duplicates and assigned steps from the returned floors.
CHECK_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], '!loaded') == 0 then return {0} end
local out = {1}
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local b = 2 + i * 4
  local field = ARGV[b]
  local mode = ARGV[b + 1]
  local cur = redis.call('HGET', KEYS[1], field)
  if string.sub(mode, 1, 1) == 'o' then
    cur = false
    mode = string.sub(mode, 2)
  end
  local floor = nil
  if cur then
    local sp = string.find(cur, ' ', 1, true)
    local floor_s = string.sub(cur, 1, sp - 1)
    floor = tonumber(floor_s)
    out[#out + 1] = floor_s
    out[#out + 1] = string.sub(cur, sp + 1)
  else
    out[#out + 1] = ''
    out[#out + 1] = ''
  end
  if mode == 'e' then
    local last = tonumber(ARGV[b + 2])
    if floor == nil or last > floor then
      redis.call('HSET', KEYS[1], field, ARGV[b + 2] .. ' ' .. ARGV[b + 3])
    end
  else
    local start = 0
    if floor ~= nil then start = math.floor(floor) + 1 end
    local last = start + tonumber(ARGV[b + 2]) - 1
    if floor == nil or (start > floor and last >= start) then
      redis.call('HSET', KEYS[1], field, string.format('%.17g', last) .. ' ' .. ARGV[b + 3])
    end
  end
end
return out
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


@dataclass(frozen=True)
class Floor:
    """A series' floor before an entry was applied."""

    step: float  # -inf for a new series
    token: str


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
                argv: list[Any] = [len(entries)]
                for e in entries:
                    argv += [
                        e.field,
                        ("o" if e.overwrite else "") + ("a" if e.assign else "e"),
                        str(e.count) if e.assign else fmt_step(e.last_step),
                        e.last_token,
                    ]
                await self._check(keys=[key], args=argv, client=pipe)
            replies = await pipe.execute()
        out: list[list[Floor] | None] = []
        for reply in replies:
            if int(reply[0]) == 0:
                out.append(None)
                continue
            floors = []
            for i in range(1, len(reply), 2):
                raw = reply[i]
                step = -math.inf if raw in (b"", "") else float(raw)
                token = reply[i + 1]
                floors.append(Floor(step, token.decode() if isinstance(token, bytes) else token))
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
