"""The reads of the recommendation hot path, in as few round trips as the layout allows."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from redis.asyncio import Redis

from store.codec import decode
from store.keys import Keys
from store.reader import EMPTY
from store.scripts import RECOMMEND

U2I, I2I, POPULAR = "u2i", "i2i", "popular"
TRENDING_TOP = 200


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


class OnlineReader:
    """Reads for one recommendation request. Ids are validated by the API before they get here."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._script = redis.register_script(RECOMMEND)

    async def read(self, user: str, k: int, device: str, segment: str) -> RequestData:
        """Versions, epochs and the cached answer, or the inputs of a fresh answer."""
        keys = self._keys
        reply = await self._script(
            keys=[
                keys.live(U2I),
                keys.live(I2I),
                keys.live(POPULAR),
                keys.epoch(user),
                keys.global_epoch(),
                keys.session(user),
                keys.trending(segment),
            ],
            args=[
                keys.version_base(U2I),
                keys.version_base(I2I),
                keys.version_base(POPULAR),
                user,
                segment,
                keys.cache(user, k, device),
                TRENDING_TOP,
            ],
        )
        versions = Versions(_int(reply[2]), _int(reply[3]), _int(reply[4]))
        data = RequestData(_text(reply[1]), versions)
        if reply[0] == 1:
            data.cached = reply[5]
            return data
        data.u2i = EMPTY if reply[5] is None else decode(reply[5])
        data.session = reply[6]
        data.popular = EMPTY if reply[7] is None else decode(reply[7])
        trend = reply[8] or []
        data.trending = {_text(trend[n]): float(trend[n + 1]) for n in range(0, len(trend), 2)}
        return data

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

    async def store_answer(self, cache_key: str, body: bytes, ttl_s: int) -> None:
        """Cache an answer under the key the first read derived."""
        await self._redis.set(cache_key, body, ex=ttl_s)


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
