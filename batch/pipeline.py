"""The batch stage end to end: load, split, candidates, ranker, re-ranker, evaluation, lists.

The evaluation cannot see the future: the data is split by a protocol (``split``) into
``train`` and ``test``; ``train`` is split again the same way into ``fit`` and ``valid``, and the
ranker learns from candidates built on ``fit`` with labels from ``valid``. Candidates built on
``train`` and ranked by that model are then judged against ``test`` beside the baselines
(``baselines``), computed on the same ``train``. The published lists come from all the data,
ranked by a model trained on ``train`` with labels from ``test``.
"""

from __future__ import annotations

import functools
import hashlib
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

from tandem.batch import baselines, engine, ranking, rerank_train
from tandem.batch import candidates as cand
from tandem.batch.candidates_io import read_candidates
from tandem.batch.data import Dataset, code, load
from tandem.batch.evaluate import MetricRow, table
from tandem.batch.exceptions import InputError
from tandem.batch.saved import write_lists
from tandem.batch.split import Protocol, Split, split
from tandem.contracts.domain import POSITIVE_WEIGHTS
from tandem.contracts.schemas import CandidateList

log = logging.getLogger(__name__)

T = TypeVar("T")
TOP_K = 200
MAX_FIT_USERS = 20_000
MAX_EVAL_USERS = 10_000
USERS_PER_PART = 2_000  # users per u2i part written by one task (~1.2M candidate rows)
ALL_EVENTS = frozenset(POSITIVE_WEIGHTS)


@dataclass(frozen=True)
class Options:
    """How a run splits, what it never recommends, and whether it builds the final lists."""

    protocol: Protocol = field(default_factory=Protocol)
    exclude: frozenset[str] = ALL_EVENTS  # event types whose items a user is not shown again
    seed: int = 0
    final_lists: bool = True  # False: evaluate only
    # Where u2i is written partition by partition (one parquet part per block of users, by the
    # current engine's workers: on Dask the lists never meet in this process). None: in memory.
    parts_dir: Path | None = None


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
    report: list[MetricRow] = field(default_factory=list)
    training_digest: str = ""  # of every training input of the evaluation (leak checks)
    u2i_parts: list[Path] = field(default_factory=list)  # u2i written partition by partition

    def table(self) -> str:
        """The evaluation (with 95% intervals, by history) and the re-ranker's figures."""
        rows = [
            f"{name:<34} {value:>8.4f}"
            for name, value in self.metrics.items()
            if name.startswith(("reranker", "offline", "decay"))
        ]
        return "\n".join([table(self.report), "", *rows])

    def categories_json(self) -> bytes:
        """Item id → category name, the ``categories`` attachment of the u2i version."""
        names = self.data.categories[self.data.item_category]
        return orjson.dumps(dict(zip(self.data.items.astype(str), names.astype(str), strict=True)))

    def u2i_rows(self) -> Iterator[CandidateList]:
        """The u2i store's lists."""
        if self.u2i_parts:
            for part in self.u2i_parts:
                yield from read_candidates(part)
            return
        users = np.asarray([str(user) for user in self.data.users], dtype=object)
        yield from _lists(self.u2i, users, self.data.items.to_numpy().astype(str))

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


def _digest(*parts: pd.DataFrame | np.ndarray | str) -> str:
    """A fingerprint of training inputs: equal inputs, equal digest."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, pd.DataFrame):
            frame = part
            if "session" in frame:  # codes over all the data; renumbered within the part
                frame = frame.assign(session=pd.factorize(frame["session"])[0])
            h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        elif isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(part.encode())
    return h.hexdigest()


def run(data_dir: Path, options: Options | None = None, *, quiet: bool = False) -> BatchOutput:
    """The whole batch stage on ``data_dir`` (interactions.* and an optional items.*)."""
    options = options or Options()
    stages = Stages(total=9 if options.final_lists else 6, quiet=quiet)
    interactions = next(iter(sorted(data_dir.glob("interactions*"))), None)
    if interactions is None:
        raise InputError(
            f"{data_dir}: no interactions.parquet, interactions.csv or interactions/ folder of "
            "partitions; write one with "
            "`tandem data synth --out DIR` or see the README for its columns"
        )
    items_file = next(iter(sorted(data_dir.glob("items.*"))), None)
    data = stages.run("load", lambda: load(interactions, items_file))
    if data.events.empty:
        raise InputError(f"{interactions}: no interactions")
    learned = _learn(stages, data, options)
    u2i = pd.DataFrame({"user": [], "item": [], "score": []})
    parts: list[Path] = []
    i2i = sp.csr_matrix((data.n_items, data.n_items), dtype=np.float32)
    clock = cand.Clock.fitted(data.events, int(data.events["ts"].max()) + 1)
    if options.final_lists:
        rows = _fit_users(learned.frame, learned.final_label, options.seed)
        final = stages.run(
            "train final ranker (train → test)",
            functools.partial(
                ranking.train, learned.frame.loc[rows], learned.final_label[rows], options.seed
            ),
        )
        learned.frame = learned.frame.iloc[:0]
        i2i = stages.run(
            "i2i (all data)", lambda: cand.item_to_item(data.events, data.n_items, clock)
        )
        u2i, parts = stages.run(
            "u2i lists (all data)",
            lambda: _final_lists(data, data.events, i2i, final, clock, options),
        )
    stages.close()
    return BatchOutput(
        data,
        u2i,
        i2i,
        cand.popular_by_segment(data.events, data.n_items, clock),
        learned.metrics,
        learned.reranker,
        stages.timings,
        learned.report,
        learned.digest,
        parts,
    )


@dataclass
class _Learned:
    frame: pd.DataFrame  # candidates + features built on ``train``
    final_label: np.ndarray  # their labels from ``test`` (for the published model)
    metrics: dict[str, float]
    report: list[MetricRow]
    reranker: str | None
    digest: str


def _candidate_frame(
    data: Dataset, events: pd.DataFrame, clock: cand.Clock, exclude: frozenset[str]
) -> tuple[pd.DataFrame, sp.csr_matrix]:
    i2i = cand.item_to_item(events, data.n_items, clock)
    found = cand.user_candidates(
        events, data.n_users, data.n_items, clock, i2i, exclude, data.item_category
    )
    return ranking.features(found.frame, events, data, clock), i2i


def _fit_users(frame: pd.DataFrame, label: np.ndarray, seed: int) -> np.ndarray:
    """Rows of at most ``MAX_FIT_USERS`` users with a relevant candidate (a fixed sample)."""
    useful = pd.Series(label).groupby(frame["user"].to_numpy()).transform("max").to_numpy() > 0
    users = np.unique(frame["user"].to_numpy()[useful])
    chosen = np.random.default_rng(seed).permutation(users)[:MAX_FIT_USERS]
    return useful & np.isin(frame["user"].to_numpy(), chosen)


def _learn(stages: Stages, data: Dataset, options: Options) -> _Learned:
    """Ranker, evaluation and re-ranker, none of which sees the held-out interactions."""
    outer = split(data.events, options.protocol)
    inner = split(outer.train, options.protocol.inner())
    if outer.test.empty or inner.test.empty or inner.train.empty:
        raise InputError(
            f"too little data to split by {options.protocol.describe()}: "
            f"{len(data.events)} interactions of {data.n_users} users"
        )
    fit_clock = cand.Clock.fitted(inner.train, inner.now_ms)
    fit_frame, fit_i2i = stages.run(
        "candidates (fit)", lambda: _candidate_frame(data, inner.train, fit_clock, options.exclude)
    )
    fit_label = ranking.labels(fit_frame, inner.test, data.n_items)
    rows = _fit_users(fit_frame, fit_label, options.seed)
    model = stages.run(
        "train ranker (fit → valid)",
        functools.partial(ranking.train, fit_frame.loc[rows], fit_label[rows], options.seed),
    )
    reranker = stages.run(
        "train re-ranker (valid sessions)",
        functools.partial(
            _train_reranker, data, inner, fit_frame, model, fit_i2i, fit_clock, options.seed
        ),
    )
    digest = _digest(
        inner.train, inner.test, outer.train, fit_frame, fit_label, model.model_to_string()
    )
    del fit_frame, fit_label
    clock = cand.Clock.fitted(outer.train, outer.now_ms)
    frame, _ = stages.run(
        "candidates (train)", lambda: _candidate_frame(data, outer.train, clock, options.exclude)
    )
    scores = ranking.score(model, frame)
    report, metrics = stages.run(
        "evaluate",
        lambda: baselines.evaluate(
            data, outer, clock, frame, scores, options.exclude, MAX_EVAL_USERS, options.seed
        ),
    )
    metrics.update(
        {
            "decay_half_life_days": clock.half_life_ms / cand.DAY_MS,
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
    final_label = ranking.labels(frame, outer.test, data.n_items)
    return _Learned(frame, final_label, metrics, report, text, digest)


def _train_reranker(
    data: Dataset,
    inner: Split,
    fit_frame: pd.DataFrame,
    model: Any,
    i2i: sp.csr_matrix,
    clock: cand.Clock,
    seed: int,
) -> rerank_train.RerankerResult:
    """The re-ranker on the validation window's sessions, served as of the fit data."""
    batch_top = ranking.top_k(fit_frame, ranking.score(model, fit_frame), TOP_K)
    names = data.items.to_numpy().astype(str)
    lists: dict[int, tuple[list[str], list[float]]] = {}
    wanted = set(inner.test["user"].unique().tolist())
    for user, group in batch_top.groupby("user", sort=False):
        if code(user) in wanted:
            lists[code(user)] = (
                names[group["item"].to_numpy()].tolist(),
                group["score"].astype(float).tolist(),
            )
    pop = cand.popularity(inner.train, data.n_items, clock)
    order = np.argsort(-pop, kind="stable")[:TOP_K]
    popular = (names[order].tolist(), (pop[order] / max(float(pop[order[0]]), 1e-9)).tolist())
    categories = dict(zip(names, data.categories[data.item_category].astype(str), strict=True))
    serving = rerank_train.ServingState(
        lists, i2i, popular, data.items.astype(str), data.users, categories
    )
    return rerank_train.train(inner.test, serving, seed)


def _final_lists(
    data: Dataset,
    events: pd.DataFrame,
    i2i: sp.csr_matrix,
    model: Any,
    clock: cand.Clock,
    options: Options,
) -> tuple[pd.DataFrame, list[Path]]:
    """The u2i lists in memory, or written part by part into ``options.parts_dir``."""
    full = cand.user_candidates(
        events, data.n_users, data.n_items, clock, i2i, options.exclude, data.item_category
    ).frame
    ctx = ranking.FeatureContext.of(events, data, clock)
    if options.parts_dir is None:
        frame = ranking.chunk_features(full, ctx)
        return ranking.top_k(frame, ranking.score(model, frame), TOP_K), []
    options.parts_dir.mkdir(parents=True, exist_ok=True)
    written = engine.current().map(
        _write_part,
        _user_blocks(full, options.parts_dir),
        ctx=ctx,
        model=model,
        users=np.asarray([str(user) for user in data.users], dtype=object),
        items=data.items.to_numpy().astype(str),
    )
    return pd.DataFrame({"user": [], "item": [], "score": []}), written


def _user_blocks(frame: pd.DataFrame, folder: Path) -> Iterator[tuple[Path, pd.DataFrame]]:
    """``(part path, rows)`` per block of ``USERS_PER_PART`` users, each block cut only when
    asked for: with the engine taking a few at a time, the candidates are held once, not once
    whole and once more in blocks."""
    block = frame["user"].to_numpy() // USERS_PER_PART
    order = np.argsort(block, kind="stable")
    present = np.unique(block)
    bounds = np.searchsorted(block[order], np.r_[present, present[-1] + 1] if present.size else [])
    for n, start, end in zip(present.tolist(), bounds[:-1], bounds[1:], strict=True):
        yield folder / f"part-{n:05d}.parquet", frame.iloc[order[start:end]]


def _write_part(
    chunk: tuple[Path, pd.DataFrame],
    ctx: ranking.FeatureContext,
    model: Any,
    users: np.ndarray,
    items: np.ndarray,
) -> Path:
    """Rank one block of users' candidates and write their lists (runs on a worker)."""
    path, candidates = chunk
    frame = ranking.chunk_features(candidates, ctx)
    top = ranking.top_k(frame, ranking.score(model, frame), TOP_K)
    write_lists(path, _lists(top, users, items))
    return path


def _lists(u2i: pd.DataFrame, users: np.ndarray, items: np.ndarray) -> Iterator[CandidateList]:
    """Rows of ``u2i`` (sorted by user, best first) as one candidate list per user."""
    codes = u2i["user"].to_numpy()
    names = items[u2i["item"].to_numpy()]
    scores = u2i["score"].to_numpy()
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], codes.size]
    for start, end in zip(starts, ends, strict=True):
        yield CandidateList(
            str(users[codes[start]]), names[start:end].tolist(), scores[start:end].tolist()
        )
