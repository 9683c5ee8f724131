"""Hot-path reads: the live pointer and the candidates of that one version, in one round trip.

The reader remembers each store's live version and reads ``MGET live, key(v, e1), key(v, e2)…``:
one command, so Redis answers it atomically. When the pointer it returns is the remembered
version, every value belongs to that version. When it is not (just after a cutover), the values
are dropped and the Lua script reads pointer and values together, and the reader remembers the
new version. Either way an answer never mixes two versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from store.codec import decode
from store.keys import Keys
from store.scripts import READ_LIVE

EMPTY: tuple[list[str], list[float]] = ([], [])


@dataclass(frozen=True, slots=True)
class Candidates:
    """One entity's candidates from one version (``version`` None: the store has none live)."""

    version: int | None
    item_ids: list[str]
    scores: list[float]


def _version(raw: bytes | str | None) -> int | None:
    return None if raw is None else int(raw)


class StoreReader:
    """Reads candidates of the live version. Ids must be validated by the caller's entry point."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._script = redis.register_script(READ_LIVE)
        self._known: dict[str, int | None] = {}

    async def read(self, store: str, entity_id: str) -> Candidates:
        """One entity's candidates; a missing entity is an empty list, not an error."""
        version, raws = await self.read_raw(store, [entity_id])
        item_ids, scores = EMPTY if raws[0] is None else decode(raws[0])
        return Candidates(version, item_ids, scores)

    async def read_many(
        self, store: str, entity_ids: list[str]
    ) -> tuple[int | None, dict[str, tuple[list[str], list[float]]]]:
        """The live version and the candidates of each entity found in it."""
        version, raws = await self.read_raw(store, entity_ids)
        found = {
            entity: decode(raw)
            for entity, raw in zip(entity_ids, raws, strict=True)
            if raw is not None
        }
        return version, found

    async def read_raw(
        self, store: str, entity_ids: list[str]
    ) -> tuple[int | None, list[bytes | None]]:
        """The live version and the encoded value (or None) of each entity, from one version."""
        live_key = self._keys.live(store)
        known = self._known.get(store, -1)
        if known is not None and known > 0:
            root = f"{self._keys.version_base(store)}{known}"
            reply = await self._redis.mget(
                live_key, *(self._keys.entity_unchecked(root, e) for e in entity_ids)
            )
            if _version(reply[0]) == known:
                return known, cast("list[bytes | None]", reply[1:])
        elif known is None and await self._redis.get(live_key) is None:
            return None, [None] * len(entity_ids)
        reply = await self._script(
            keys=[live_key], args=[self._keys.version_base(store), *entity_ids]
        )
        version = _version(reply[0]) if reply else None
        self._known[store] = version
        if version is None:
            return None, [None] * len(entity_ids)
        return version, list(reply[1:])
