"""Candidate generation with sparse matrices (no dense user × item matrix anywhere).

- i2i: item → similar items from time-decayed session co-occurrence;
- u2i sources: i2i expansion of the user's history, a truncated SVD of the decayed user × item
  matrix, EASE and item-kNN (``collaborative``) over the user's recency-weighted history, and
  popularity (the cold-start path: users without history get it alone); merged with each
  source's score kept, for the ranker to blend;
- popular: segment (global, per device) → recency-weighted popular items.

Time decay halves every ``Clock.half_life_ms``, fitted to the data: the median age of the
training interactions, so data spanning years is not decayed to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from tandem.batch import collaborative as collab
from tandem.batch import engine

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
SOURCES = ("i2i", "svd", "pop", "ease", "knn", "cat")
POPULAR_PER_USER = 30
COLLABORATIVE_PER_USER = 200  # EASE, item-kNN and category sources: enough to fill a list
COLD_START_ITEMS = 200  # users without history: the most popular items


@dataclass(frozen=True)
class Clock:
    """The time training data is "as of", and the half-life of its decay."""

    now_ms: int
    half_life_ms: float

    @classmethod
    def fitted(cls, events: pd.DataFrame, now_ms: int) -> Clock:
        """Half-life: the median age of ``events`` at ``now_ms`` (at least an hour)."""
        ages = now_ms - events["ts"].to_numpy()
        return cls(now_ms, max(float(np.median(ages)) if ages.size else 0.0, HOUR_MS))


@dataclass
class Candidates:
    """Long-format candidates: one row per (user, item) with a score per source (0: absent)."""

    frame: pd.DataFrame  # user, item, i2i, svd, pop


def decay(ts: np.ndarray, clock: Clock) -> np.ndarray:
    """Time decay of events: 1 now, halving every ``clock.half_life_ms``."""
    return np.power(0.5, (clock.now_ms - ts) / clock.half_life_ms).astype(np.float32)


def user_item(events: pd.DataFrame, n_users: int, n_items: int, clock: Clock) -> sp.csr_matrix:
    """Decayed, weighted user × item interactions."""
    values = events["weight"].to_numpy() * decay(events["ts"].to_numpy(), clock)
    return sp.csr_matrix(
        (values, (events["user"].to_numpy(), events["item"].to_numpy())),
        shape=(n_users, n_items),
        dtype=np.float32,
    )


def top_k_rows(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of every row."""
    matrix = matrix.tocsr()
    rows, cols, vals = [], [], []
    for r in range(matrix.shape[0]):
        start, end = matrix.indptr[r], matrix.indptr[r + 1]
        if start == end:
            continue
        data = matrix.data[start:end]
        keep = np.argpartition(-data, k)[:k] if data.size > k else np.arange(data.size)
        rows.append(np.full(keep.size, r))
        cols.append(matrix.indices[start:end][keep])
        vals.append(data[keep])
    if not rows:
        return sp.csr_matrix(matrix.shape, dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=matrix.shape,
        dtype=np.float32,
    )


def item_to_item(events: pd.DataFrame, n_items: int, clock: Clock, k: int = 50) -> sp.csr_matrix:
    """Similar items from decayed session co-occurrence, cosine-normalized, top ``k`` per item."""
    sessions = pd.factorize(events["session"])[0]
    weight = decay(events["ts"].to_numpy(), clock)
    x = sp.csr_matrix(
        (weight, (sessions, events["item"].to_numpy())),
        shape=(int(sessions.max()) + 1 if sessions.size else 0, n_items),
        dtype=np.float32,
    )
    x.data = np.minimum(x.data, 1.0)  # repeated views in a session count once
    co = engine.gram(x)
    co.setdiag(0)
    co.eliminate_zeros()
    norm = np.sqrt(np.asarray(x.power(2).sum(axis=0)).ravel()) + 1e-6
    co = sp.diags(1 / norm) @ co @ sp.diags(1 / norm)
    return top_k_rows(co.tocsr(), k)


def popularity(events: pd.DataFrame, n_items: int, clock: Clock) -> np.ndarray:
    """Recency-weighted event counts per item."""
    return np.bincount(
        events["item"].to_numpy(), weights=decay(events["ts"].to_numpy(), clock), minlength=n_items
    ).astype(np.float32)


def recent_history(events: pd.DataFrame, n_users: int, n_items: int, clock: Clock) -> sp.csr_matrix:
    """User × item: the decay of the user's latest event with the item."""
    latest = events.drop_duplicates(["user", "item"], keep="last")
    return sp.csr_matrix(
        (
            decay(latest["ts"].to_numpy(), clock),
            (latest["user"].to_numpy(), latest["item"].to_numpy()),
        ),
        shape=(n_users, n_items),
        dtype=np.float32,
    )


def popular_by_segment(
    events: pd.DataFrame, n_items: int, clock: Clock, k: int = 200
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``segment → (items, scores)``: global and per device, scores scaled to [0, 1]."""
    found = {"global": events}
    found.update({f"device:{d}": group for d, group in events.groupby("device")})
    result = {}
    for segment, group in found.items():
        counts = popularity(group, n_items, clock)
        order = np.argsort(-counts, kind="stable")[:k]
        order = order[counts[order] > 0]
        result[segment] = (
            order,
            counts[order] / max(float(counts[order[0]]), 1e-9) if order.size else counts[order],
        )
    return result


def _long(matrix: sp.csr_matrix, column: str) -> pd.DataFrame:
    coo = matrix.tocoo()
    return pd.DataFrame(
        {
            "user": coo.row.astype(np.int32),
            "item": coo.col.astype(np.int32),
            column: coo.data.astype(np.float32),
        }
    )


def _svd_candidates(ui: sp.csr_matrix, k: int, factors: int, chunk: int = 2000) -> pd.DataFrame:
    norm = sp.diags(1 / (np.sqrt(np.asarray(ui.power(2).sum(axis=1)).ravel()) + 1e-6)) @ ui
    u, s, vt = svds(norm.astype(np.float64), k=min(factors, min(ui.shape) - 1), random_state=0)
    users_f = (u * s).astype(np.float32)
    items_f = vt.astype(np.float32)
    k = min(k, ui.shape[1])  # a catalog smaller than k: every item, not an IndexError
    parts = []
    for start in range(0, ui.shape[0], chunk):
        scores = users_f[start : start + chunk] @ items_f
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        rows = np.repeat(np.arange(start, start + scores.shape[0]), k)
        parts.append(
            pd.DataFrame(
                {
                    "user": rows.astype(np.int32),
                    "item": top.ravel().astype(np.int32),
                    "svd": np.take_along_axis(scores, top, axis=1).ravel(),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _top_frame(
    items: np.ndarray, scores: np.ndarray, users: np.ndarray, column: str
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "user": np.repeat(users.astype(np.int32), items.shape[1]),
            "item": items.ravel(),
            column: scores.ravel(),
        }
    )
    value = frame[column].to_numpy()
    kept: pd.DataFrame = frame.loc[np.isfinite(value) & (value > 0)]
    return kept


def category_scorer(
    events: pd.DataFrame, item_category: np.ndarray, clock: Clock
) -> tuple[sp.csr_matrix, collab.Scorer]:
    """Rows: users' decayed category shares; scores: share × the item's share of its category."""
    n_users = int(events["user"].max()) + 1 if len(events) else 0
    n_items, n_cat = item_category.size, int(item_category.max()) + 1
    weight = events["weight"].to_numpy() * decay(events["ts"].to_numpy(), clock)
    shares = sp.csr_matrix(
        (weight, (events["user"].to_numpy(), item_category[events["item"].to_numpy()])),
        shape=(n_users, n_cat),
        dtype=np.float32,
    )
    shares = (sp.diags(1 / (np.asarray(shares.sum(axis=1)).ravel() + 1e-9)) @ shares).tocsr()
    pop = popularity(events, n_items, clock)
    in_category = pop / (
        np.bincount(item_category, weights=pop, minlength=n_cat)[item_category] + 1e-9
    )
    members = sp.csr_matrix(
        (in_category.astype(np.float32), (item_category, np.arange(n_items))),
        shape=(n_cat, n_items),
    )

    def score(rows: sp.csr_matrix) -> np.ndarray:
        return np.asarray((rows @ members).toarray(), dtype=np.float32)

    return shares, score


def collaborative_frames(
    events: pd.DataFrame,
    shape: tuple[int, int],
    item_category: np.ndarray,
    clock: Clock,
    mask: sp.csr_matrix,
    k: int = COLLABORATIVE_PER_USER,
) -> list[pd.DataFrame]:
    """EASE, item-kNN and category candidates of every user with history, ``k`` each."""
    n_users, n_items = shape
    seen = collab.binary(events, n_users, n_items)
    recent = recent_history(events, n_users, n_items, clock)
    users = np.flatnonzero(np.diff(recent.indptr) > 0)
    frames = []
    shares, by_category = category_scorer(events, item_category, clock)
    shares.resize((n_users, shares.shape[1]))
    for column, scorer, rows in (
        ("ease", collab.ease_scorer(seen), recent),
        ("knn", collab.knn_scorer(collab.item_knn(seen)), recent),
        ("cat", by_category, shares),
    ):
        items, scores = collab.top_items(scorer, rows, users, k, mask)
        frames.append(_top_frame(items, scores, users, column))
    return frames


def user_candidates(
    events: pd.DataFrame,
    n_users: int,
    n_items: int,
    clock: Clock,
    i2i: sp.csr_matrix,
    exclude: frozenset[str],
    item_category: np.ndarray,
    per_source: int = 100,
    factors: int = 32,
) -> Candidates:
    """Merged candidates of every user from every source; items of ``exclude`` events left out."""
    ui = user_item(events, n_users, n_items, clock)
    history = top_k_rows(ui, 20)
    expanded = top_k_rows(history @ top_k_rows(i2i, 20), per_source)
    pop = popularity(events, n_items, clock)
    mask = collab.excluded(events, exclude, n_users, n_items)
    # The popular source is the same for every user: a few items each fill gaps, and users
    # without history (cold start) get them alone.
    top_pop = np.argsort(-pop, kind="stable")[: COLD_START_ITEMS + POPULAR_PER_USER]
    pop_frame = pd.DataFrame(
        {
            "user": np.repeat(np.arange(n_users, dtype=np.int32), top_pop.size),
            "item": np.tile(top_pop.astype(np.int32), n_users),
            "pop": np.tile(pop[top_pop] / max(float(pop.max()), 1e-9), n_users).astype(np.float32),
        }
    )
    merged = pd.concat(
        [
            _long(expanded, "i2i"),
            _svd_candidates(ui, per_source, factors),
            pop_frame,
            *collaborative_frames(events, (n_users, n_items), item_category, clock, mask),
        ],
        ignore_index=True,
    )
    del expanded, pop_frame
    key = merged["user"].to_numpy(np.int64) * n_items + merged["item"].to_numpy(np.int64)
    banned = mask.tocoo()
    banned_key = banned.row.astype(np.int64) * n_items + banned.col.astype(np.int64)
    merged = merged.loc[~np.isin(key, banned_key)]
    merged = merged.groupby(["user", "item"], sort=False, as_index=False).max().fillna(0.0)
    # the popular source: its POPULAR_PER_USER best items the user may still be shown
    pop_rank = (
        merged.loc[merged["pop"] > 0].groupby("user")["pop"].rank(ascending=False, method="first")
    )
    cold = np.bincount(events["user"].to_numpy(), minlength=n_users) == 0
    limit = np.where(cold, COLD_START_ITEMS, POPULAR_PER_USER)[merged.loc[pop_rank.index, "user"]]
    drop = pop_rank.index[pop_rank.to_numpy() > limit]
    merged.loc[drop, "pop"] = 0.0
    merged = merged.loc[(merged[list(SOURCES)] > 0).any(axis=1)]
    for column in SOURCES:
        merged[column] = merged[column].astype(np.float32)
    return Candidates(merged.reset_index(drop=True))
