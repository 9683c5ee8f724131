"""Synthetic interactions with real structure: categories with Zipf popularity, users with
long-term tastes, sessions whose intent drifts from those tastes, a funnel of event types,
devices and time-of-day effects. Deterministic for a seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tandem.contracts.domain import KNOWN_DEVICES, EventType

DEVICES = np.array([str(d) for d in KNOWN_DEVICES])
DEVICE_P = np.array([0.5, 0.3, 0.15, 0.05])
# How often each event type occurs.
EVENT_P = {
    EventType.VIEW: 0.6,
    EventType.CLICK: 0.22,
    EventType.ADD_TO_CART: 0.08,
    EventType.PURCHASE: 0.05,
    EventType.LIKE: 0.04,
    EventType.DISLIKE: 0.01,
}
EVENT_TYPES = np.array([str(kind) for kind in EVENT_P])
DAY_MS = 86_400_000
START_MS = 1_780_000_000_000


@dataclass(frozen=True)
class SynthSpec:
    """How big the data set is."""

    users: int = 2000
    items: int = 1000
    days: int = 14
    events_per_user: float = 40.0
    seed: int = 0

    @property
    def categories(self) -> int:
        """Number of item categories."""
        return max(10, self.items // 50)


def _items(
    spec: SynthSpec, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    category = rng.integers(spec.categories, size=spec.items)
    members, cdfs = [], []
    for c in range(spec.categories):
        ids = np.flatnonzero(category == c)
        if ids.size == 0:  # every category needs an item
            ids = np.array([c % spec.items])
        weights = 1.0 / (rng.permutation(ids.size) + 1.0) ** 1.1
        members.append(ids)
        cdfs.append(np.cumsum(weights) / weights.sum())
    return category, members, cdfs


def _sessions(spec: SynthSpec, rng: np.random.Generator) -> pd.DataFrame:
    mean_len = 6.0
    per_user = rng.poisson(spec.events_per_user / mean_len, size=spec.users) + 1
    user = np.repeat(np.arange(spec.users), per_user)
    n = user.size
    favorites = rng.integers(spec.categories, size=(spec.users, 3))
    taste = rng.dirichlet(np.ones(3) * 0.7, size=spec.users)
    pick = (rng.random(n)[:, None] > np.cumsum(taste[user], axis=1)).sum(axis=1).clip(0, 2)
    intent = favorites[user, pick]
    start = START_MS + rng.integers(0, spec.days * DAY_MS, size=n)
    hour_band = (start // 3_600_000 % 24) // 6
    drift = rng.random(n)
    # Sessions drift: 25% of them follow a fresh interest, 10% the time of day's favourite.
    intent = np.where(drift < 0.25, rng.integers(spec.categories, size=n), intent)
    intent = np.where(
        (drift >= 0.25) & (drift < 0.35),
        (hour_band * 7 + rng.integers(2, size=n)) % spec.categories,
        intent,
    )
    length = rng.geometric(1 / mean_len, size=n).clip(1, 40)
    device_of_user = rng.choice(len(DEVICES), size=spec.users, p=DEVICE_P)
    device = np.where(
        rng.random(n) < 0.85, device_of_user[user], rng.choice(len(DEVICES), size=n, p=DEVICE_P)
    )
    return pd.DataFrame(
        {"user": user, "intent": intent, "start": start, "length": length, "device": device}
    )


def generate(spec: SynthSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(interactions, items)`` as the batch stage reads them."""
    rng = np.random.default_rng(spec.seed)
    category, members, cdfs = _items(spec, rng)
    sessions = _sessions(spec, rng)
    idx = np.repeat(np.arange(len(sessions)), sessions["length"].to_numpy())
    offset = np.arange(idx.size) - np.repeat(
        np.cumsum(sessions["length"].to_numpy()) - sessions["length"].to_numpy(),
        sessions["length"].to_numpy(),
    )
    intent = sessions["intent"].to_numpy()[idx]
    # Within a session, a minority of events wander off the session's intent.
    wander = rng.random(idx.size) < 0.1
    intent = np.where(wander, rng.integers(spec.categories, size=idx.size), intent)
    item = np.empty(idx.size, dtype=np.int64)
    for c in range(spec.categories):
        where = np.flatnonzero(intent == c)
        draws = np.searchsorted(cdfs[c], rng.random(where.size))
        item[where] = members[c][draws.clip(0, members[c].size - 1)]
    ts = sessions["start"].to_numpy()[idx] + offset * rng.integers(20_000, 120_000, size=idx.size)
    interactions = pd.DataFrame(
        {
            "user_id": "u" + pd.Series(sessions["user"].to_numpy()[idx]).astype(str),
            "item_id": "i" + pd.Series(item).astype(str),
            "ts": ts.astype(np.int64),
            "event_type": EVENT_TYPES[
                rng.choice(len(EVENT_TYPES), size=idx.size, p=list(EVENT_P.values()))
            ],
            "device": DEVICES[sessions["device"].to_numpy()[idx]],
            "session_id": "s" + pd.Series(idx).astype(str),
        }
    ).sort_values(["ts", "user_id"], kind="stable", ignore_index=True)
    items = pd.DataFrame(
        {"item_id": [f"i{n}" for n in range(spec.items)], "category": [f"c{c}" for c in category]}
    )
    return interactions, items


def generate_ratings(spec: SynthSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ratings-shaped ``(interactions, items)``: one event per user and item (``like`` for a
    high rating, ``view`` for the rest), no sessions or devices, histories spanning years.

    Users have lasting tastes over a few categories and rate items by popularity within them,
    without repeats; each user is active over their own stretch of the ``spec.days`` span.
    """
    rng = np.random.default_rng(spec.seed)
    category, _, _ = _items(spec, rng)
    item_pop = 1.0 / (rng.permutation(spec.items) + 1.0) ** 0.9
    favorites = rng.integers(spec.categories, size=(spec.users, 3))
    taste = rng.dirichlet(np.ones(3) * 0.7, size=spec.users)
    count = np.clip(
        rng.lognormal(np.log(spec.events_per_user) - 0.5, 1.0, size=spec.users).astype(int),
        5,
        spec.items // 2,
    )
    span_ms = spec.days * DAY_MS
    first = rng.integers(0, span_ms, size=spec.users)
    active = (rng.random(spec.users) * (span_ms - first)).astype(np.int64) + DAY_MS
    parts = []
    for user in range(spec.users):
        affinity = np.full(spec.categories, 0.03)
        np.add.at(affinity, favorites[user], taste[user])
        weight = np.log(item_pop * affinity[category])
        keys = weight + rng.gumbel(size=spec.items)  # Gumbel top-k: sampling without repeats
        chosen = np.argpartition(-keys, count[user] - 1)[: count[user]]
        liked = rng.random(chosen.size) < 0.25 + 0.5 * (affinity[category[chosen]] > 0.2)
        ts = START_MS + first[user] + np.sort(rng.integers(0, active[user], size=chosen.size))
        parts.append(
            pd.DataFrame(
                {
                    "user_id": f"u{user}",
                    "item_id": "i" + pd.Series(chosen).astype(str),
                    "ts": ts.astype(np.int64),
                    "event_type": np.where(liked, "like", "view"),
                }
            )
        )
    interactions = pd.concat(parts, ignore_index=True).sort_values(
        ["ts", "user_id"], kind="stable", ignore_index=True
    )
    items = pd.DataFrame(
        {"item_id": [f"i{n}" for n in range(spec.items)], "category": [f"c{c}" for c in category]}
    )
    return interactions, items


SHAPES = ("sessions", "ratings")


def write(spec: SynthSpec, out: Path, shape: str = "sessions") -> tuple[int, int]:
    """Write ``interactions.parquet`` and ``items.parquet`` into ``out``; returns row counts."""
    interactions, items = generate_ratings(spec) if shape == "ratings" else generate(spec)
    out.mkdir(parents=True, exist_ok=True)
    interactions.to_parquet(out / "interactions.parquet", index=False)
    items.to_parquet(out / "items.parquet", index=False)
    return len(interactions), len(items)
