"""Offline metrics, pure: ranked item lists against each query's held-out items.

Per-query values (``*_each``) feed a bootstrap over queries, so every mean comes with a 95%
interval; the means (``recall_at`` ...) are those values averaged over queries that have
relevant items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 1000


def recall_each(
    ranked: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int
) -> np.ndarray:
    """Share of each query's relevant items found in its top ``k`` (NaN: nothing relevant)."""
    return np.array(
        [
            len(set(r[:k]) & rel) / len(rel) if rel else np.nan
            for r, rel in zip(ranked, relevant, strict=True)
        ]
    )


def hit_each(ranked: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int) -> np.ndarray:
    """1 if a query's top ``k`` holds a relevant item, else 0 (NaN: nothing relevant)."""
    return np.array(
        [
            float(bool(set(r[:k]) & rel)) if rel else np.nan
            for r, rel in zip(ranked, relevant, strict=True)
        ]
    )


def ndcg_each(
    ranked: Sequence[Sequence[int]], gains: Sequence[Mapping[int, float]], k: int
) -> np.ndarray:
    """NDCG@k of each query with graded gains (absent items: gain 0; NaN: no gain at all)."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    scores = []
    for items, gain in zip(ranked, gains, strict=True):
        ideal = sorted((g for g in gain.values() if g > 0), reverse=True)[:k]
        if not ideal:
            scores.append(np.nan)
            continue
        dcg = sum(gain.get(item, 0.0) * discounts[n] for n, item in enumerate(items[:k]))
        scores.append(dcg / sum(g * discounts[n] for n, g in enumerate(ideal)))
    return np.array(scores)


def ap_each(ranked: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int) -> np.ndarray:
    """Average precision at ``k`` of each query (NaN: nothing relevant)."""
    scores = []
    for items, rel in zip(ranked, relevant, strict=True):
        if not rel:
            scores.append(np.nan)
            continue
        hits, total = 0, 0.0
        for n, item in enumerate(items[:k]):
            if item in rel:
                hits += 1
                total += hits / (n + 1)
        scores.append(total / min(len(rel), k))
    return np.array(scores)


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else 0.0


def recall_at(ranked: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int) -> float:
    """Mean share of each query's relevant items found in its top ``k``."""
    return _mean(recall_each(ranked, relevant, k))


def hit_rate_at(ranked: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int) -> float:
    """Share of queries with at least one relevant item in the top ``k``."""
    return _mean(hit_each(ranked, relevant, k))


def ndcg_at(ranked: Sequence[Sequence[int]], gains: Sequence[Mapping[int, float]], k: int) -> float:
    """Mean NDCG@k with graded gains (items absent from ``gains`` have gain 0)."""
    return _mean(ndcg_each(ranked, gains, k))


def map_at(ranked: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int) -> float:
    """Mean average precision at ``k``."""
    return _mean(ap_each(ranked, relevant, k))


def bootstrap_interval(
    values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` over resampled queries."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // values.size)
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        means[start : start + n] = values[rng.integers(0, values.size, (n, values.size))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return (float(low), float(high))


@dataclass(frozen=True)
class Estimate:
    """A metric's mean over ``users`` queries with its bootstrap 95% interval."""

    mean: float
    low: float
    high: float
    users: int

    @classmethod
    def of(cls, values: np.ndarray, seed: int = 0) -> Estimate:
        """The estimate of per-query ``values`` (NaN values are not queries)."""
        valid = values[~np.isnan(values)]
        low, high = bootstrap_interval(valid, seed=seed)
        return cls(float(valid.mean()) if valid.size else 0.0, low, high, int(valid.size))

    def text(self) -> str:
        """``0.1234 [0.1100, 0.1350]``."""
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class MetricRow:
    """One metric for all evaluated users and for those with and without training history."""

    name: str
    all: Estimate
    with_history: Estimate
    without_history: Estimate


def metric_row(name: str, values: np.ndarray, has_history: np.ndarray, seed: int = 0) -> MetricRow:
    """Estimates of ``values`` overall and split by ``has_history`` (aligned with ``values``)."""
    return MetricRow(
        name,
        Estimate.of(values, seed),
        Estimate.of(values[has_history], seed),
        Estimate.of(values[~has_history], seed),
    )


def table(rows: Sequence[MetricRow]) -> str:
    """The rows as a printable table, users counted per column."""
    if not rows:
        return "no evaluated users"
    first = rows[0]
    head = (
        f"{'metric':<26} {'all users (' + str(first.all.users) + ')':<26} "
        f"{'with history (' + str(first.with_history.users) + ')':<26} "
        f"without history ({first.without_history.users})"
    )
    lines = [head]
    for row in rows:
        cells = [
            e.text() if e.users else "-" for e in (row.all, row.with_history, row.without_history)
        ]
        lines.append(f"{row.name:<26} {cells[0]:<26} {cells[1]:<26} {cells[2]}")
    return "\n".join(lines)
