"""The batch stage on small synthetic data: input checks, determinism, purchases, parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tandem.api.service import _session
from tandem.batch.data import load
from tandem.batch.evaluate import hit_rate_at, map_at, ndcg_at, recall_at
from tandem.batch.exceptions import InputError
from tandem.batch.pipeline import BatchOutput, run
from tandem.batch.synth import SynthSpec, generate, write
from tandem.contracts.checksum import combine, record_digest
from tandem.contracts.codec import encode
from tandem.contracts.features import Candidate, Context, build_features
from tandem.contracts.schemas import Event
from tandem.contracts.session import SessionPolicy, update

SMALL = SynthSpec(users=300, items=200, days=10, events_per_user=30, seed=3)


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> BatchOutput:
    folder = tmp_path_factory.mktemp("synth")
    write(SMALL, folder)
    return run(folder, quiet=True)


def test_same_seed_same_data() -> None:
    first, items = generate(SMALL)
    second, _ = generate(SMALL)
    pd.testing.assert_frame_equal(first, second)
    assert not first.equals(generate(SynthSpec(users=300, items=200, days=10, seed=4))[0])
    assert set(items.columns) == {"item_id", "category"}


def checksum(output: BatchOutput) -> int:
    return combine(
        *(
            record_digest(row.entity_id.encode(), encode(row.item_ids, row.scores))
            for row in output.u2i_rows()
        )
    )


def test_same_seed_same_published_checksums(output: BatchOutput, tmp_path: Path) -> None:
    write(SMALL, tmp_path)
    again = run(tmp_path, quiet=True)
    assert checksum(again) == checksum(output)


def test_candidates_never_contain_purchased_items(output: BatchOutput) -> None:
    events = output.data.events
    bought = set(
        zip(
            events.loc[events["event_type"] == "purchase", "user"],
            events.loc[events["event_type"] == "purchase", "item"],
            strict=True,
        )
    )
    listed = set(zip(output.u2i["user"], output.u2i["item"], strict=True))
    assert bought
    assert not bought & listed


def test_outputs_and_evaluation(output: BatchOutput) -> None:
    assert output.u2i.groupby("user").size().max() <= 200
    assert {row.entity_id for row in output.popular_rows()} >= {"global", "device:mobile"}
    assert output.reranker_model is not None
    for name in ("candidates_recall@200", "ranker_ndcg@10", "popularity_ndcg@10", "reranker_lift"):
        assert np.isfinite(output.metrics[name])
    assert 0 < output.metrics["candidates_recall@200"] <= 1


def test_features_are_identical_in_training_and_serving() -> None:
    now = 1_790_000_000_000
    state = None
    for n, (item, kind) in enumerate((("i1", "view"), ("i2", "click"), ("i3", "add_to_cart"))):
        state = update(
            state,
            Event("u", item, kind, now + n * 1000, f"e{n}", device="tablet"),
            "c1" if item != "i3" else "c2",
            SessionPolicy(),
        )
    assert state is not None
    cands = [Candidate("i9", 0.5, 0, 1), Candidate("i8", 0.4, 1, 2, now)]
    categories = {"i9": "c1", "i8": "c2"}
    # training: the context is built from the session state directly
    training = build_features(
        cands, Context(now + 5000, state.device, state.affinity, 3), categories, {"i9": 2.0}
    )
    # serving: the API decodes the session the worker wrote to Redis
    view, device = _session(state.encode())
    serving = build_features(
        cands, Context(now + 5000, device, view.affinity, view.events), categories, {"i9": 2.0}
    )
    np.testing.assert_array_equal(training, serving)


def test_metrics() -> None:
    ranked, relevant = [[1, 2, 3], [4, 5, 6]], [{2}, {9}]
    assert recall_at(ranked, relevant, 2) == 0.5
    assert hit_rate_at(ranked, relevant, 1) == 0.0
    assert map_at(ranked, relevant, 3) == pytest.approx(0.25)
    assert ndcg_at([[2, 1]], [{2: 1.0}], 2) == pytest.approx(1.0)
    assert ndcg_at([[1, 2]], [{2: 1.0}], 2) == pytest.approx(1 / np.log2(3))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"user_id": ["u1"], "ts": [1]}), "missing required column(s) item_id"),
        (
            pd.DataFrame({"user_id": ["u1", ""], "item_id": ["i", "i"], "ts": [1, 2]}),
            "column 'user_id', row 2: empty id",
        ),
        (
            pd.DataFrame(
                {
                    "user_id": ["u1", "u2"],
                    "item_id": ["i", "i"],
                    "ts": ["2026-01-01T00:00:00Z", "yesterday"],
                }
            ),
            "column 'ts', row 2: not epoch milliseconds or a date-time",
        ),
        (
            pd.DataFrame({"user_id": ["u1"], "item_id": ["i"], "ts": [1], "event_type": ["poke"]}),
            "column 'event_type', row 1",
        ),
    ],
)
def test_bad_input_files_are_refused_naming_the_column(
    tmp_path: Path, frame: pd.DataFrame, message: str
) -> None:
    path = tmp_path / "interactions.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(path)


def test_sessions_from_inactivity_gap(tmp_path: Path) -> None:
    path = tmp_path / "interactions.csv"
    pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b"],
            "item_id": ["i", "j", "k", "i"],
            "ts": [0, 60_000, 60_000 + 31 * 60_000, 0],
        }
    ).to_csv(path, index=False)
    events = load(path).events
    assert events.groupby("user")["session"].nunique().tolist() == [2, 1]


def test_category_taste_counts_sessions_not_events() -> None:
    """One long session in category a weighs less than three short ones in b: the taste
    feature counts a session once, by the category most of its events fall in."""
    from tandem.batch.data import Dataset
    from tandem.batch.ranking import item_category_share, session_category_share

    # user 0: session 0 has 6 events in a (item 0) plus one wandering into b; sessions 1-3
    # one event each in b (item 1); user 1 has no history
    items = [0] * 6 + [1, 1, 1, 2]
    events = pd.DataFrame(
        {
            "user": [0] * len(items),
            "item": items,
            "session": [0] * 7 + [1, 2, 3],
            "ts": np.arange(len(items)),
        }
    )
    data = Dataset(
        events,
        pd.Index(["u0", "u1"]),
        pd.Index(["i0", "i1", "i2"]),
        np.array([0, 1, 1]),
        pd.Index(["a", "b"]),
    )
    share = session_category_share(events, data)
    assert share[0, 1] > share[0, 0] > 0  # 3 sessions in b against 1 in a, smoothed
    assert share[0] == pytest.approx([1.5 / 5, 3.5 / 5])  # (count + 1/2) / (4 + 1)
    assert share[1] == pytest.approx([0.5, 0.5])  # no history: uniform
    assert item_category_share(events, data) == pytest.approx([1.0, 3 / 4, 1 / 4])
