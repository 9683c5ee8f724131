"""Impression records from what the request path already built: pure, without services."""

from __future__ import annotations

import random

import numpy as np
import orjson

from tandem.api.impressions import Impression, encode, record
from tandem.contracts.features import (
    FEATURES,
    FROM_I2I,
    FROM_U2I,
    Candidate,
    Context,
    build_features,
)
from tandem.store.online import Assignment

NOW = 1_790_000_000_000


def _answer(shown: list[Candidate]) -> dict[str, object]:
    return {
        "user_id": "u1",
        "items": [
            {"item_id": c.item_id, "score": round(random.random(), 6), "sources": ["u2i"]}
            for c in shown
        ],
        "versions": {"u2i": "30000000000000001", "i2i": None, "popular": None},
        "reranker": "lightgbm:v1",
        "degraded": False,
        "degraded_reason": None,
    }


def test_a_record_from_the_request_paths_rows_is_the_record_rebuilt_from_the_candidates() -> None:
    """The feature rows handed over (rows of the matrix the re-ranker scored, in the answer's
    order) give byte for byte the record that rebuilding the shown items' features and rounding
    them as Python floats gave."""
    rng = random.Random(3)
    candidates = [
        Candidate(f"i{n}", rng.random(), n, rng.choice([FROM_U2I, FROM_I2I | FROM_U2I]), NOW - n)
        for n in range(200)
    ]
    categories = {f"i{n}": f"c{n % 7}" for n in range(200)}
    trending = {f"i{n}": rng.random() * 50 for n in range(0, 200, 3)}
    context = Context(NOW, "mobile", {f"c{n}": rng.random() * 9 for n in range(7)}, 11)
    matrix = build_features(candidates, context, categories, trending)
    order = rng.sample(range(200), 20)
    shown = [candidates[i] for i in order]
    answer = _answer(shown)
    body = orjson.dumps(answer)
    handed = Impression("r1", NOW, 2.5, False, body, Assignment(), answer, matrix[order])
    rebuilt = np.round(build_features(shown, context, categories, trending).astype(np.float64), 6)
    expected = {
        **record(Impression("r1", NOW, 2.5, False, body, Assignment())),
        "feature_names": list(FEATURES),
    }
    expected["items"] = [
        {**item, "features": row}
        for item, row in zip(expected["items"], rebuilt.tolist(), strict=True)
    ]
    assert encode(record(handed)) == orjson.dumps(expected)
    assert any(
        v != round(v, 3) for v in orjson.loads(encode(record(handed)))["items"][0]["features"]
    )


def test_a_cached_answer_is_parsed_and_has_no_features() -> None:
    body = orjson.dumps(_answer([Candidate("a", 0.5, 0, FROM_U2I)]))
    found = orjson.loads(encode(record(Impression("r2", NOW, 0.4, True, body, Assignment()))))
    assert found["user_id"] == "u1" and found["cached"] and found["feature_names"] == []
    assert found["items"] == [
        {"item_id": "a", "score": found["items"][0]["score"], "sources": ["u2i"], "position": 0}
    ]
