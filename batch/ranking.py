"""The batch ranker: LightGBM lambdarank over the candidates, trained on a time split."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from tandem.batch.candidates import SOURCES, Clock, decay, popularity
from tandem.batch.data import Dataset
from tandem.contracts.domain import POSITIVE_WEIGHTS

RANKS = tuple(f"{source}_rank" for source in SOURCES)
RANKER_FEATURES = (
    *SOURCES,
    *RANKS,
    "n_sources",
    "item_pop",
    "item_recent_pop",
    "user_category_share",
    "user_recent_category_share",
    "same_category_as_last",
    "user_activity",
)
RECENT_SHARE = 0.05
# One thread: LightGBM's OpenMP threads spin while they wait, and on a shared machine two
# of them took 40x longer than one (78 s against 2 s for the default synthetic set).
THREADS = 1  # the short-term popularity's half-life, as a share of the fitted one


def features(
    frame: pd.DataFrame, events: pd.DataFrame, data: Dataset, clock: Clock
) -> pd.DataFrame:
    """Ranker features of every candidate row, from the interactions in ``events``."""
    out = frame.copy()
    out["n_sources"] = (out[list(SOURCES)] > 0).sum(axis=1).astype(np.float32)
    for source, rank in zip(SOURCES, RANKS, strict=True):
        # rank within the user's list of that source (0: absent), comparable across users
        ranks = out.loc[out[source] > 0].groupby("user")[source].rank(ascending=False)
        out[rank] = 0.0
        out.loc[ranks.index, rank] = 1.0 / ranks.to_numpy()
    pop = np.log1p(popularity(events, data.n_items, clock))
    out["item_pop"] = pop[out["item"].to_numpy()]
    short = Clock(clock.now_ms, clock.half_life_ms * RECENT_SHARE)
    recent = np.log1p(popularity(events, data.n_items, short))
    out["item_recent_pop"] = recent[out["item"].to_numpy()]
    users, item_cat = out["user"].to_numpy(), data.item_category[out["item"].to_numpy()]
    weight = events["weight"].to_numpy()
    out["user_category_share"] = _category_share(events, data, weight)[users, item_cat]
    recent_weight = weight * decay(events["ts"].to_numpy(), short)
    out["user_recent_category_share"] = _category_share(events, data, recent_weight)[
        users, item_cat
    ]
    last = events.drop_duplicates("user", keep="last")  # events are sorted by user, then time
    last_category = np.full(data.n_users, -1)
    last_category[last["user"].to_numpy()] = data.item_category[last["item"].to_numpy()]
    out["same_category_as_last"] = (last_category[users] == item_cat).astype(np.float32)
    activity = np.log1p(np.bincount(events["user"].to_numpy(), minlength=data.n_users))
    out["user_activity"] = activity[out["user"].to_numpy()]
    for column in RANKER_FEATURES:
        out[column] = out[column].astype(np.float32)
    return out


def _category_share(events: pd.DataFrame, data: Dataset, weight: np.ndarray) -> np.ndarray:
    """users × categories: each user's share of ``weight`` per category."""
    n_cat = len(data.categories)
    category = data.item_category[events["item"].to_numpy()]
    share = np.bincount(
        events["user"].to_numpy() * n_cat + category, weights=weight, minlength=data.n_users * n_cat
    ).reshape(data.n_users, n_cat)
    result: np.ndarray = share / np.maximum(share.sum(axis=1, keepdims=True), 1e-9)
    return result


def labels(frame: pd.DataFrame, future: pd.DataFrame, n_items: int) -> np.ndarray:
    """Graded relevance of each candidate from the user's events after the split."""
    grade = future["event_type"].map(POSITIVE_WEIGHTS).to_numpy()
    key = future["user"].to_numpy(np.int64) * n_items + future["item"].to_numpy(np.int64)
    best = pd.Series(grade).groupby(key).max()
    cand_key = frame["user"].to_numpy(np.int64) * n_items + frame["item"].to_numpy(np.int64)
    return best.reindex(cand_key).fillna(0).to_numpy(dtype=np.int32)


def train(frame: pd.DataFrame, label: np.ndarray, seed: int = 0) -> lgb.Booster:
    """A model of "the user turns to this candidate next" over users with a relevant one;
    positives weighted by their grade (a purchase counts more than a view)."""
    frame = frame.assign(label=label)
    useful = frame.groupby("user")["label"].transform("max") > 0
    frame = frame.loc[useful]
    grade = frame["label"].to_numpy()
    dataset = lgb.Dataset(
        frame[list(RANKER_FEATURES)].to_numpy(),
        label=(grade > 0).astype(np.float32),
        weight=np.maximum(grade, 1).astype(np.float32),
        feature_name=list(RANKER_FEATURES),
    )
    # A pointwise objective with strong leaves: lambdarank over-fitted the validation window
    # (below its own best feature on the held-out data).
    params = {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 15,
        "min_data_in_leaf": 200,
        "verbose": -1,
        "seed": seed,
        "num_threads": THREADS,
        "deterministic": True,
        "force_row_wise": True,
    }
    return lgb.train(params, dataset, num_boost_round=100)


def score(model: lgb.Booster, frame: pd.DataFrame) -> np.ndarray:
    """Model scores of candidate rows."""
    return np.asarray(model.predict(frame[list(RANKER_FEATURES)].to_numpy(), num_threads=THREADS))


def top_k(frame: pd.DataFrame, scores: np.ndarray, k: int) -> pd.DataFrame:
    """The ``k`` best candidates of every user, best first, scores squashed into (0, 1)."""
    ranked = frame[["user", "item"]].assign(score=(1 / (1 + np.exp(-scores))).astype(np.float32))
    ranked = ranked.sort_values(["user", "score"], ascending=[True, False], kind="stable")
    return ranked.groupby("user", sort=False).head(k).reset_index(drop=True)
