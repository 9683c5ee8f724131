"""The reads of the recommendation hot path, in as few round trips as the layout allows."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from tandem.contracts.codec import decode
from tandem.contracts.domain import I2I, POPULAR, U2I
from tandem.store.connect import Command, round_trip, script
from tandem.store.experiments import (
    CANARY,
    CONTROL,
    SHADOW,
    Canary,
    counter_field,
    latency_bound,
    latency_field,
)
from tandem.store.keys import Keys
from tandem.store.scripts import POINTERS, USER_READ

STORES = (U2I, I2I, POPULAR)
TRENDING_TOP = 200
GLOBAL = "global"
EMPTY: tuple[list[str], list[float]] = ([], [])
CACHED = 1
MAX_ATTEMPTS = 3
FLUSH_S = 0.05  # how long an answer to cache waits for a read to ride along with
CACHE_PAUSE_S = 10.0  # no caching for this long after Redis refused a cache write
SHARED_TTL_S = 1.0  # popular lists and trending items are read again at most this often
SHARED_MAX = 512  # entries kept of them (segments × versions); all dropped beyond

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Versions:
    """The live version of each store that one answer used (None: no live version)."""

    u2i: int | None
    i2i: int | None
    popular: int | None


@dataclass(frozen=True, slots=True)
class Assignment:
    """Which variant of the running experiments one answer is: the stores whose canary it
    uses, each store's canary (version, share; None: no canary), and the probability that a
    user lands in this variant."""

    canaries: tuple[str, ...] = ()
    experiments: tuple[tuple[str, int, float], ...] = ()

    @property
    def variant(self) -> str:
        """``canary`` when any store answered with its canary, else ``control``."""
        return CANARY if self.canaries else CONTROL

    @property
    def probability(self) -> float:
        """The chance of this variant under the running experiments' shares."""
        p = 1.0
        for store, _, share in self.experiments:
            p *= share if store in self.canaries else 1.0 - share
        return round(p, 6)


@dataclass(slots=True)
class RequestData:
    """Everything the first round trip returns."""

    cache_key: str
    cache_tag: bytes
    versions: Versions
    assignment: Assignment = field(default_factory=Assignment)
    shadow: int | None = None  # a u2i canary to compute beside the answer, never served
    cached: bytes | None = None
    u2i: tuple[list[str], list[float]] = EMPTY
    session: bytes | None = None
    popular: tuple[list[str], list[float]] = EMPTY
    trending: dict[str, float] = field(default_factory=dict)
    hidden_version: str = "0"  # of the items hidden from every answer (store/hidden.py)
    user_hidden: frozenset[str] = frozenset()  # the items this user hid


def _int(raw: bytes | str | None) -> int | None:
    return int(raw) if raw not in (None, b"", "") else None


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _bytes(raw: bytes | str) -> bytes:
    return raw.encode() if isinstance(raw, str) else raw


@dataclass(frozen=True, slots=True)
class _Expected:
    """The live versions and global epoch a reader last saw (the keys it reads next)."""

    u2i: int | None = None
    i2i: int | None = None
    popular: int | None = None
    global_epoch: str = "0"
    canaries: tuple[Canary | None, Canary | None, Canary | None] = (None, None, None)

    @property
    def versions(self) -> tuple[int | None, int | None, int | None]:
        """The live versions of u2i, i2i and popular."""
        return self.u2i, self.i2i, self.popular

    def for_user(self, user: str) -> tuple[_Expected, Assignment]:
        """The versions ``user`` reads (a store's canary where the user is in its bucket)."""
        if self.canaries == (None, None, None):
            return self, Assignment()
        versions = list(self.versions)
        served: list[str] = []
        running: list[tuple[str, int, float]] = []
        for i, (store, canary) in enumerate(zip(STORES, self.canaries, strict=True)):
            if canary is None or canary.shadow or versions[i] is None:
                continue  # no experiment without a live version to compare with
            running.append((store, canary.version, canary.share))
            if canary.serves(store, user):
                versions[i] = canary.version
                served.append(store)
        mine = _Expected(versions[0], versions[1], versions[2], self.global_epoch)
        return mine, Assignment(tuple(served), tuple(running))

    def tag(self, variant: str = CONTROL) -> str:
        """The part of a cached answer's tag these make (the user's epoch goes in front): a
        canary answer is never served from cache to a control user, nor the reverse."""
        versions = ("" if v is None else str(v) for v in (self.u2i, self.i2i, self.popular))
        return ":".join((self.global_epoch, *versions, variant[:2]))


class OnlineReader:
    """Reads for one recommendation request. Ids are validated by the API before they get here.

    One pipeline (one round trip on one Redis; one per node, in parallel, on a cluster) reads
    the live pointers and the global epoch, the user's epoch, cached answer, session and
    candidates, the segment's popular list and trending items. The reader names the keys of the
    versions it last saw; when the pointers show others live it remembers them and reads again,
    so an answer never mixes two versions (a version's data never changes once written).
    """

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._expected = _Expected()
        self._pointers = [
            *(keys.live(store) for store in STORES),
            *(keys.canary(store) for store in STORES),
            keys.global_epoch(),
        ]
        self._pointers.append(keys.hidden_version())  # read with them: a hide counts at once
        self._unsent: list[tuple[str, bytes, int]] = []  # answers to cache: (key, value, ttl_s)
        self._flushing: asyncio.Task[None] | None = None
        self._paused_until = 0.0  # no caching before (monotonic s): Redis refused a cache write
        self._shared = _Shared()

    async def read(
        self, user: str, k: int, device: str, segment: str, *, use_cache: bool = True
    ) -> RequestData:
        """Versions, epochs and the cached answer (unless ``use_cache`` is false), or the inputs
        of a fresh answer."""
        cache_key = self._keys.cache(user, k, device) if use_cache else self._keys.uncached(user)
        for attempt in range(MAX_ATTEMPTS):
            pointers = self._expected
            expected, assignment = pointers.for_user(user)
            meta, mine, popular, trending = await self._read_once(
                expected, assignment.variant, user, cache_key, segment
            )
            seen = _seen(meta)
            self._expected = seen
            if seen == pointers:
                break
            if seen.for_user(user) == (expected, assignment) and mine[0] != CACHED:
                break  # the data read is of the versions to serve; only the cache tag moved on
            if attempt == MAX_ATTEMPTS - 1:
                # The pointers moved again during this round trip (versions flipping back and
                # forth). What was read is of the versions the previous round trip saw live
                # together, one atomic read of the pointers ago: one snapshot, never a mix,
                # and a version's data never changes. Serve it; the next read catches up.
                log.debug(
                    "live versions moved during %d reads; serving the last snapshot", attempt + 1
                )
                break
        versions = Versions(expected.u2i, expected.i2i, expected.popular)
        data = RequestData(cache_key, _bytes(mine[1]), versions, assignment)
        data.hidden_version = _text(meta[-1] or b"0")
        if mine[0] == CACHED:
            data.cached = mine[2]
            return data
        data.session = mine[2]
        data.u2i = EMPTY if mine[3] is None else decode(mine[3])
        data.popular = popular
        data.trending = trending
        shadow = pointers.canaries[0]
        if shadow is not None and shadow.shadow and expected.u2i is not None:
            data.shadow = shadow.version
        if mine[4]:
            data.user_hidden = frozenset(_text(item) for item in mine[4])
        return data

    async def candidates(
        self, store: str, version: int, entity: str
    ) -> tuple[list[str], list[float]]:
        """One entity's candidates in one version (a shadow canary's, off the answer's path)."""
        raw = await self._redis.get(self._keys.entity(store, version, entity))
        return decode(raw) if isinstance(raw, bytes) else EMPTY

    async def record_shadow(self, version: int, overlap: float, took_ms: float) -> None:
        """Count one shadow answer of a u2i canary: its overlap with the served answer and how
        long it took (in the experiment's counters)."""
        key = self._keys.experiment(U2I, version)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hincrby(key, counter_field(SHADOW, "answers"), 1)
        pipe.hincrby(key, counter_field(SHADOW, "overlap_ppm"), round(overlap * 1_000_000))
        pipe.hincrby(key, counter_field(SHADOW, "latency_ms_sum"), round(took_ms))
        pipe.hincrby(key, latency_field(SHADOW, latency_bound(took_ms)), 1)
        await pipe.execute()

    async def _read_once(
        self, expected: _Expected, variant: str, user: str, cache_key: str, segment: str
    ) -> tuple[list[Any], list[Any], tuple[list[str], list[float]], dict[str, float]]:
        """The pointers, the user's script and, unless this process read them less than
        ``SHARED_TTL_S`` ago, the segment's popular list and trending items."""
        keys = self._keys
        now = time.monotonic()
        version = expected.popular
        popular = EMPTY if version is None else self._shared.popular(version, segment, now)
        trending = self._shared.trending(segment, now)
        commands: list[Command] = [script(POINTERS, self._pointers)]
        # Where a store has no live version there is no entity key to read: the user's epoch
        # stands in (the script reads no candidates then).
        u2i = keys.epoch(user) if expected.u2i is None else keys.entity(U2I, expected.u2i, user)
        commands.append(
            script(
                USER_READ,
                [keys.epoch(user), cache_key, keys.session(user), u2i, keys.user_hidden(user)],
                [expected.tag(variant), "0" if expected.u2i is None else "1"],
            )
        )
        if version is not None and popular is None:
            commands.append(("GET", keys.entity(POPULAR, version, segment)))
            if segment != GLOBAL:
                commands.append(("GET", keys.entity(POPULAR, version, GLOBAL)))
        if trending is None:
            top = TRENDING_TOP - 1
            commands.append(("ZREVRANGE", keys.trending(segment), 0, top, "WITHSCORES"))
        writes, self._unsent = self._unsent, []
        for key, value, ttl_s in writes:  # answers cached since the last round trip ride along
            commands.append(("SET", key, value, "EX", ttl_s))
        try:
            replies = await round_trip(self._redis, commands)
        except ResponseError as e:
            if not writes:
                raise
            # Redis refused a command: maybe a cache write (out of memory, say). Reading must
            # not depend on caching: read again without, and cache nothing for a while.
            log.warning(
                "Redis refused a read carrying cached answers (%s); not caching for %g s",
                e,
                CACHE_PAUSE_S,
            )
            self._paused_until = time.monotonic() + CACHE_PAUSE_S
            return await self._read_once(expected, variant, user, cache_key, segment)
        rest = iter(replies[2:])
        if version is not None and popular is None:
            found = next(rest)
            fallback = next(rest) if segment != GLOBAL else None
            popular = self._shared.keep_popular(version, segment, found, fallback, now)
        if trending is None:
            trending = self._shared.keep_trending(segment, next(rest), now)
        return replies[0], replies[1], popular or EMPTY, trending

    async def similar(
        self, version: int, items: list[str]
    ) -> list[tuple[list[str], list[float]] | None]:
        """The i2i lists of ``items`` in one version (a second round trip, when the session
        has items)."""
        root = self._keys.version_root(I2I, version)
        # One GET each: the items' keys lie in different slots.
        raws = await round_trip(
            self._redis, [("GET", self._keys.entity_unchecked(root, item)) for item in items]
        )
        return [decode(raw) if isinstance(raw, bytes) else None for raw in raws]

    async def attachments(self, version: int) -> tuple[bytes | None, dict[str, str]]:
        """The re-ranker model and the item categories stored with a u2i version, if any."""
        model, categories = await self._redis.mget(
            self._keys.model(U2I, version), self._keys.attachment(U2I, version, "categories")
        )
        return (model if isinstance(model, bytes) else None), parse_categories(categories)

    def store_answer(self, data: RequestData, body: bytes, ttl_s: int) -> None:
        """Cache an answer behind the tag of the epochs and versions it was computed with.

        The write goes with the next read's round trip, or on its own after ``FLUSH_S``: a
        command of its own costs several times the CPU of one more in a pipeline. A cached
        answer is an optimization, so one lost with a failed round trip is only recomputed (and
        its tag makes one written late unreachable if anything changed meanwhile).
        """
        if time.monotonic() < self._paused_until:
            return
        self._unsent.append((data.cache_key, data.cache_tag + body, ttl_s))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_S)
        await self._send()

    async def flush(self) -> None:
        """Send the answers waiting to be cached, and wait for any send under way (the API
        calls it at shutdown)."""
        await self._send()
        if self._flushing is not None:
            await self._flushing

    async def _send(self) -> None:
        writes, self._unsent = self._unsent, []
        if not writes:
            return
        try:
            await round_trip(self._redis, [("SET", k, v, "EX", ttl_s) for k, v, ttl_s in writes])
        except (RedisError, OSError) as e:
            log.warning("could not cache %d answer(s): %s", len(writes), e)


class _Shared:
    """The popular lists (by version and segment) and trending items (by segment) this process
    read last, reused for ``SHARED_TTL_S``: they are the same for every user and change per
    batch version or per trending flush (seconds), while reading them costs most of a request's
    Redis commands. A version's data never changes once written, so a popular list read from a
    version is valid while that version is live; the expiry still bounds how long a list of a
    version that was deleted and written anew can be served. The lists are shared between
    answers: readers never change them."""

    def __init__(self) -> None:  # each entry: (when it was read, monotonic s; what)
        self._popular: dict[tuple[int, str], tuple[float, tuple[list[str], list[float]]]] = {}
        self._trending: dict[str, tuple[float, dict[str, float]]] = {}

    def popular(
        self, version: int, segment: str, now: float
    ) -> tuple[list[str], list[float]] | None:
        """The segment's popular list of ``version`` (the global one where the segment has
        none), or None if not read within ``SHARED_TTL_S``."""
        found = self._popular.get((version, segment))
        return found[1] if found is not None and now - found[0] < SHARED_TTL_S else None

    def trending(self, segment: str, now: float) -> dict[str, float] | None:
        """The segment's trending items and scores, or None if not read within ``SHARED_TTL_S``."""
        found = self._trending.get(segment)
        return found[1] if found is not None and now - found[0] < SHARED_TTL_S else None

    def keep_popular(
        self, version: int, segment: str, raw: Any, fallback: Any, now: float
    ) -> tuple[list[str], list[float]]:
        """Decode and keep the segment's list as read (the global ``fallback`` if it has none)."""
        found = raw if raw is not None else fallback
        popular = EMPTY if found is None else decode(found)
        _bounded(self._popular)[(version, segment)] = (now, popular)
        return popular

    def keep_trending(self, segment: str, raw: Any, now: float) -> dict[str, float]:
        """Decode and keep the segment's trending items as read (``ZREVRANGE … WITHSCORES``:
        ``[item, score]`` pairs under RESP3, a flat list of items and scores under RESP2)."""
        if raw and not isinstance(raw[0], list | tuple):
            flat = iter(raw)
            raw = zip(flat, flat, strict=True)
        trending = {_text(item): float(score) for item, score in raw}
        _bounded(self._trending)[segment] = (now, trending)
        return trending


def _bounded(entries: dict[Any, Any]) -> dict[Any, Any]:
    """``entries``, emptied first when full (segments come from requests: bound them)."""
    if len(entries) >= SHARED_MAX:
        entries.clear()
    return entries


def _seen(meta: list[Any]) -> _Expected:
    """The pointers one round trip read: live versions, canaries, global epoch."""
    canaries = (Canary.decode(meta[3]), Canary.decode(meta[4]), Canary.decode(meta[5]))
    return _Expected(_int(meta[0]), _int(meta[1]), _int(meta[2]), _text(meta[6] or b"0"), canaries)


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
