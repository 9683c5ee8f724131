"""The batch ranker: LightGBM lambdarank over the candidates, trained on a time split."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from tandem.batch import engine
from tandem.batch.candidates import SOURCES, Clock, decay, popularity
from tandem.batch.data import Dataset
from tandem.contracts.domain import POSITIVE_WEIGHTS

# Within-list ranks of the sources whose ranks the models used (the i2i and SVD ranks and the
# number of sources had no gain in any of the four evaluated settings; dropped, they pay for
# the session-taste features' training time)
RANKED_SOURCES = ("pop", "ease", "knn", "cat")
RANKS = tuple(f"{source}_rank" for source in RANKED_SOURCES)
RANKER_FEATURES = (
    *SOURCES,
    *RANKS,
    "item_pop",
    "item_recent_pop",
    "user_category_share",
    "user_recent_category_share",
    "same_category_as_last",
    "user_activity",
    "user_session_category_share",
    "item_category_share",
    "session_category_score",
)
RECENT_SHARE = 0.05  # the short-term popularity's half-life, as a share of the fitted one
ROUNDS = 100
SESSION_PRIOR = 1.0  # pseudo-sessions spread evenly over categories (chosen on validation)
MIN_BLOCK_ROWS = 500_000  # training rows per worker before the ranker trains data-parallel
# One thread: LightGBM's OpenMP threads spin while they wait, and on a shared machine two
# of them took 40x longer than one (78 s against 2 s for the default synthetic set).
THREADS = 1
TIME_OUT_MIN = 15  # LightGBM's socket time-out between ranks on Dask


@dataclass(frozen=True)
class FeatureContext:
    """What the features need from the interactions, computed once: item and per-user tables
    (small beside the candidates), so any chunk of users' candidates gets its features alone,
    in this process or on a Dask worker, with the same numbers."""

    item_pop: np.ndarray
    item_recent_pop: np.ndarray
    item_category: np.ndarray
    category_share: np.ndarray  # users × categories
    recent_category_share: np.ndarray
    last_category: np.ndarray  # per user, -1 without history
    activity: np.ndarray
    session_category_share: np.ndarray  # users × categories, undecayed, by session
    item_category_share: np.ndarray  # per item: its share of its category's events

    @classmethod
    def of(cls, events: pd.DataFrame, data: Dataset, clock: Clock) -> FeatureContext:
        """The context of the interactions in ``events``."""
        short = Clock(clock.now_ms, clock.half_life_ms * RECENT_SHARE)
        weight = events["weight"].to_numpy()
        recent_weight = weight * decay(events["ts"].to_numpy(), short)
        last = events.drop_duplicates("user", keep="last")  # sorted by user, then time
        last_category = np.full(data.n_users, -1)
        last_category[last["user"].to_numpy()] = data.item_category[last["item"].to_numpy()]
        return cls(
            np.log1p(popularity(events, data.n_items, clock)),
            np.log1p(popularity(events, data.n_items, short)),
            data.item_category,
            _category_share(events, data, weight),
            _category_share(events, data, recent_weight),
            last_category,
            np.log1p(np.bincount(events["user"].to_numpy(), minlength=data.n_users)),
            session_category_share(events, data),
            item_category_share(events, data),
        )


def features(
    frame: pd.DataFrame, events: pd.DataFrame, data: Dataset, clock: Clock
) -> pd.DataFrame:
    """Ranker features of every candidate row, from the interactions in ``events``."""
    return chunk_features(frame, FeatureContext.of(events, data, clock))


def chunk_features(frame: pd.DataFrame, ctx: FeatureContext) -> pd.DataFrame:
    """Ranker features of candidate rows (whole users: ranks are within a user's list)."""
    out = frame.copy()
    for source, rank in zip(RANKED_SOURCES, RANKS, strict=True):
        # rank within the user's list of that source (0: absent), comparable across users
        ranks = out.loc[out[source] > 0].groupby("user")[source].rank(ascending=False)
        out[rank] = 0.0
        out.loc[ranks.index, rank] = 1.0 / ranks.to_numpy()
    items = out["item"].to_numpy()
    out["item_pop"] = ctx.item_pop[items]
    out["item_recent_pop"] = ctx.item_recent_pop[items]
    users, item_cat = out["user"].to_numpy(), ctx.item_category[items]
    out["user_category_share"] = ctx.category_share[users, item_cat]
    out["user_recent_category_share"] = ctx.recent_category_share[users, item_cat]
    out["same_category_as_last"] = (ctx.last_category[users] == item_cat).astype(np.float32)
    out["user_activity"] = ctx.activity[users]
    out["user_session_category_share"] = ctx.session_category_share[users, item_cat]
    out["item_category_share"] = ctx.item_category_share[items]
    out["session_category_score"] = (
        out["user_session_category_share"].to_numpy() * out["item_category_share"].to_numpy()
    )
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
    # float32: the features are float32 anyway, and the table goes to every Dask worker
    result: np.ndarray = (share / np.maximum(share.sum(axis=1, keepdims=True), 1e-9)).astype(
        np.float32
    )
    return result


def session_category_share(events: pd.DataFrame, data: Dataset) -> np.ndarray:
    """users × categories: each user's share of sessions per category (a session counts for
    the category most of its events fall in), undecayed and smoothed towards uniform.

    Why sessions and not events: a session follows one intent, and its length says little
    about how often the user comes back to that intent; counted by events, one long session
    outweighs several short ones. Undecayed: a taste lasts longer than a few days' decay."""
    n_cat = len(data.categories)
    sessions = int(events["session"].max()) + 1 if len(events) else 1
    visit = events["user"].to_numpy(np.int64) * sessions + events["session"].to_numpy(np.int64)
    found, size = np.unique(  # (user's session, category) pairs, sorted, with their events
        visit * n_cat + data.item_category[events["item"].to_numpy()], return_counts=True
    )
    visits = found // n_cat
    # per session, its category with the most events first (ties: the lower category code)
    order = np.lexsort((-size, visits))
    intent = order[np.r_[True, visits[order][1:] != visits[order][:-1]]] if order.size else order
    counts = np.bincount(
        visits[intent] // sessions * n_cat + found[intent] % n_cat, minlength=data.n_users * n_cat
    ).reshape(data.n_users, n_cat)
    share = (counts + SESSION_PRIOR / n_cat) / (counts.sum(axis=1, keepdims=True) + SESSION_PRIOR)
    result: np.ndarray = share.astype(np.float32)
    return result


def item_category_share(events: pd.DataFrame, data: Dataset) -> np.ndarray:
    """Per item: its share of its category's events (undecayed), how likely a session in
    that category reaches it."""
    n_cat = len(data.categories)
    counts = np.bincount(events["item"].to_numpy(), minlength=data.n_items).astype(np.float64)
    per_category = np.bincount(data.item_category, weights=counts, minlength=n_cat)
    result: np.ndarray = (counts / np.maximum(per_category[data.item_category], 1.0)).astype(
        np.float32
    )
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
    x = frame[list(RANKER_FEATURES)].to_numpy()
    target = (grade > 0).astype(np.float32)
    weight = np.maximum(grade, 1).astype(np.float32)
    # A pointwise objective with strong leaves: lambdarank over-fitted the validation window
    # (below its own best feature on the held-out data).
    params: dict[str, Any] = {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 15,
        "min_data_in_leaf": 200,
        "verbose": -1,
        "seed": seed,
        "num_threads": THREADS,
        "deterministic": True,
        "force_row_wise": True,
        "feature_pre_filter": False,
        "min_data_in_bin": 1,
    }
    on = engine.current()
    if isinstance(on, engine.OnDask):
        return _train_on_dask(on, params, x, target, weight)
    dataset = lgb.Dataset(x, label=target, weight=weight, feature_name=list(RANKER_FEATURES))
    return lgb.train(params, dataset, num_boost_round=ROUNDS)


def _train_on_dask(
    on: engine.OnDask, params: dict[str, Any], x: np.ndarray, target: np.ndarray, w: np.ndarray
) -> lgb.Booster:
    """The same model trained by ``lightgbm.dask`` on the cluster: the rows cut into one block
    per worker (data-parallel: each worker builds the histograms of its block), blocks of at
    least ``MIN_BLOCK_ROWS``. Below that one worker trains alone and the model is the serial
    one; data-parallel trees differ a little from serial ones (3% NDCG@10 on 1,000 users).

    Each block is scattered once, straight to the worker that trains on it, and the dask
    arrays handed to LightGBM are made of those futures: the rows never travel inside the task
    graph (a 457 MB graph at 30,000 users when they did), and a worker holds its block, the
    copy LightGBM concatenates and the binned dataset, not its share three times over."""
    from lightgbm.dask import DaskLGBMClassifier

    workers = sorted(on.client.scheduler_info()["workers"]) or [None]
    rows = max(-(-x.shape[0] // len(workers)), MIN_BLOCK_ROWS)
    starts = range(0, x.shape[0], rows)
    placed = [
        _scattered(on, (x[s : s + rows], target[s : s + rows], w[s : s + rows]), worker)
        for s, worker in zip(starts, workers, strict=False)
    ]
    data, label, weight = (_concatenated([part[n] for part in placed]) for n in range(3))
    # lightgbm.dask sets each worker's threads itself; a lost worker leaves its peer waiting
    # on a socket: fail after TIME_OUT_MIN minutes rather than LightGBM's two hours
    kept = {name: value for name, value in params.items() if name != "num_threads"}
    model = DaskLGBMClassifier(client=on.client, n_estimators=ROUNDS, time_out=TIME_OUT_MIN, **kept)
    with warnings.catch_warnings():  # its own default n_jobs, which it then drops
        warnings.filterwarnings("ignore", "Parameter n_jobs will be ignored")
        model.fit(data, label, sample_weight=weight, feature_name=list(RANKER_FEATURES))
    on.tasks += len(placed)
    on.ranker_fits += 1
    booster: lgb.Booster = model.to_local().booster_
    return booster


def _scattered(on: engine.OnDask, arrays: tuple[np.ndarray, ...], worker: str | None) -> list[Any]:
    """Dask arrays of ``arrays``, each one chunk already held by ``worker``."""
    import dask.array as da
    from dask.delayed import delayed

    futures = on.client.scatter(list(arrays), workers=worker, hash=False)
    as_array: Callable[..., Any] = da.from_delayed  # dask is not typed
    return [
        as_array(delayed(future), shape=array.shape, dtype=array.dtype)
        for future, array in zip(futures, arrays, strict=True)
    ]


def _concatenated(parts: list[Any]) -> Any:
    """One dask array of the blocks (each block stays a chunk on its worker)."""
    import dask.array as da

    concatenate: Callable[..., Any] = da.concatenate  # dask is not typed
    return parts[0] if len(parts) == 1 else concatenate(parts)


def score(model: lgb.Booster, frame: pd.DataFrame) -> np.ndarray:
    """Model scores of candidate rows."""
    return np.asarray(model.predict(frame[list(RANKER_FEATURES)].to_numpy(), num_threads=THREADS))


def top_k(frame: pd.DataFrame, scores: np.ndarray, k: int) -> pd.DataFrame:
    """The ``k`` best candidates of every user, best first, scores squashed into (0, 1)."""
    ranked = frame[["user", "item"]].assign(score=(1 / (1 + np.exp(-scores))).astype(np.float32))
    ranked = ranked.sort_values(["user", "score"], ascending=[True, False], kind="stable")
    return ranked.groupby("user", sort=False).head(k).reset_index(drop=True)
