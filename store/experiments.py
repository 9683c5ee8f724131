"""Canary versions (A/B experiments): which users get the canary, starting and ending one, and
the online counters the stream worker keeps per version and variant.

A store's canary pointer (``Keys.canary``) sits in the same slot as its live pointer, so one
read sees both together and an answer never mixes versions. Its value is
``version|share_bp|shadow``: the canary version, the share of users it serves in basis points
(1/10,000), and whether it is a shadow (computed for comparison, never served).

A user is in the canary when a hash of store, canary version and user id falls in the first
``share_bp`` of 10,000 buckets: the same in every process and after every restart, and a new
canary version draws a fresh sample of users.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio import Redis

from tandem.contracts.ids import check_version
from tandem.contracts.versions import State
from tandem.store.exceptions import StoreError
from tandem.store.keys import Keys
from tandem.store.registry import Registry, VersionInfo, now_ms
from tandem.store.scripts import CANARY_END, CANARY_START

log = logging.getLogger(__name__)

BUCKETS = 10_000
CONTROL = "control"
CANARY = "canary"
SHADOW = "shadow"  # a shadow canary's answers, computed and compared, never served
VARIANTS = (CONTROL, CANARY)
# Counted per variant, by the stream worker (streams/attribution.py).
METRICS = ("impressions", "degraded", "click", "add_to_cart", "purchase", "latency_ms_sum")
# Answer latency histogram bounds (ms) kept per variant, for the p99 guard.
LATENCY_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500)


@dataclass(frozen=True, slots=True)
class Canary:
    """A store's canary: its version, the share of users it serves, whether only shadowed."""

    version: int
    share_bp: int
    shadow: bool = False

    @property
    def share(self) -> float:
        """The share of users as a fraction."""
        return self.share_bp / BUCKETS

    def encode(self) -> str:
        """The pointer's value."""
        return f"{self.version}|{self.share_bp}|{int(self.shadow)}"

    @classmethod
    def decode(cls, raw: bytes | str | None) -> Canary | None:
        """The pointer's value parsed; None for no canary (or one this code cannot read)."""
        if not raw:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            version, share_bp, shadow = text.split("|")
            return cls(int(version), int(share_bp), shadow == "1")
        except ValueError:
            log.warning("ignoring an unreadable canary pointer %r", text)
            return None

    def serves(self, store: str, user: str) -> bool:
        """Whether ``user`` gets this canary's answers."""
        return not self.shadow and bucket(store, self.version, user) < self.share_bp


def bucket(store: str, version: int, user: str) -> int:
    """The user's bucket (0 to 9,999) in the experiment of ``store`` ``version``."""
    digest = hashlib.blake2b(f"{store}:{version}:{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def share_bp(share: float) -> int:
    """A share of users (0 < share <= 1, or a percentage above 1) in basis points."""
    fraction = share / 100 if share > 1 else share
    if not 0 < fraction <= 1:
        raise StoreError("the canary share must be above 0 and at most 100 (percent)")
    return max(1, round(fraction * BUCKETS))


def counter_field(variant: str, metric: str) -> str:
    """A field of an experiment's counter hash."""
    return f"{variant}:{metric}"


def latency_field(variant: str, bound_ms: int | None) -> str:
    """The field counting answers of ``variant`` at most ``bound_ms`` (None: above all)."""
    return f"{variant}:lat_le_{'inf' if bound_ms is None else bound_ms}"


def latency_bound(took_ms: float) -> int | None:
    """The histogram bucket an answer's latency falls in."""
    return next((b for b in LATENCY_BOUNDS_MS if took_ms <= b), None)


@dataclass(frozen=True, slots=True)
class VariantStats:
    """One variant's counters in an experiment."""

    impressions: int = 0
    degraded: int = 0
    click: int = 0
    add_to_cart: int = 0
    purchase: int = 0
    latency_ms_sum: int = 0
    latency: tuple[int, ...] = ()  # answers per bucket of LATENCY_BOUNDS_MS, then above

    @property
    def ctr(self) -> float:
        """Impressions with a click, per impression."""
        return self.click / self.impressions if self.impressions else 0.0

    @property
    def conversion(self) -> float:
        """Impressions with a purchase, per impression."""
        return self.purchase / self.impressions if self.impressions else 0.0

    @property
    def degraded_share(self) -> float:
        """Answers degraded (deadline or Redis), per impression."""
        return self.degraded / self.impressions if self.impressions else 0.0

    def p99_ms(self) -> float | None:
        """The bucket bound under which 99% of answers fell (None: no answers yet)."""
        total = sum(self.latency)
        if not total:
            return None
        seen = 0
        for count, bound in zip(self.latency, (*LATENCY_BOUNDS_MS, None), strict=True):
            seen += count
            if seen >= 0.99 * total:
                return float("inf") if bound is None else float(bound)
        return float("inf")

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON output."""
        return {
            "impressions": self.impressions,
            "clicks": self.click,
            "add_to_carts": self.add_to_cart,
            "purchases": self.purchase,
            "ctr": round(self.ctr, 6),
            "conversion": round(self.conversion, 6),
            "degraded_share": round(self.degraded_share, 6),
            "p99_ms": self.p99_ms(),
        }


def parse_counters(raw: Mapping[Any, Any]) -> dict[str, VariantStats]:
    """An experiment's counter hash as stats per variant."""
    flat = {
        (k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items() if v is not None
    }
    out = {}
    for variant in VARIANTS:
        counts = {m: flat.get(counter_field(variant, m), 0) for m in METRICS}
        latency = tuple(flat.get(latency_field(variant, b), 0) for b in (*LATENCY_BOUNDS_MS, None))
        out[variant] = VariantStats(**counts, latency=latency)
    return out


class Experiments:
    """Starts and ends canaries; reads their counters."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self.registry = Registry(redis, keys)
        self._start = redis.register_script(CANARY_START)
        self._end = redis.register_script(CANARY_END)

    async def canary(self, store: str) -> Canary | None:
        """The store's canary, or None."""
        return Canary.decode(await self._redis.get(self._keys.canary(store)))

    async def start(self, store: str, version: int, share: float, shadow: bool) -> Canary:
        """Serve ``version`` to ``share`` of users (or shadow it). Only an ingested (verified,
        gated) version that is not live may be a canary; a running canary may change share."""
        check_version(version)
        info = await self.registry.get(store, version)
        if info is None or info.state not in (State.INGESTED, State.CANARY):
            state = "not in the registry" if info is None else info.state.value
            raise StoreError(
                f"{store} v{version} is {state}: only a validated version that is not live "
                "(ingested, e.g. materialized with --no-cutover) can be a canary"
            )
        canary = Canary(version, share_bp(share), shadow)
        metadata = {**info.metadata, "canary": {"share": canary.share, "shadow": shadow}}
        metadata["canary"]["started_ms"] = info.metadata.get("canary", {}).get(
            "started_ms", now_ms()
        )
        new = replace(info, state=State.CANARY, updated_ms=now_ms(), metadata=metadata)
        keys = [
            self._keys.canary(store),
            self._keys.live(store),
            self._keys.progress(store, version),
            self._keys.registry(store),
            self._keys.experiment(store, version),
        ]
        status = await self._start(
            keys=keys, args=[str(version), canary.encode(), info.to_json(), new.to_json()]
        )
        _check_start(store, version, int(status))
        log.info("store %s: v%s is the canary for %.2f%% of users", store, version, share * 100)
        return canary

    async def abort(self, store: str, version: int, reasons: list[str]) -> VersionInfo:
        """End the canary ``version`` without promoting it: rejected, with ``reasons``."""
        info = await self.registry.get(store, version)
        if info is None or info.state is not State.CANARY:
            raise StoreError(f"{store} v{version} is not the store's canary")
        canary = {**info.metadata.get("canary", {}), "ended_ms": now_ms(), "outcome": "aborted"}
        new = replace(
            info,
            state=State.REJECTED,
            updated_ms=now_ms(),
            reasons=tuple(reasons),
            metadata={**info.metadata, "canary": canary},
        )
        keys = [self._keys.canary(store), self._keys.registry(store)]
        if not await self._end(keys=keys, args=[str(version), new.to_json()]):
            raise StoreError(f"{store} v{version} stopped being the canary meanwhile")
        log.warning("store %s: canary v%s aborted: %s", store, version, "; ".join(reasons))
        return new

    async def counters(self, store: str, version: int) -> dict[str, VariantStats]:
        """The experiment's counters per variant."""
        return parse_counters(await self._redis.hgetall(self._keys.experiment(store, version)))

    async def shadow(self, store: str, version: int) -> dict[str, float | None]:
        """A shadow canary's answers so far: how many, their mean overlap with the answers
        served, and their mean and p99 latency."""
        raw = await self._redis.hgetall(self._keys.experiment(store, version))
        flat = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        answers = flat.get(counter_field(SHADOW, "answers"), 0)
        latency = tuple(flat.get(latency_field(SHADOW, b), 0) for b in (*LATENCY_BOUNDS_MS, None))
        return {
            "answers": answers,
            "overlap": flat.get(counter_field(SHADOW, "overlap_ppm"), 0) / 1e6 / answers
            if answers
            else None,
            "latency_ms": flat.get(counter_field(SHADOW, "latency_ms_sum"), 0) / answers
            if answers
            else None,
            "p99_ms": VariantStats(latency=latency).p99_ms(),
        }

    async def live_counters(self, store: str, version: int) -> VariantStats:
        """The counters of a version's control answers (all its answers while no canary runs)."""
        fields = [f"{version}:{CONTROL}:{m}" for m in METRICS] + [
            f"{version}:{latency_field(CONTROL, b)}" for b in (*LATENCY_BOUNDS_MS, None)
        ]
        values = await self._redis.hmget(self._keys.online(store), fields)
        named = {f.split(":", 1)[1]: v for f, v in zip(fields, values, strict=True) if v}
        return parse_counters(named)[CONTROL]

    async def online(self, store: str) -> list[dict[str, Any]]:
        """The store's counters per version and variant, newest version first."""
        raw = await self._redis.hgetall(self._keys.online(store))
        grouped: dict[tuple[int, str], dict[str, int]] = {}
        for key, value in raw.items():
            text = key.decode() if isinstance(key, bytes) else key
            number, variant, metric = text.split(":", 2)
            grouped.setdefault((int(number), variant), {})[metric] = int(value)
        rows = []
        for (version, kind), counts in sorted(grouped.items(), reverse=True):
            stats = parse_counters({counter_field(kind, m): n for m, n in counts.items()})
            rows.append({"version": str(version), "variant": kind, **stats[kind].to_dict()})
        return rows


def _check_start(store: str, version: int, status: int) -> None:
    problems = {
        -1: f"{store} v{version} is not materialized in Redis; replay it first",
        -2: f"{store} v{version} is live already",
        -3: f"{store} has another canary; promote or abort it first",
        0: f"{store} v{version} changed while starting the canary; try again",
    }
    if status != 1:
        raise StoreError(problems[status])
