"""What the worker writes into Redis: sessions and epochs, trending sets, the global epoch."""

from __future__ import annotations

from collections import Counter

from redis.asyncio import Redis
from redis.crc import key_slot

from tandem.store.connect import is_cluster, queue_script
from tandem.store.keys import Keys
from tandem.store.online import live_categories
from tandem.store.scripts import WRITE_SESSIONS
from tandem.streams.trending import WINDOW_MS

EPOCH_TTL_S = 2 * 86400
TRENDING_WINDOWS = 5
TRENDING_TOP = 200
# Items per script call: one call blocks Redis while it runs, so a big flush is cut in pieces.
TRENDING_CHUNK = 500

# Users per script call (store.scripts.WRITE_SESSIONS).
SESSIONS_CHUNK = 200

# KEYS[1]: a minute bucket; ARGV[1]: its TTL; then item, count, item, count, ...
# One command for many items: a ZINCRBY each costs the worker far more (packing and parsing
# a command per item blocked its event loop for tens of milliseconds every flush).
ADD_TRENDING = """
for i = 2, #ARGV, 2 do
  redis.call('ZINCRBY', KEYS[1], ARGV[i + 1], ARGV[i])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


class RedisMirror:
    """Batched writes of the worker's state into Redis."""

    def __init__(self, redis: Redis, keys: Keys, session_ttl_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self._session_ttl_s = session_ttl_s

    async def write_sessions(self, sessions: dict[str, bytes]) -> None:
        """Each session with its user's epoch bump, atomically per user (one script call in the
        user's slot), all in one pipeline: a cached answer for the user becomes unreachable
        exactly when the new session becomes readable. One call carries up to
        ``SESSIONS_CHUNK`` users (on a cluster, users of one slot)."""
        if not sessions:
            return
        pipe = self._redis.pipeline(transaction=False)
        for group in self._groups(list(sessions)):
            for start in range(0, len(group), SESSIONS_CHUNK):
                chunk = group[start : start + SESSIONS_CHUNK]
                keys: list[str] = []
                for user in chunk:
                    keys += (self._keys.session(user), self._keys.epoch(user))
                args: list[bytes | int] = [self._session_ttl_s, EPOCH_TTL_S]
                args += [sessions[user] for user in chunk]
                queue_script(pipe, WRITE_SESSIONS, keys, args)
        await pipe.execute()

    def _groups(self, users: list[str]) -> list[list[str]]:
        """``users`` in groups that one script call may write: all of them on one Redis, the
        users of each slot on a cluster."""
        if not is_cluster(self._redis):
            return [users]
        by_slot: dict[int, list[str]] = {}
        for user in users:
            by_slot.setdefault(key_slot(self._keys.session(user).encode()), []).append(user)
        return list(by_slot.values())

    async def write_trending(self, counts: dict[tuple[str, int], Counter[str]]) -> None:
        """Add counts to their minute windows, then recompute each touched segment's top items."""
        if not counts:
            return
        pipe = self._redis.pipeline(transaction=False)
        newest: dict[str, int] = {}
        ttl = (TRENDING_WINDOWS + 2) * WINDOW_MS // 1000
        for (segment, window), items in counts.items():
            bucket = self._keys.trending_bucket(segment, window)
            pairs = list(items.items())
            for start in range(0, len(pairs), TRENDING_CHUNK):
                args: list[str | int] = [ttl]
                for item, count in pairs[start : start + TRENDING_CHUNK]:
                    args += (item, count)
                queue_script(pipe, ADD_TRENDING, [bucket], args)
            newest[segment] = max(newest.get(segment, window), window)
        for segment, window in newest.items():
            target = self._keys.trending(segment)
            sources = [
                self._keys.trending_bucket(segment, window - back)
                for back in range(TRENDING_WINDOWS)
            ]
            pipe.zunionstore(target, sources)
            pipe.zremrangebyrank(target, 0, -TRENDING_TOP - 1)
            pipe.expire(target, TRENDING_WINDOWS * WINDOW_MS // 1000)
        await pipe.execute()

    async def bump_global_epoch(self) -> int:
        """Make every cached answer unreachable (after a cutover or rollback)."""
        value: int = await self._redis.incr(self._keys.global_epoch())
        return value

    async def categories(self) -> dict[str, str]:
        """Item → category of the live u2i version (empty when it carries none)."""
        _, categories = await live_categories(self._redis, self._keys)
        return categories
