""" "Why these items?": one recommendation recomputed step by step from the same reads, merge,
features and re-ranker as the service, with each feature's contribution to each score
(LightGBM's ``pred_contrib``) and the final order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Container

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from tandem.api.models import version_id
from tandem.api.reranker import LightGBMReranker, Reranker, load_reranker
from tandem.api.service import MIN_CANDIDATES, SOURCE_NAMES
from tandem.contracts.domain import I2I, POPULAR, U2I
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.features import FEATURES, Candidate, Context, build_features
from tandem.contracts.ranking import NO_SESSION, SessionView, merge
from tandem.contracts.session import SessionState
from tandem.store.online import OnlineReader, RequestData

# The API answers k from 1 to MAX_K, so no cached answer is ever stored under k=0: a read with
# it always returns the inputs an answer is made from, never a cached answer.
UNCACHED_K = 0


class SessionItem(BaseModel, frozen=True):
    """One event of the session."""

    item_id: str
    event_type: str
    ts_ms: int


class SessionSignals(BaseModel, frozen=True):
    """What the stream worker knows of the user's current session (None: no session)."""

    session_id: str | None
    device: str | None
    started_ms: int | None
    last_ms: int | None
    events: int
    counts: dict[str, int]
    affinity: dict[str, float]
    recent: list[SessionItem]
    seeds: list[str]
    excluded: list[str]


class Scored(BaseModel, frozen=True):
    """One candidate: where it came from, its features, their contributions and its place."""

    position: int
    item_id: str
    sources: list[str]
    batch_score: float
    batch_rank: int
    category: str | None
    values: list[float]
    contributions: list[float] | None
    bias: float | None
    score: float
    in_answer: bool


class Explanation(BaseModel, frozen=True):
    """A recommendation and how it was made; ``candidates`` in the final order."""

    user_id: str
    k: int
    device: str | None
    versions: dict[str, str | None]
    reranker: str
    contributions: str | None
    session: SessionSignals
    features: list[str]
    candidates: list[Scored]
    order: list[str]


class Models:
    """The re-ranker and item categories of the live u2i version, loaded once per version."""

    def __init__(self) -> None:
        self._heuristic = load_reranker(None, 0)
        self._version: int | None = None
        self._reranker = self._heuristic
        self._categories: dict[str, str] = {}

    async def of(
        self, reader: OnlineReader, version: int | None
    ) -> tuple[Reranker, dict[str, str]]:
        """The re-ranker and categories of ``version`` (the heuristic when it has no model)."""
        if version is None:
            return self._heuristic, {}
        if version != self._version:
            text, categories = await reader.attachments(version)
            self._reranker = await asyncio.to_thread(load_reranker, text, version)
            self._version, self._categories = version, categories
        return self._reranker, self._categories


Rules = Callable[[SessionView, frozenset[str]], Container[str]]
"""The service's business rules: what an answer may not hold, for a session and the user's own
hidden items (:meth:`RecommendationService.rules`)."""


def _signals(raw: bytes | None) -> tuple[SessionView, SessionSignals]:
    state = None
    if raw is not None:
        try:
            state = SessionState.decode(raw)
        except ValidationError:
            state = None  # the service ignores an unreadable session too
    view = NO_SESSION if state is None else state.view()
    signals = SessionSignals(
        session_id=None if state is None else state.session_id,
        device=None if state is None else state.device,
        started_ms=None if state is None else state.start_ms,
        last_ms=None if state is None else state.last_ms,
        events=view.events,
        counts={} if state is None else dict(state.counts),
        affinity=dict(view.affinity),
        recent=[SessionItem(item_id=i, event_type=t, ts_ms=ts) for i, t, ts in view.recent_items],
        seeds=[item for item, _ in view.seeds()],
        excluded=[],
    )
    return view, signals


async def _candidates(
    reader: OnlineReader, data: RequestData, view: SessionView, k: int, excluded: Container[str]
) -> list[Candidate]:
    similar = []
    seeds = view.seeds()
    if seeds and data.versions.i2i is not None:
        lists = await reader.similar(data.versions.i2i, [item for item, _ in seeds])
        similar = [(ts, found) for (_, ts), found in zip(seeds, lists, strict=True) if found]
    return merge(data.u2i, similar, data.popular, excluded, want=max(3 * k, MIN_CANDIDATES))


def _score(
    reranker: Reranker, features: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64] | None]:
    """Scores, and per-feature contributions (bias last) when the re-ranker is LightGBM."""
    scores = reranker.score(features)
    if not isinstance(reranker, LightGBMReranker) or not len(features):
        return scores, None
    contributions = np.asarray(
        reranker.booster.predict(features, pred_contrib=True, num_threads=1), dtype=np.float64
    )
    return scores, contributions


async def explain(
    reader: OnlineReader, models: Models, rules: Rules, user: str, k: int, device: str | None
) -> Explanation:
    """How the answer to ``user`` (``k`` items, ``device``) is made right now, under the same
    business rules as the answer."""
    segment = f"device:{device}" if device else "global"
    data = await reader.read(user, UNCACHED_K, device or "any", segment)
    view, signals = _signals(data.session)
    excluded = rules(view, data.user_hidden)
    candidates = await _candidates(reader, data, view, k, excluded)
    considered = (
        {i for i, _, _ in view.recent_items} | data.user_hidden | {*data.u2i[0], *data.popular[0]}
    )
    left_out = sorted(i for i in considered if i in excluded)  # hidden ones among them too
    signals = signals.model_copy(update={"excluded": left_out})
    context = Context(int(time.time() * 1000), device or signals.device, view.affinity, view.events)
    reranker, categories = await models.of(reader, data.versions.u2i)
    features = build_features(candidates, context, categories, data.trending)
    scores, contributions = await asyncio.to_thread(_score, reranker, features)
    order = np.argsort(-scores, kind="stable").tolist()
    scored = [
        Scored(
            position=position + 1,
            item_id=candidates[i].item_id,
            sources=[name for bit, name in SOURCE_NAMES if candidates[i].sources & bit],
            batch_score=candidates[i].batch_score,
            batch_rank=candidates[i].batch_rank,
            category=categories.get(candidates[i].item_id),
            values=[float(v) for v in features[i]],
            contributions=None
            if contributions is None
            else [float(v) for v in contributions[i, :-1]],
            bias=None if contributions is None else float(contributions[i, -1]),
            score=float(scores[i]),
            in_answer=position < k,
        )
        for position, i in enumerate(order)
    ]
    versions = data.versions
    return Explanation(
        user_id=user,
        k=k,
        device=device,
        versions={
            name: version_id(v)
            for name, v in ((U2I, versions.u2i), (I2I, versions.i2i), (POPULAR, versions.popular))
        },
        reranker=reranker.name,
        contributions=None if contributions is None else "lightgbm pred_contrib (raw score)",
        session=signals,
        features=list(FEATURES),
        candidates=scored,
        order=[s.item_id for s in scored[:k]],
    )
