"""The online re-ranker, trained on held-out sessions with the features the API builds.

Each held-out session is cut in two: its first half is the session context the API would see,
its second half the items the user then touched. Candidates are what the API would merge (the
user's batch list, items similar to the session's items, popular items), featurized by the one
shared builder, so training and serving cannot drift apart.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
import scipy.sparse as sp

from tandem.batch.data import code
from tandem.batch.evaluate import ndcg_at
from tandem.batch.ranking import THREADS
from tandem.contracts.domain import KNOWN_DEVICES
from tandem.contracts.features import FEATURES, Context, build_features
from tandem.contracts.ranking import NO_SESSION, merge
from tandem.contracts.schemas import Event
from tandem.contracts.session import SessionPolicy, SessionState, update

MIN_SESSION = 4
MAX_SESSIONS = 6000


@dataclass
class RerankerResult:
    """The trained model and its held-out comparison with the batch order."""

    model: lgb.Booster | None
    ndcg_batch: float
    ndcg_rerank: float
    sessions: int

    @property
    def lift(self) -> float:
        """Relative NDCG@10 gain of re-ranking with session context over the batch order."""
        return self.ndcg_rerank / self.ndcg_batch - 1 if self.ndcg_batch else 0.0


@dataclass(frozen=True)
class ServingState:
    """What the API would have had at request time, as of the end of the training split."""

    batch_lists: dict[int, tuple[list[str], list[float]]]  # user code → the published u2i list
    i2i: sp.csr_matrix
    popular: tuple[list[str], list[float]]
    items: pd.Index  # item code → item id
    users: pd.Index  # user code → user id
    categories: dict[str, str]  # item id → category


def _context(
    rows: pd.DataFrame, items: pd.Index, categories: dict[str, str], user: str
) -> SessionState | None:
    state = None
    for item, kind, ts, device in rows[["item", "event_type", "ts", "device"]].itertuples(
        index=False
    ):
        item_id = str(items[item])
        event = Event(
            user,
            item_id,
            kind,
            int(ts),
            f"{user}{ts}{item}",
            device=device if device in KNOWN_DEVICES else None,
        )
        state = update(state, event, categories.get(item_id), SessionPolicy())
    return state


def _groups(
    sessions: pd.DataFrame, serving: ServingState, trending: dict[int, Counter[str]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    items, users, categories, i2i = (serving.items, serving.users, serving.categories, serving.i2i)
    groups = []
    for _, rows in sessions.groupby("session", sort=False):
        user = int(rows["user"].iloc[0])
        half = len(rows) // 2
        state = _context(rows.iloc[:half], items, categories, str(users[user]))
        targets = {str(items[i]) for i in rows["item"].iloc[half:]}
        view = state.view() if state else NO_SESSION
        similar = []
        for item, ts in view.seeds():
            row = i2i.getrow(items.get_loc(item))
            order = np.argsort(-row.data)
            similar.append(
                (ts, ([str(items[i]) for i in row.indices[order]], row.data[order].tolist()))
            )
        cands = merge(
            serving.batch_lists.get(user, ([], [])),
            similar,
            serving.popular,
            view.excluded,
            want=60,
        )
        if not cands:
            continue
        now = int(rows["ts"].iloc[half - 1])
        context = Context(now, state.device if state else None, view.affinity, view.events)
        feats = build_features(cands, context, categories, trending.get(now // 3_600_000, {}))
        label = np.array([1.0 if c.item_id in targets else 0.0 for c in cands], np.float32)
        if label.any():
            groups.append((feats, label))
    return groups


def train(held_out: pd.DataFrame, serving: ServingState, seed: int = 0) -> RerankerResult:
    """Train on 70% of held-out sessions; compare with the batch order on the other 30%."""
    sizes = held_out.groupby("session")["item"].transform("size")
    sessions = held_out.loc[sizes >= MIN_SESSION]
    chosen = (
        pd.Series(sessions["session"].unique())
        .sample(frac=1.0, random_state=seed)
        .iloc[:MAX_SESSIONS]
    )
    sessions = sessions.loc[sessions["session"].isin(chosen)]
    item_ids = serving.items[held_out["item"].to_numpy()].astype(str)
    trending: dict[int, Counter[str]] = {}
    for hour, group in pd.Series(item_ids).groupby((held_out["ts"] // 3_600_000).to_numpy()):
        trending[code(hour)] = Counter(group.tolist())
    return fit(_groups(sessions, serving, trending), seed)


def fit(groups: list[tuple[np.ndarray, np.ndarray]], seed: int = 0) -> RerankerResult:
    """A LambdaRank model on 70% of ``groups`` (features and graded labels of one list each,
    in the order served), compared with that order on the other 30%."""
    if len(groups) < 20:
        return RerankerResult(None, 0.0, 0.0, len(groups))
    cut = int(len(groups) * 0.7)
    fit, hold = groups[:cut], groups[cut:]
    dataset = lgb.Dataset(
        np.vstack([f for f, _ in fit]),
        label=np.concatenate([y for _, y in fit]),
        group=[len(y) for _, y in fit],
        feature_name=list(FEATURES),
    )
    model = lgb.train(
        {
            "objective": "lambdarank",
            "learning_rate": 0.05,
            "num_leaves": 15,
            "min_data_in_leaf": 20,
            "verbose": -1,
            "seed": seed,
            "num_threads": THREADS,
            "deterministic": True,
            "force_row_wise": True,
        },
        dataset,
        num_boost_round=80,
    )
    batch_ranked = [list(range(len(y))) for _, y in hold]
    reranked = [
        np.argsort(-np.asarray(model.predict(f, num_threads=THREADS)), kind="stable").tolist()
        for f, _ in hold
    ]
    gains = [{int(n): float(y[n]) for n in np.flatnonzero(y)} for _, y in hold]
    return RerankerResult(
        model, ndcg_at(batch_ranked, gains, 10), ndcg_at(reranked, gains, 10), len(groups)
    )
