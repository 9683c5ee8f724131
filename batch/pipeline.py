"""The batch stage end to end: load, split, candidates, ranker, re-ranker, evaluation, lists.

Data loading and candidate generation work on pandas frames and scipy sparse matrices with
integer codes, one function per step: a Dask engine can take their place (dask.dataframe for
the frames, lightgbm.dask for training) without changing the steps' contracts.
"""

from __future__ import annotations

import functools
import logging
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import pandas as pd
import scipy.sparse as sp
from tqdm import tqdm

from tandem.batch import candidates as cand
from tandem.batch import ranking, rerank_train
from tandem.batch.data import Dataset, code, load
from tandem.batch.evaluate import hit_rate_at, map_at, ndcg_at, recall_at
from tandem.batch.exceptions import InputError
from tandem.contracts.schemas import CandidateList

log = logging.getLogger(__name__)

T = TypeVar("T")
TOP_K = 200
TEST_SHARE = 0.15
MAX_FIT_USERS = 20_000
MAX_EVAL_USERS = 10_000


@dataclass
class StageTiming:
    """Wall time and peak resident memory after one stage."""

    name: str
    seconds: float
    peak_mb: float


@dataclass
class BatchOutput:
    """What a run produced: the three stores' lists, the re-ranker and the evaluation."""

    data: Dataset
    u2i: pd.DataFrame  # user, item, score (top K per user, best first)
    i2i: sp.csr_matrix
    popular: dict[str, tuple[np.ndarray, np.ndarray]]
    metrics: dict[str, float]
    reranker_model: str | None
    timings: list[StageTiming] = field(default_factory=list)

    def table(self) -> str:
        """The evaluation as a printable table."""
        rows = [f"{name:<34} {value:>8.4f}" for name, value in self.metrics.items()]
        return "\n".join(["metric                               value", *rows])

    def categories_json(self) -> bytes:
        """Item id → category name, the ``categories`` attachment of the u2i version."""
        names = self.data.categories[self.data.item_category]
        return orjson.dumps(dict(zip(self.data.items.astype(str), names.astype(str), strict=True)))

    def u2i_rows(self) -> Iterator[CandidateList]:
        """The u2i store's lists."""
        users = self.u2i["user"].to_numpy()
        items = self.data.items.to_numpy().astype(str)[self.u2i["item"].to_numpy()]
        scores = self.u2i["score"].to_numpy()
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], users.size]
        for start, end in zip(starts, ends, strict=True):
            yield CandidateList(
                str(self.data.users[users[start]]),
                items[start:end].tolist(),
                scores[start:end].tolist(),
            )

    def i2i_rows(self, k: int = 50) -> Iterator[CandidateList]:
        """The i2i store's lists (scores scaled to [0, 1] per item)."""
        names = self.data.items.to_numpy().astype(str)
        for row in range(self.i2i.shape[0]):
            start, end = self.i2i.indptr[row], self.i2i.indptr[row + 1]
            if start == end:
                continue
            data = self.i2i.data[start:end]
            order = np.argsort(-data, kind="stable")[:k]
            top = float(data[order[0]]) or 1.0
            yield CandidateList(
                str(names[row]),
                names[self.i2i.indices[start:end][order]].tolist(),
                (data[order] / top).tolist(),
            )

    def popular_rows(self) -> Iterator[CandidateList]:
        """The popular store's lists, one per segment."""
        names = self.data.items.to_numpy().astype(str)
        for segment, (items, scores) in self.popular.items():
            yield CandidateList(segment, names[items].tolist(), scores.astype(float).tolist())


class Stages:
    """Runs named steps with a progress bar, recording wall time and peak memory."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.timings: list[StageTiming] = []
        self._bar = tqdm(total=total, desc="batch", unit="stage", disable=quiet or None)

    def run(self, name: str, step: Callable[[], T]) -> T:
        """Run one step."""
        self._bar.set_postfix_str(name)
        started = time.perf_counter()
        result = step()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.timings.append(StageTiming(name, time.perf_counter() - started, peak_mb))
        log.info("%s: %.1f s, peak %.0f MB", name, self.timings[-1].seconds, peak_mb)
        self._bar.update()
        return result

    def close(self) -> None:
        """Finish the progress bar."""
        self._bar.close()


def _ranked_lists(frame: pd.DataFrame, scores: np.ndarray) -> dict[int, list[int]]:
    ranked = (
        frame[["user", "item"]]
        .assign(score=scores)
        .sort_values(["user", "score"], ascending=[True, False], kind="stable")
    )
    return {code(u): g["item"].tolist() for u, g in ranked.groupby("user", sort=False)}


def _evaluate(
    frame: pd.DataFrame,
    scores: np.ndarray,
    label: np.ndarray,
    test: pd.DataFrame,
    train_events: pd.DataFrame,
    data: Dataset,
    eval_users: np.ndarray,
    now_ms: int,
) -> dict[str, float]:
    relevant = {code(u): set(g["item"].tolist()) for u, g in test.groupby("user")}
    gains_frame = frame.assign(label=label)
    users = [int(u) for u in eval_users if int(u) in relevant]
    in_eval = frame["user"].isin(users).to_numpy()
    ranked = _ranked_lists(frame.loc[in_eval], scores[in_eval])
    gains_by_user = {
        code(u): dict(zip(g["item"], g["label"], strict=True))
        for u, g in gains_frame.loc[in_eval & (label > 0)].groupby("user")
    }
    for u, items in relevant.items():  # items outside the candidates still count as relevant
        gains_by_user.setdefault(u, {}).update(
            {i: 1 for i in items if i not in gains_by_user.get(u, {})}
        )
    lists = [ranked.get(u, []) for u in users]
    rel = [relevant[u] for u in users]
    gains = [gains_by_user.get(u, {}) for u in users]
    pop = cand.popularity(train_events, data.n_items, now_ms)
    bought = train_events.loc[train_events["event_type"] == "purchase"].groupby("user")["item"]
    bought_sets = {code(u): set(g.tolist()) for u, g in bought}
    order = np.argsort(-pop, kind="stable")[:300].tolist()
    baseline = [[i for i in order if i not in bought_sets.get(u, set())][:10] for u in users]
    return {
        "candidates_recall@50": recall_at(lists, rel, 50),
        "candidates_recall@200": recall_at(lists, rel, 200),
        "ranker_ndcg@10": ndcg_at(lists, gains, 10),
        "ranker_hitrate@10": hit_rate_at(lists, rel, 10),
        "ranker_map@10": map_at(lists, rel, 10),
        "popularity_ndcg@10": ndcg_at(baseline, gains, 10),
        "popularity_hitrate@10": hit_rate_at(baseline, rel, 10),
        "popularity_map@10": map_at(baseline, rel, 10),
        "eval_users": float(len(users)),
    }


def run(data_dir: Path, *, seed: int = 0, quiet: bool = False) -> BatchOutput:
    """The whole batch stage on ``data_dir`` (interactions.* and an optional items.*)."""
    stages = Stages(total=8, quiet=quiet)
    interactions = next(iter(sorted(data_dir.glob("interactions.*"))), None)
    if interactions is None:
        raise InputError(
            f"{data_dir}: no interactions.parquet or interactions.csv; write one with "
            "`tandem data synth --out DIR` or see the README for its columns"
        )
    items_file = next(iter(sorted(data_dir.glob("items.*"))), None)
    data = stages.run("load", lambda: load(interactions, items_file))
    # The time-split work runs in its own frame, so its candidates are freed before the final
    # lists are built (they would otherwise double the peak memory).
    model, metrics, reranker = _learn(stages, data, seed)
    hi = int(data.events["ts"].max())
    i2i_full = stages.run(
        "i2i (all data)", lambda: cand.item_to_item(data.events, data.n_items, hi)
    )
    u2i = stages.run(
        "u2i lists (all data)", lambda: _final_lists(data, data.events, i2i_full, model, hi)
    )
    stages.close()
    return BatchOutput(
        data,
        u2i,
        i2i_full,
        cand.popular_by_segment(data.events, data.n_items, hi),
        metrics,
        reranker,
        stages.timings,
    )


def _learn(stages: Stages, data: Dataset, seed: int) -> tuple[Any, dict[str, float], str | None]:
    """Ranker, evaluation and re-ranker on a time split: the last 15% of the span is held out."""
    events = data.events
    lo, hi = int(events["ts"].min()), int(events["ts"].max())
    split_ms = hi - int((hi - lo) * TEST_SHARE)
    train_events, test = events[events["ts"] < split_ms], events[events["ts"] >= split_ms]
    i2i_train = stages.run(
        "i2i (train split)", lambda: cand.item_to_item(train_events, data.n_items, split_ms)
    )
    frame = stages.run(
        "u2i candidates (train split)",
        lambda: ranking.features(
            cand.user_candidates(
                train_events, data.n_users, data.n_items, split_ms, i2i_train
            ).frame,
            train_events,
            data,
            split_ms,
        ),
    )
    label = ranking.labels(frame, test, data.n_items)
    # A fixed split of users: at most MAX_FIT_USERS train the ranker, MAX_EVAL_USERS judge it.
    bucket = np.random.default_rng(seed).permutation(data.n_users)
    fit_mask = np.zeros(data.n_users, dtype=bool)
    fit_mask[bucket[: min(MAX_FIT_USERS, data.n_users // 2)]] = True
    eval_mask = np.zeros(data.n_users, dtype=bool)
    eval_mask[bucket[data.n_users // 2 :][:MAX_EVAL_USERS]] = True
    fit_rows = fit_mask[frame["user"].to_numpy()]
    model = stages.run(
        "train ranker", functools.partial(ranking.train, frame.loc[fit_rows], label[fit_rows], seed)
    )
    scores = ranking.score(model, frame)
    metrics = stages.run(
        "evaluate",
        functools.partial(
            _evaluate,
            frame,
            scores,
            label,
            test,
            train_events,
            data,
            np.flatnonzero(eval_mask),
            split_ms,
        ),
    )
    batch_top = ranking.top_k(frame, scores, TOP_K)
    del frame, scores, label
    reranker = stages.run(
        "train re-ranker",
        lambda: _train_reranker(data, test, batch_top, i2i_train, train_events, split_ms, seed),
    )
    metrics.update(
        {
            "reranker_ndcg@10_batch_order": reranker.ndcg_batch,
            "reranker_ndcg@10_with_session": reranker.ndcg_rerank,
            "reranker_lift": reranker.lift,
            "offline_share_of_quality": (
                reranker.ndcg_batch / reranker.ndcg_rerank if reranker.ndcg_rerank else 0.0
            ),
            "reranker_sessions": float(reranker.sessions),
        }
    )
    text = None if reranker.model is None else reranker.model.model_to_string()
    return model, metrics, text


def _train_reranker(
    data: Dataset,
    test: pd.DataFrame,
    batch_top: pd.DataFrame,
    i2i: sp.csr_matrix,
    train_events: pd.DataFrame,
    split_ms: int,
    seed: int,
) -> rerank_train.RerankerResult:
    names = data.items.to_numpy().astype(str)
    lists: dict[int, tuple[list[str], list[float]]] = {}
    wanted = set(test["user"].unique().tolist())
    for user, group in batch_top.groupby("user", sort=False):
        if code(user) in wanted:
            lists[code(user)] = (
                names[group["item"].to_numpy()].tolist(),
                group["score"].astype(float).tolist(),
            )
    pop = cand.popularity(train_events, data.n_items, split_ms)
    order = np.argsort(-pop, kind="stable")[:TOP_K]
    popular = (names[order].tolist(), (pop[order] / max(float(pop[order[0]]), 1e-9)).tolist())
    categories = dict(zip(names, data.categories[data.item_category].astype(str), strict=True))
    serving = rerank_train.ServingState(
        lists, i2i, popular, data.items.astype(str), data.users, categories
    )
    return rerank_train.train(test, serving, seed)


def _final_lists(
    data: Dataset, events: pd.DataFrame, i2i: sp.csr_matrix, model: Any, now_ms: int
) -> pd.DataFrame:
    full = cand.user_candidates(events, data.n_users, data.n_items, now_ms, i2i)
    frame = ranking.features(full.frame, events, data, now_ms)
    return ranking.top_k(frame, ranking.score(model, frame), TOP_K)
