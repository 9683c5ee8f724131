"""Candidate merging, features and re-rankers: pure, without services."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import lightgbm as lgb
import numpy as np

from tandem.api.reranker import HeuristicReranker, LightGBMReranker, load_reranker
from tandem.api.rules import excluding
from tandem.api.service import Budget, RecommendationService
from tandem.contracts.features import (
    FEATURES,
    FROM_I2I,
    FROM_POPULAR,
    FROM_U2I,
    Candidate,
    Context,
    build_features,
)
from tandem.contracts.ranking import (
    MAX_CANDIDATES,
    SessionView,
    _u2i_only,
    merge,
    merge_columns,
)
from tandem.store.online import OnlineReader

NOW = 1_790_000_000_000


def test_merge_dedupes_keeps_sources_and_excludes() -> None:
    merged = merge(
        (["a", "b", "c"], [0.9, 0.8, 0.7]),
        [(NOW - 1000, (["b", "x"], [0.5, 0.4]))],
        (["x", "p", "c"], [1.0, 0.9, 0.8]),
        excluded={"c"},
        want=10,
    )
    assert [c.item_id for c in merged] == ["a", "b", "x", "p"]
    by_id = {c.item_id: c for c in merged}
    assert by_id["b"].sources == FROM_U2I | FROM_I2I
    assert by_id["b"].related_ms == NOW - 1000
    assert by_id["x"].sources == FROM_I2I | FROM_POPULAR
    assert by_id["p"].batch_rank == 1
    enough = merge((["a", "b"], [0.9, 0.8]), [], (["p"], [1.0]), set(), want=2)
    assert [c.item_id for c in enough] == ["a", "b"]  # popular only as a fallback


def test_the_merge_without_session_candidates_is_the_general_merge() -> None:
    """Most requests have no session candidates and take a shortcut: it must merge exactly as
    the general loop does, exclusions, repeated ids, the cap and the popular fallback included."""
    rng = random.Random(7)
    shortcuts = 0
    for _ in range(3_000):
        pool = [f"i{n}" for n in range(rng.choice([5, 50, 600]))]
        ids = [rng.choice(pool) for _ in range(rng.randrange(0, MAX_CANDIDATES + 50))]
        if rng.random() < 0.7:
            ids = list(dict.fromkeys(ids))  # batch lists are distinct; some are not
        u2i = (ids, [rng.random() for _ in ids])
        popular_ids = [f"p{n}" for n in range(rng.randrange(0, 80))]
        popular = (popular_ids, [rng.random() for _ in popular_ids])
        mine = set(rng.sample(pool, rng.randrange(0, 4)))
        hidden = frozenset(rng.sample(pool, rng.randrange(0, 3)) if rng.random() < 0.5 else [])
        excluded = excluding(mine, hidden)
        want = rng.choice([10, 60, 300])
        merged = merge_columns(u2i, [], popular, excluded, want)
        assert merged == merge_columns(u2i, [], popular, excluded, want, shortcut=False)
        shortcuts += _u2i_only(u2i, excluded, want) is not None
    assert shortcuts > 500  # the shortcut's cases were among them


def test_session_view_seeds_and_exclusions() -> None:
    view = SessionView(
        [
            ("i1", "view", 1),
            ("i2", "purchase", 2),
            ("i3", "click", 3),
            ("i1", "click", 4),
            ("i4", "dislike", 5),
        ],
        {},
        5,
    )
    assert view.excluded == {"i2", "i4"}
    assert view.seeds() == [("i1", 4), ("i3", 3)]


def test_features_follow_the_declared_order() -> None:
    cands = [Candidate("a", 0.9, 0, FROM_U2I), Candidate("b", 0.5, 3, FROM_I2I, NOW - 60_000)]
    rows = build_features(cands, Context(NOW, "tv", {"books": 2.0}, 4), {"b": "books"}, {"a": 3.0})
    assert rows.shape == (2, len(FEATURES))
    named = dict(zip(FEATURES, rows[1], strict=True))
    assert named["from_i2i"] == 1.0
    assert named["session_affinity"] == 2.0
    assert named["session_recency_s"] == 60.0
    assert named["device_tv"] == 1.0
    assert dict(zip(FEATURES, rows[0], strict=True))["trending"] == np.float32(np.log1p(3.0))


def test_feature_rows_match_their_definition_cell_by_cell() -> None:
    """The column-wise builder (and its shortcuts: no session candidates, no trending) against
    the features' definitions, one cell at a time, on random candidates and contexts."""
    rng = random.Random(3)
    devices = [None, "tv", "mobile", "unknown"]
    for _ in range(300):
        size = rng.randrange(0, 40)
        ids = [f"i{n}" for n in rng.sample(range(100), size)]
        related = [rng.choice([0, 0, NOW - rng.randrange(0, 10**7)]) for _ in ids]
        candidates = [
            Candidate(item, rng.random(), rank, rng.randrange(1, 8), related_ms)
            for rank, (item, related_ms) in enumerate(zip(ids, related, strict=True))
        ]
        categories = {f"i{n}": rng.choice("abc") for n in range(0, 100, 2)}
        affinity = {c: rng.random() * 5 for c in "ab"} if rng.random() < 0.5 else {}
        trending = (
            {f"i{n}": rng.random() * 50 for n in range(0, 100, 3)} if rng.random() < 0.5 else {}
        )
        device = rng.choice(devices)
        context = Context(NOW + rng.randrange(10**8), device, affinity, rng.randrange(0, 9))
        rows = build_features(candidates, context, categories, trending)
        assert rows.shape == (size, len(FEATURES))
        for row, c in zip(rows, candidates, strict=True):
            cell = dict(zip(FEATURES, row.tolist(), strict=True))
            category = categories.get(c.item_id)
            expected = {
                "batch_score": np.float32(c.batch_score),
                "batch_rank": c.batch_rank,
                "from_u2i": float(bool(c.sources & FROM_U2I)),
                "from_i2i": float(bool(c.sources & FROM_I2I)),
                "from_popular": float(bool(c.sources & FROM_POPULAR)),
                "session_affinity": np.float32(affinity.get(category, 0.0) if category else 0.0),
                "session_recency_s": np.float32(
                    max(0.0, (context.now_ms - c.related_ms) / 1000) if c.related_ms else 86_400.0
                ),
                "session_events": context.session_events,
                "hour_of_day": (context.now_ms // 3_600_000) % 24,
                "trending": np.float32(np.log1p(trending.get(c.item_id, 0.0))),
            }
            expected.update(
                {name: float(name == f"device_{device}") for name in FEATURES if "device_" in name}
            )
            assert cell == expected


def test_heuristic_keeps_popular_only_items_as_fallback() -> None:
    cands = [Candidate("u", 0.2, 5, FROM_U2I), Candidate("p", 1.0, 0, FROM_POPULAR)]
    scores = HeuristicReranker().score(build_features(cands, Context(NOW, None, {}, 0), {}, {}))
    assert scores[0] > scores[1]


def tiny_model(names: list[str]) -> str:
    rng = np.random.default_rng(0)
    features = rng.random((200, len(names)))
    data = lgb.Dataset(features, label=features[:, 0] > 0.5, feature_name=names)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 4}, data, num_boost_round=3
    )
    text: str = booster.model_to_string()
    return text


def test_lightgbm_reranker_loads_and_checks_feature_names() -> None:
    reranker = load_reranker(tiny_model(list(FEATURES)).encode(), 7)
    assert isinstance(reranker, LightGBMReranker)
    assert reranker.name == "lightgbm:v7"
    rows = build_features([Candidate("a", 0.9, 0, FROM_U2I)], Context(NOW, None, {}, 0), {}, {})
    assert reranker.score(rows).shape == (1,)
    wrong = load_reranker(tiny_model([f"f{n}" for n in range(len(FEATURES))]).encode(), 8)
    assert isinstance(wrong, HeuristicReranker)
    assert isinstance(load_reranker(b"not a model", 9), HeuristicReranker)


def test_compiled_lightgbm_scores_as_lightgbm_does_and_runs_inline() -> None:
    reranker = load_reranker(tiny_model(list(FEATURES)).encode(), 3)
    assert isinstance(reranker, LightGBMReranker)
    rng = np.random.default_rng(1)
    rows = rng.random((400, len(FEATURES)), dtype=np.float32)
    before = reranker.inline  # LightGBM's own predictor, in a thread, until compiled
    expected = reranker.booster.predict(rows, num_threads=1)
    reranker.compile()
    assert (before, reranker.inline) == (False, True)
    scores = reranker.score(rows)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reranker.score(rows[:1]), expected[:1], rtol=1e-5, atol=1e-6)


def _features_cell_by_cell(
    cands: list[Candidate], context: Context, categories: dict[str, str], trending: dict[str, float]
) -> np.ndarray:
    """The definition of each feature, one cell at a time (what build_features vectorizes)."""
    rows = np.zeros((len(cands), len(FEATURES)), dtype=np.float32)
    for n, cand in enumerate(cands):
        named = dict.fromkeys(FEATURES, 0.0)
        named["batch_score"], named["batch_rank"] = cand.batch_score, cand.batch_rank
        for name, bit in (("from_u2i", FROM_U2I), ("from_i2i", FROM_I2I), ("from_popular", 4)):
            named[name] = 1.0 if cand.sources & bit else 0.0
        category = categories.get(cand.item_id)
        named["session_affinity"] = 0.0 if category is None else context.affinity.get(category, 0)
        named["session_recency_s"] = (
            max(0.0, (context.now_ms - cand.related_ms) / 1000) if cand.related_ms else 86_400.0
        )
        named["session_events"] = context.session_events
        if f"device_{context.device}" in named:
            named[f"device_{context.device}"] = 1.0
        named["hour_of_day"] = (context.now_ms // 3_600_000) % 24
        named["trending"] = float(np.log1p(trending.get(cand.item_id, 0.0)))
        rows[n] = [named[f] for f in FEATURES]
    return rows


def test_features_match_their_cell_by_cell_definition() -> None:
    rng = np.random.default_rng(7)
    for case in range(200):
        cands = [
            Candidate(
                f"i{rng.integers(60)}",
                float(rng.random()),
                rank,
                int(rng.integers(1, 8)),
                int(rng.choice([0, NOW - int(rng.integers(-5000, 10**7))])),
            )
            for rank in range(int(rng.integers(0, 50)))
        ]
        categories = {f"i{n}": str(rng.choice(["a", "b", ""])) for n in range(0, 60, 2)}
        affinity = {} if case % 3 == 0 else {"a": 2.0, "": 0.5}
        device = [None, "tv", "mobile", "desktop", "fridge"][case % 5]
        trending = {} if case % 4 == 0 else {f"i{n}": float(rng.random() * 50) for n in range(30)}
        context = Context(NOW + case * 999_999, device, affinity, case % 7)
        np.testing.assert_array_equal(
            build_features(cands, context, categories, trending),
            _features_cell_by_cell(cands, context, categories, trending),
        )


class _CountingReader:
    """Answers ``attachments`` slowly, counting the calls (reads are not used here)."""

    def __init__(self, model: bytes) -> None:
        self.model = model
        self.calls = 0

    async def attachments(self, version: int) -> tuple[bytes | None, dict[str, str]]:
        self.calls += 1
        await asyncio.sleep(0.05)
        return self.model, {"a": "books"}

    async def flush(self) -> None:
        """Nothing to cache here."""


async def test_requests_arriving_during_a_load_share_it_and_it_gets_compiled() -> None:
    reader = _CountingReader(tiny_model(list(FEATURES)).encode())
    with ThreadPoolExecutor(2) as executor:
        service = RecommendationService(cast(OnlineReader, reader), Budget(500, 100, 60), executor)
        loaded = await asyncio.gather(*(service._assets(4) for _ in range(20)))
        assert reader.calls == 1
        assert len({id(r) for r in loaded}) == 1
        assert loaded[0].name == "lightgbm:v4"
        assert service.categories == {"a": "books"}
        await service.drain()  # the compilation started after the load
        assert loaded[0].inline
