"""The re-ranker trained from logged impressions: point-in-time labels, and a model that learns
what users respond to from the features served."""

from __future__ import annotations

import random
from typing import Any

from tandem.batch.from_logs import label, train_from_logs
from tandem.contracts.features import FEATURES
from tandem.contracts.schemas import Event

WAIT_MS = 60_000
NOW_MS = 10_000_000


def logged(request_id: str, user: str, ts_ms: int, rows: list[list[float]]) -> dict[str, Any]:
    items = [{"item_id": f"i{n}", "position": n, "features": row} for n, row in enumerate(rows)]
    return {
        "request_id": request_id,
        "user_id": user,
        "ts_ms": ts_ms,
        "feature_names": list(FEATURES),
        "items": items,
    }


def event(user: str, item: str, kind: str, ts_ms: int, request_id: str | None = None) -> Event:
    return Event(user, item, kind, ts_ms, f"e{random.random()}", request_id=request_id)


def test_labels_are_point_in_time() -> None:
    rows = [[0.0] * len(FEATURES) for _ in range(3)]
    impressions = [
        logged("r1", "u1", 1_000_000, rows),
        logged("r2", "u2", 1_000_000, rows),
        logged("r3", "u3", NOW_MS - 1000, rows),  # too young: its events may still come
    ]
    events = [
        event("u1", "i0", "click", 999_000),  # before the impression: never a label
        event("u1", "i1", "click", 1_001_000),
        event("u1", "i1", "purchase", 1_002_000),
        event("u1", "i2", "click", 1_000_000 + WAIT_MS + 1),  # after the wait
        event("u2", "i2", "add_to_cart", 5_000_000, request_id="r2"),  # named: counts
        event("u3", "i0", "click", NOW_MS - 500, request_id="r3"),
        event("u2", "i0", "view", 1_001_000),
    ]
    groups = label(impressions, events, WAIT_MS, NOW_MS)
    assert [labels.tolist() for _, labels in groups] == [[0.0, 3.0, 0.0], [0.0, 0.0, 2.0]]


def test_a_model_learns_from_the_features_served() -> None:
    rng = random.Random(1)
    impressions, events = [], []
    column = FEATURES.index("session_affinity") if "session_affinity" in FEATURES else 5
    for n in range(300):
        rows = [[rng.random() for _ in FEATURES] for _ in range(8)]
        impressions.append(logged(f"r{n}", f"u{n}", 1_000_000, rows))
        best = max(range(8), key=lambda i: rows[i][column])  # users click what this feature says
        events.append(event(f"u{n}", f"i{best}", "click", 1_001_000, request_id=f"r{n}"))
    result = train_from_logs(impressions, events, WAIT_MS, NOW_MS)
    assert result.model is not None and result.sessions == 300
    assert result.ndcg_rerank > result.ndcg_batch + 0.2  # replayed held-out impressions
