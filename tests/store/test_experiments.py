"""The pure parts of experiments: bucketing, canary pointers, the guard's decisions."""

from __future__ import annotations

from typing import cast

import pytest

from tandem.api.impressions import Impression, ImpressionLog
from tandem.api.metrics import IMPRESSIONS
from tandem.api.producer import AsyncProducer
from tandem.contracts.settings import GuardPolicy
from tandem.store.exceptions import StoreError
from tandem.store.experiments import BUCKETS, Canary, VariantStats, bucket, share_bp
from tandem.store.guards import interval, judge
from tandem.store.online import Assignment

POLICY = GuardPolicy(min_impressions=500, promote_after=1000, max_drop=0.05, z=2.33)


def test_buckets_are_stable_uniform_and_fresh_per_version() -> None:
    users = [f"u{n}" for n in range(20_000)]
    first = [bucket("u2i", 7, u) for u in users]
    assert first == [bucket("u2i", 7, u) for u in users]  # no per-process salt
    assert all(0 <= b < BUCKETS for b in first)
    assert abs(sum(b < 1000 for b in first) / len(users) - 0.1) < 0.01
    other = [bucket("u2i", 8, u) < 1000 for u in users]
    overlap = sum(a < 1000 and b for a, b in zip(first, other, strict=True)) / len(users)
    assert overlap < 0.02  # a new canary version draws a new sample, not the same users


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"12|2500|0", Canary(12, 2500, False)),
        ("12|10000|1", Canary(12, 10000, True)),
        (b"", None),
        (None, None),
        (b"garbage", None),
    ],
)
def test_canary_pointer(raw: bytes | str | None, expected: Canary | None) -> None:
    assert Canary.decode(raw) == expected
    if expected is not None:
        assert Canary.decode(expected.encode()) == expected


def test_share_as_fraction_or_percent() -> None:
    assert share_bp(0.25) == share_bp(25) == 2500
    with pytest.raises(StoreError):
        share_bp(0)


def test_a_shadow_canary_serves_nobody() -> None:
    assert not any(Canary(3, BUCKETS, shadow=True).serves("u2i", f"u{n}") for n in range(100))
    assert all(Canary(3, BUCKETS).serves("u2i", f"u{n}") for n in range(100))


def stats(impressions: int, clicks: int, degraded: int = 0, purchase: int = 0) -> VariantStats:
    return VariantStats(impressions=impressions, click=clicks, degraded=degraded, purchase=purchase)


@pytest.mark.parametrize(
    ("control", "canary", "action"),
    [
        (stats(400, 200), stats(400, 10), "wait"),  # below the minimum sample
        (stats(800, 240), stats(800, 120), "abort"),  # clearly worse
        (stats(800, 240), stats(800, 230), "wait"),  # not significant either way, too early
        (stats(3000, 300), stats(3000, 295), "wait"),  # equal: not shown non-inferior yet
        (stats(3000, 300), stats(3000, 420), "promote"),  # clearly not worse, sample reached
        (stats(800, 240), stats(800, 240, degraded=100), "abort"),  # degraded share
        (stats(800, 240), stats(800, 240, purchase=0), "wait"),
        (stats(800, 240, purchase=80), stats(800, 240, purchase=30), "abort"),  # conversion
    ],
)
def test_judge(control: VariantStats, canary: VariantStats, action: str) -> None:
    assert judge(control, canary, POLICY).action == action


def test_p99_guard_and_interval() -> None:
    slow = VariantStats(impressions=600, click=180, latency=(0, 0, 0, 0, 0, 500, 100, 0, 0, 0))
    assert slow.p99_ms() == 500
    decision = judge(stats(600, 180), slow, POLICY)
    assert decision.action == "abort" and "p99" in decision.reasons[0]
    low, high = interval(30, 100)
    assert low < 0.3 < high and high - low < 0.2


def test_the_impression_buffer_drops_and_counts_when_full() -> None:
    log = ImpressionLog(cast(AsyncProducer, None), sample=1.0, capacity=2)
    dropped = IMPRESSIONS.labels("dropped")
    before = dropped._value.get()
    for n in range(5):
        log.offer(Impression(f"r{n}", 0, 1.0, False, b"{}", Assignment()))
    assert dropped._value.get() - before == 3
    assert Assignment(("u2i",), (("u2i", 5, 0.2), ("i2i", 6, 0.5))).probability == 0.1
