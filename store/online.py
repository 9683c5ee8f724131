"""The reads of the recommendation hot path, in as few round trips as the layout allows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from tandem.contracts.codec import decode
from tandem.contracts.domain import I2I, POPULAR, U2I
from tandem.store.exceptions import StoreError
from tandem.store.keys import Keys
from tandem.store.scripts import RECOMMEND

TRENDING_TOP = 200
GLOBAL = "global"
EMPTY: tuple[list[str], list[float]] = ([], [])
FRESH, CACHED, VERSIONS_MOVED = 0, 1, 2
MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Versions:
    """The live version of each store that one answer used (None: no live version)."""

    u2i: int | None
    i2i: int | None
    popular: int | None


@dataclass(slots=True)
class RequestData:
    """Everything the first round trip returns."""

    cache_key: str
    cache_tag: bytes
    versions: Versions
    cached: bytes | None = None
    u2i: tuple[list[str], list[float]] = EMPTY
    session: bytes | None = None
    popular: tuple[list[str], list[float]] = EMPTY
    trending: dict[str, float] = field(default_factory=dict)


def _int(raw: bytes | str | None) -> int | None:
    return int(raw) if raw not in (None, b"", "") else None


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _bytes(raw: bytes | str) -> bytes:
    return raw.encode() if isinstance(raw, str) else raw


class OnlineReader:
    """Reads for one recommendation request. Ids are validated by the API before they get here.

    It remembers the live versions it last saw and names their keys in the read; after a cutover
    the first read finds other versions live, reads nothing and is retried with their keys.
    """

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._script = redis.register_script(RECOMMEND)
        self._expected: tuple[int | None, int | None] = (None, None)  # u2i, popular

    async def read(self, user: str, k: int, device: str, segment: str) -> RequestData:
        """Versions, epochs and the cached answer, or the inputs of a fresh answer."""
        for _ in range(MAX_ATTEMPTS):
            reply = await self._read_once(user, k, device, segment)
            versions = Versions(_int(reply[2]), _int(reply[3]), _int(reply[4]))
            if reply[0] != VERSIONS_MOVED:
                break
            self._expected = (versions.u2i, versions.popular)
        else:
            raise StoreError("the live versions kept changing during one read; retry")
        data = RequestData(self._keys.cache(user, k, device), _bytes(reply[1]), versions)
        if reply[0] == CACHED:
            data.cached = reply[5]
            return data
        data.u2i = EMPTY if reply[5] is None else decode(reply[5])
        data.session = reply[6]
        data.popular = EMPTY if reply[7] is None else decode(reply[7])
        trend = reply[8] or []
        data.trending = {_text(trend[n]): float(trend[n + 1]) for n in range(0, len(trend), 2)}
        return data

    async def _read_once(self, user: str, k: int, device: str, segment: str) -> list[Any]:
        keys = self._keys
        u2i, popular = self._expected
        # Where a store has no live version there is no entity key: its live pointer stands in
        # (the script reads no entity of a store whose expected version is none).
        reply: list[Any] = await self._script(
            keys=[
                keys.live(U2I),
                keys.live(I2I),
                keys.live(POPULAR),
                keys.epoch(user),
                keys.global_epoch(),
                keys.cache(user, k, device),
                keys.session(user),
                keys.trending(segment),
                keys.live(U2I) if u2i is None else keys.entity(U2I, u2i, user),
                keys.live(POPULAR) if popular is None else keys.entity(POPULAR, popular, segment),
                keys.live(POPULAR) if popular is None else keys.entity(POPULAR, popular, GLOBAL),
            ],
            args=[
                "" if u2i is None else str(u2i),
                "" if popular is None else str(popular),
                "1" if segment != GLOBAL else "0",
                TRENDING_TOP,
            ],
        )
        return reply

    async def similar(
        self, version: int, items: list[str]
    ) -> list[tuple[list[str], list[float]] | None]:
        """The i2i lists of ``items`` in one version (a second round trip, when the session
        has items)."""
        root = self._keys.version_root(I2I, version)
        raws = await self._redis.mget([self._keys.entity_unchecked(root, i) for i in items])
        return [decode(raw) if isinstance(raw, bytes) else None for raw in raws]

    async def attachments(self, version: int) -> tuple[bytes | None, dict[str, str]]:
        """The re-ranker model and the item categories stored with a u2i version, if any."""
        model, categories = await self._redis.mget(
            self._keys.model(U2I, version), self._keys.attachment(U2I, version, "categories")
        )
        return (model if isinstance(model, bytes) else None), parse_categories(categories)

    async def store_answer(self, data: RequestData, body: bytes, ttl_s: int) -> None:
        """Cache an answer behind the tag of the epochs and versions it was computed with."""
        await self._redis.set(data.cache_key, data.cache_tag + body, ex=ttl_s)


def parse_categories(raw: bytes | str | None) -> dict[str, str]:
    """The ``categories`` attachment: a JSON object item id → category (empty if absent)."""
    if not isinstance(raw, bytes | str):
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in body.items()} if isinstance(body, dict) else {}


async def live_categories(redis: Redis, keys: Keys) -> tuple[int | None, dict[str, str]]:
    """The live u2i version and its item categories (for processes outside the request path)."""
    version = _int(await redis.get(keys.live(U2I)))
    if version is None:
        return None, {}
    return version, parse_categories(await redis.get(keys.attachment(U2I, version, "categories")))
