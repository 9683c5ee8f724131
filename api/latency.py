"""Live latency and degraded share of recommendations, from this API process's own request
histogram (``metrics.REQUESTS``), over a sliding window (for the console)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import Histogram
from pydantic import BaseModel

RECOMMEND_ROUTE = "/v1/recommendations/{user_id}"
ANSWERED = frozenset({"ok", "cached", "degraded"})
WINDOW_S = 60.0
SNAPSHOT_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The route's cumulative counts at one moment: ``buckets`` are (upper bound in seconds,
    requests at most that slow) over every outcome, ``outcomes`` requests per outcome."""

    at_s: float
    buckets: tuple[tuple[float, float], ...]
    outcomes: dict[str, float]


class Latency(BaseModel, frozen=True):
    """Recommendations over the last ``window_s`` seconds (this process only)."""

    window_s: float
    requests: int
    rate_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    degraded_share: float | None
    errors: int


def take(histogram: Histogram, route: str, at_s: float) -> Snapshot:
    """The cumulative counts of ``route`` in ``histogram`` now."""
    buckets: dict[float, float] = {}
    outcomes: dict[str, float] = {}
    for family in histogram.collect():
        for sample in family.samples:
            if sample.labels.get("route") != route:
                continue
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                outcomes[sample.labels["outcome"]] = sample.value
    return Snapshot(at_s, tuple(sorted(buckets.items())), outcomes)


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile (seconds) of cumulative ``buckets``, interpolated inside its bucket
    as Prometheus' ``histogram_quantile`` does; None without observations. A quantile in the
    ``+Inf`` bucket is the highest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def between(old: Snapshot, new: Snapshot) -> Latency:
    """What happened from ``old`` to ``new``."""
    before = dict(old.buckets)
    buckets = [(bound, count - before.get(bound, 0.0)) for bound, count in new.buckets]
    done = {k: v - old.outcomes.get(k, 0.0) for k, v in new.outcomes.items()}
    requests = sum(done.values())
    answered = sum(v for k, v in done.items() if k in ANSWERED)
    window_s = max(new.at_s - old.at_s, 1e-9)
    p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
    return Latency(
        window_s=round(window_s, 3),
        requests=round(requests),
        rate_per_s=round(requests / window_s, 3),
        p50_ms=None if p50 is None else round(p50 * 1000, 3),
        p99_ms=None if p99 is None else round(p99 * 1000, 3),
        degraded_share=round(done.get("degraded", 0.0) / answered, 4) if answered else None,
        errors=round(requests - answered),
    )


class LiveWindow:
    """Snapshots of the last ``window_s`` seconds; each reading compares now with the oldest."""

    def __init__(self, histogram: Histogram, route: str = RECOMMEND_ROUTE) -> None:
        self._histogram = histogram
        self._route = route
        self._snapshots: deque[Snapshot] = deque([take(histogram, route, time.monotonic())])

    def read(self, window_s: float = WINDOW_S) -> Latency:
        """Latency and degraded share since the oldest snapshot at most ``window_s`` old (or
        since this window was made, when that is more recent)."""
        now = take(self._histogram, self._route, time.monotonic())
        while len(self._snapshots) > 1 and now.at_s - self._snapshots[1].at_s >= window_s:
            self._snapshots.popleft()
        if now.at_s - self._snapshots[-1].at_s >= SNAPSHOT_EVERY_S:  # at most ~61 kept
            self._snapshots.append(now)
        return between(self._snapshots[0], now)
