"""Offline metrics, pure: each takes ranked item lists and the relevant items per query."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def recall_at(ranked: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int) -> float:
    """Mean share of each query's relevant items found in its top ``k``."""
    scores = [
        len(set(r[:k]) & rel) / len(rel) for r, rel in zip(ranked, relevant, strict=True) if rel
    ]
    return float(np.mean(scores)) if scores else 0.0


def hit_rate_at(ranked: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int) -> float:
    """Share of queries with at least one relevant item in the top ``k``."""
    hits = [bool(set(r[:k]) & rel) for r, rel in zip(ranked, relevant, strict=True) if rel]
    return float(np.mean(hits)) if hits else 0.0


def ndcg_at(ranked: Sequence[Sequence[int]], gains: Sequence[Mapping[int, float]], k: int) -> float:
    """Mean NDCG@k with graded gains (items absent from ``gains`` have gain 0)."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    scores = []
    for items, gain in zip(ranked, gains, strict=True):
        if not gain:
            continue
        dcg = sum(gain.get(item, 0.0) * discounts[n] for n, item in enumerate(items[:k]))
        ideal = sorted(gain.values(), reverse=True)[:k]
        idcg = sum(g * discounts[n] for n, g in enumerate(ideal))
        scores.append(dcg / idcg if idcg > 0 else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def map_at(ranked: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int) -> float:
    """Mean average precision at ``k``."""
    scores = []
    for items, rel in zip(ranked, relevant, strict=True):
        if not rel:
            continue
        hits, total = 0, 0.0
        for n, item in enumerate(items[:k]):
            if item in rel:
                hits += 1
                total += hits / (n + 1)
        scores.append(total / min(len(rel), k))
    return float(np.mean(scores)) if scores else 0.0
