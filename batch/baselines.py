"""The evaluation: tandem's ranked candidates and the standard baselines on the same split.

Relevance comes from the held-out interactions alone, graded by event type
(``POSITIVE_WEIGHTS``), never from what any system retrieved. Items a user may not be shown
(``exclude``: by default everything seen in training) are neither recommended nor targets.
Baselines: popularity (recency-weighted over the training data), item-kNN and EASE, each
falling back to popularity for users without history.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tandem.batch import collaborative as collab
from tandem.batch.candidates import Clock, popularity
from tandem.batch.data import Dataset, code
from tandem.batch.evaluate import MetricRow, ap_each, hit_each, metric_row, ndcg_each, recall_each
from tandem.batch.split import Split
from tandem.contracts.domain import POSITIVE_WEIGHTS

TOP_K = 200
BASELINES = ("popularity", "itemknn", "ease")


def targets(split: Split, mask: sp.csr_matrix, n_items: int) -> dict[int, dict[int, float]]:
    """user → {item: gain}: held-out items with a positive grade the user may be shown."""
    test = split.test
    grade = test["event_type"].map(POSITIVE_WEIGHTS).to_numpy(dtype=np.float64)
    user, item = test["user"].to_numpy(), test["item"].to_numpy()
    allowed = np.asarray(mask[user, item]).ravel() == 0 if len(test) else np.zeros(0, bool)
    keep = (grade > 0) & allowed
    best = (
        pd.DataFrame({"user": user[keep], "item": item[keep], "gain": grade[keep]})
        .groupby(["user", "item"])["gain"]
        .max()
    )
    found: dict[int, dict[int, float]] = {}
    index = best.index
    for u, i, gain in zip(
        index.get_level_values(0), index.get_level_values(1), best.to_numpy(), strict=True
    ):
        found.setdefault(code(u), {})[code(i)] = float(gain)
    return found


def ranked_lists(
    frame: pd.DataFrame, scores: np.ndarray, users: np.ndarray
) -> dict[int, list[int]]:
    """user → candidate items, best first (top ``TOP_K``), for ``users``."""
    chosen = frame["user"].isin(users).to_numpy()
    ranked = (
        frame.loc[chosen, ["user", "item"]]
        .assign(score=scores[chosen])
        .sort_values(["user", "score"], ascending=[True, False], kind="stable")
        .groupby("user", sort=False)
        .head(TOP_K)
    )
    return {code(u): g["item"].tolist() for u, g in ranked.groupby("user", sort=False)}


def baseline_lists(
    data: Dataset, train: pd.DataFrame, clock: Clock, mask: sp.csr_matrix, users: np.ndarray
) -> dict[str, list[list[int]]]:
    """Each baseline's top ``TOP_K`` of ``users``."""
    seen = collab.binary(train, data.n_users, data.n_items)
    pop = popularity(train, data.n_items, clock)
    scorers = {
        "popularity": collab.popularity_scorer(pop),
        "itemknn": collab.knn_scorer(collab.item_knn(seen)),
        "ease": collab.ease_scorer(seen),
    }
    found = {}
    for name, scorer in scorers.items():
        items, scores = collab.top_items(scorer, seen, users, TOP_K, mask, fallback=pop)
        found[name] = [row[np.isfinite(s)].tolist() for row, s in zip(items, scores, strict=True)]
    return found


def _rows(
    prefix: str,
    lists: list[list[int]],
    gains: list[dict[int, float]],
    history: np.ndarray,
    seed: int,
    recall_name: str,
) -> list[MetricRow]:
    relevant = [set(g) for g in gains]
    return [
        metric_row(f"{prefix}_ndcg@10", ndcg_each(lists, gains, 10), history, seed),
        metric_row(f"{prefix}_hitrate@10", hit_each(lists, relevant, 10), history, seed),
        metric_row(f"{prefix}_map@10", ap_each(lists, relevant, 10), history, seed),
        metric_row(f"{recall_name}_recall@50", recall_each(lists, relevant, 50), history, seed),
        metric_row(f"{recall_name}_recall@200", recall_each(lists, relevant, 200), history, seed),
    ]


def evaluate(
    data: Dataset,
    outer: Split,
    clock: Clock,
    frame: pd.DataFrame,
    scores: np.ndarray,
    exclude: frozenset[str],
    max_users: int,
    seed: int,
) -> tuple[list[MetricRow], dict[str, float]]:
    """Rows for tandem (``ranker_*``, ``candidates_*``) and each baseline; their means."""
    mask = collab.excluded(outer.train, exclude, data.n_users, data.n_items)
    found = targets(outer, mask, data.n_items)
    users = np.array(sorted(found), dtype=np.int64)
    users = np.sort(np.random.default_rng(seed).permutation(users)[:max_users])
    history = np.bincount(outer.train["user"].to_numpy(), minlength=data.n_users)[users] > 0
    gains = [found[int(u)] for u in users]
    ranked = ranked_lists(frame, scores, users)
    rows = _rows(
        "ranker", [ranked.get(int(u), []) for u in users], gains, history, seed, "candidates"
    )
    for name, lists in baseline_lists(data, outer.train, clock, mask, users).items():
        rows += _rows(name, lists, gains, history, seed, name)
    metrics = {row.name: row.all.mean for row in rows}
    metrics["eval_users"] = float(users.size)
    metrics["eval_users_with_history"] = float(history.sum())
    return rows, metrics
