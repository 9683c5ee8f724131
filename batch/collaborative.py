"""Collaborative scorers shared by tandem's candidate sources and the evaluation's baselines.

One implementation each: popularity, item-kNN (cosine over the user × item matrix) and EASE
(Steck, 2019: a closed-form item × item regression). Users are scored in chunks, so no dense
user × item matrix exists; items a user may not be shown are masked before the top ``k``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tandem.batch import engine

# EASE is a dense item × item solve (O(n³), 0.5 GB at 8,000 items): the most interacted only
EASE_MAX_ITEMS = 8_000
EASE_LAMBDA = 200.0
KNN_NEIGHBOURS = 100
USER_CHUNK = 2048

Scorer = Callable[[sp.csr_matrix], np.ndarray]


def binary(events: pd.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    """1 where a user interacted with an item (any event type)."""
    matrix = sp.csr_matrix(
        (
            np.ones(len(events), dtype=np.float32),
            (events["user"].to_numpy(), events["item"].to_numpy()),
        ),
        shape=(n_users, n_items),
    )
    matrix.data[:] = 1.0
    return matrix


def excluded(
    events: pd.DataFrame, kinds: frozenset[str], n_users: int, n_items: int
) -> sp.csr_matrix:
    """1 where a user had an event of one of ``kinds`` with an item: never recommended again."""
    return binary(events.loc[events["event_type"].isin(list(kinds))], n_users, n_items)


def item_knn(x: sp.csr_matrix, k: int = KNN_NEIGHBOURS) -> sp.csr_matrix:
    """Item × item cosine similarity, the ``k`` most similar items of each item kept."""
    from tandem.batch.candidates import top_k_rows

    norm = np.sqrt(np.asarray(x.power(2).sum(axis=0)).ravel()) + 1e-6
    co = engine.gram(x).astype(np.float32)
    co.setdiag(0)
    co.eliminate_zeros()
    co = (sp.diags(1 / norm) @ co @ sp.diags(1 / norm)).tocsr()
    return top_k_rows(co, k)


def ease(x: sp.csr_matrix, lam: float = EASE_LAMBDA) -> tuple[np.ndarray, np.ndarray]:
    """``(items, B)``: EASE weights over the most interacted ``EASE_MAX_ITEMS`` items."""
    counts = np.asarray(x.sum(axis=0)).ravel()
    items = np.sort(np.argsort(-counts, kind="stable")[:EASE_MAX_ITEMS])
    items = items[counts[items] > 0]
    sub = x[:, items]
    gram = engine.gram(sub).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    return items, b.astype(np.float32)


def ease_scorer(x: sp.csr_matrix, lam: float = EASE_LAMBDA) -> Scorer:
    """Scores of a chunk of users' rows of ``x`` from EASE weights fitted on ``x``."""
    items, b = ease(x, lam)
    n_items = x.shape[1]

    def score(rows: sp.csr_matrix) -> np.ndarray:
        out = np.zeros((rows.shape[0], n_items), dtype=np.float32)
        out[:, items] = np.asarray(rows[:, items] @ b)
        return out

    return score


def knn_scorer(similarity: sp.csr_matrix) -> Scorer:
    """Scores of a chunk of users' rows: their items' neighbours, summed."""

    def score(rows: sp.csr_matrix) -> np.ndarray:
        return np.asarray((rows @ similarity).toarray(), dtype=np.float32)

    return score


def popularity_scorer(counts: np.ndarray) -> Scorer:
    """The same popularity scores for every user."""
    counts = counts.astype(np.float32)

    def score(rows: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(counts, (rows.shape[0], counts.size)).copy()

    return score


def top_items(
    scorer: Scorer,
    x: sp.csr_matrix,
    users: np.ndarray,
    k: int,
    mask: sp.csr_matrix,
    fallback: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(items, scores)`` (users × ``k``, best first) of ``users``; masked items never appear.

    Users whose row of ``x`` is empty get ``fallback`` scores (popularity) instead. Chunks of
    users are scored by the current engine (``engine.current``).
    """
    k = min(k, x.shape[1])
    chunks = [
        (x[users[start : start + USER_CHUNK]], mask[users[start : start + USER_CHUNK]])
        for start in range(0, users.size, USER_CHUNK)
    ]
    parts = engine.current().map(_top_chunk, chunks, scorer=scorer, k=k, fallback=fallback)
    if not parts:
        return np.empty((0, k), dtype=np.int32), np.empty((0, k), dtype=np.float32)
    return (
        np.concatenate([items for items, _ in parts]),
        np.concatenate([scores for _, scores in parts]),
    )


def _top_chunk(
    chunk: tuple[sp.csr_matrix, sp.csr_matrix],
    scorer: Scorer,
    k: int,
    fallback: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    rows, banned_rows = chunk
    value = scorer(rows)
    if fallback is not None:
        value[np.diff(rows.indptr) == 0] = fallback
    banned = banned_rows.tocoo()
    value[banned.row, banned.col] = -np.inf
    top = np.argpartition(-value, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(value, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return (
        np.take_along_axis(top, order, axis=1).astype(np.int32),
        np.take_along_axis(top_scores, order, axis=1).astype(np.float32),
    )
