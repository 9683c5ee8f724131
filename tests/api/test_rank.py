"""Candidate merging, features and re-rankers: pure, without services."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np

from tandem.api.reranker import HeuristicReranker, LightGBMReranker, load_reranker
from tandem.contracts.features import (
    FEATURES,
    FROM_I2I,
    FROM_POPULAR,
    FROM_U2I,
    Candidate,
    Context,
    build_features,
)
from tandem.contracts.ranking import SessionView, merge

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
