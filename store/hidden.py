"""Hidden items: the ones an operator hid from every answer, and the ones a user hid for themself.

An operator's hide changes three keys of the prefix's slot in one script: the set, its version
(API processes reload the set when the version they read with every request moves) and the
global epoch (so no cached answer made before the hide is served again). A user's hide changes
the user's set and bumps the user's epoch, in the user's slot, for the same reason.
"""

from __future__ import annotations

from redis.asyncio import Redis

from tandem.contracts.ids import check_id
from tandem.store.exceptions import StoreError
from tandem.store.keys import Keys

MAX_HIDDEN = 10_000  # items hidden globally: every API process holds them in memory
MAX_USER_HIDDEN = 500  # items one user may hide: read with every fresh answer of theirs
USER_EPOCH_TTL_S = 2 * 86400  # as the stream worker keeps a user's epoch

# KEYS: the set, its version, the epoch to bump   ARGV: item, '1' hide / '0' unhide, max size,
# the epoch's TTL (0: none). Returns 1 when the set changed, 0 when not, -1 when it is full.
CHANGE = """
local changed
if ARGV[2] == '1' then
  if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0
     and redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    return -1
  end
  changed = redis.call('SADD', KEYS[1], ARGV[1])
else
  changed = redis.call('SREM', KEYS[1], ARGV[1])
end
if changed == 1 then
  if KEYS[2] ~= KEYS[3] then redis.call('INCR', KEYS[2]) end
  redis.call('INCR', KEYS[3])
  if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4])) end
end
return changed
"""


# The same for many items in order, one round trip (the stream worker applies a topic's records
# in batches). KEYS: the set, its version, the global epoch   ARGV: max size, then item and
# '1' / '0' for each change. Returns each change's result as CHANGE does; the version and the
# epoch move once when anything changed.
CHANGE_MANY = """
local limit, any, results = tonumber(ARGV[1]), false, {}
for i = 2, #ARGV, 2 do
  local item, r = ARGV[i], 0
  if ARGV[i + 1] == '1' then
    if redis.call('SISMEMBER', KEYS[1], item) == 0 and redis.call('SCARD', KEYS[1]) >= limit then
      r = -1
    else
      r = redis.call('SADD', KEYS[1], item)
    end
  else
    r = redis.call('SREM', KEYS[1], item)
  end
  if r == 1 then any = true end
  results[#results + 1] = r
end
if any then
  redis.call('INCR', KEYS[2])
  redis.call('INCR', KEYS[3])
end
return results
"""


class HiddenFull(StoreError):
    """The set of hidden items is at its bound: unhide some first."""


class HiddenItems:
    """Hide and unhide items, globally or for one user (the API, the CLI and the worker)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def hide(self, item_id: str, *, hidden: bool = True) -> bool:
        """Hide (or unhide) an item from every answer; whether anything changed."""
        keys = self._keys
        where = [keys.hidden(), keys.hidden_version(), keys.global_epoch()]
        return await self._change(where, item_id, hidden, MAX_HIDDEN, 0)

    async def change_many(self, changes: list[tuple[str, bool]]) -> list[bool | None]:
        """Hide or unhide many items from every answer, in order, in one round trip: for each
        change whether anything changed, or None where the set was full (as :meth:`hide`
        raises :class:`HiddenFull`)."""
        if not changes:
            return []
        keys = self._keys
        args: list[str | int] = [MAX_HIDDEN]
        for item_id, hidden in changes:
            args += [check_id(item_id, "item_id"), int(hidden)]
        where = [keys.hidden(), keys.hidden_version(), keys.global_epoch()]
        results = await self._redis.eval(CHANGE_MANY, len(where), *where, *args)
        return [None if int(r) < 0 else int(r) == 1 for r in results]

    async def hide_for_user(self, user_id: str, item_id: str, *, hidden: bool = True) -> bool:
        """Hide (or unhide) an item from one user's answers; whether anything changed."""
        user = check_id(user_id, "user_id")
        epoch = self._keys.epoch(user)
        where = [self._keys.user_hidden(user), epoch, epoch]
        return await self._change(where, item_id, hidden, MAX_USER_HIDDEN, USER_EPOCH_TTL_S)

    async def _change(
        self, where: list[str], item_id: str, hidden: bool, limit: int, ttl_s: int
    ) -> bool:
        item = check_id(item_id, "item_id")
        changed = int(
            await self._redis.eval(CHANGE, len(where), *where, item, int(hidden), limit, ttl_s)
        )
        if changed < 0:
            raise HiddenFull(f"{limit} items are hidden already; unhide some before hiding more")
        return changed == 1

    async def version(self) -> str:
        """The version of the set of items hidden from all answers ("0" before any hide)."""
        raw = await self._redis.get(self._keys.hidden_version())
        return "0" if raw is None else _text(raw)

    async def items(self) -> set[str]:
        """Every item hidden from all answers."""
        return {_text(raw) for raw in await self._redis.smembers(self._keys.hidden())}

    async def for_user(self, user_id: str) -> set[str]:
        """The items one user hid."""
        key = self._keys.user_hidden(check_id(user_id, "user_id"))
        return {_text(raw) for raw in await self._redis.smembers(key)}


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
