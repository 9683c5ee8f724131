"""The evaluation cannot flatter: protocols, leak-freedom, baselines and intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tandem.batch import candidates as cand
from tandem.batch.data import load
from tandem.batch.evaluate import Estimate, bootstrap_interval
from tandem.batch.exceptions import InputError
from tandem.batch.pipeline import ALL_EVENTS, Options, run
from tandem.batch.split import Protocol, split
from tandem.batch.synth import SynthSpec, generate_ratings, write

SMALL = SynthSpec(users=300, items=200, days=10, events_per_user=30, seed=3)


def _plant_after_split(folder: Path, users: int = 50) -> int:
    """Add, for existing users, a purchase of a popular item each has not touched, at the last
    timestamp (after the split time): pairs the candidates hold, so a leak would show."""
    frame = pd.read_parquet(folder / "interactions.parquet")
    by_popularity = frame["item_id"].value_counts().index.tolist()
    planted = []
    for user in frame["user_id"].drop_duplicates().iloc[:users]:
        seen = set(frame.loc[frame["user_id"] == user, "item_id"])
        item = next(i for i in by_popularity if i not in seen)
        planted.append(
            frame.loc[frame["user_id"] == user]
            .iloc[[0]]
            .assign(item_id=item, ts=int(frame["ts"].max()), event_type="purchase", session_id="p")
        )
    pd.concat([frame, *planted], ignore_index=True).to_parquet(
        folder / "interactions.parquet", index=False
    )
    return len(planted)


def test_an_interaction_after_the_split_changes_no_training_input(tmp_path: Path) -> None:
    clean, planted = tmp_path / "clean", tmp_path / "planted"
    write(SMALL, clean)
    write(SMALL, planted)
    count = _plant_after_split(planted)
    options = Options(final_lists=False)
    before = run(clean, options, quiet=True)
    after = run(planted, options, quiet=True)
    assert len(after.data.events) == len(before.data.events) + count
    # candidates, features, ranker labels, popularity, the ranker itself: one digest
    assert after.training_digest == before.training_digest
    assert after.metrics["decay_half_life_days"] == before.metrics["decay_half_life_days"]
    # the planted events are held out: they change the judged side only
    events = after.data.events
    outer = split(events, Protocol())
    assert int(events["ts"].max()) >= outer.now_ms
    assert len(outer.test) == len(split(before.data.events, Protocol()).test) + count
    assert after.metrics["ranker_ndcg@10"] != before.metrics["ranker_ndcg@10"]


def test_last_n_holds_out_each_users_newest_interactions(tmp_path: Path) -> None:
    write(SMALL, tmp_path)
    events = load(tmp_path / "interactions.parquet").events
    parts = split(events, Protocol.parse("last-n", "3"))
    held = parts.test.groupby("user").size()
    assert (held == 3).all()
    latest_train = parts.train.groupby("user")["ts"].max()
    first_test = parts.test.groupby("user")["ts"].min()
    assert (latest_train.reindex(first_test.index) <= first_test).all()
    # users without enough history are never judged: all their events train
    short = events.groupby("user").size()
    assert set(held.index).isdisjoint(short.index[short < 6])
    share = split(events, Protocol.parse("last-n", "20%"))
    sizes = events.groupby("user").size()
    held_share = share.test.groupby("user").size()
    assert (held_share == np.maximum(1, np.floor(sizes[held_share.index] * 0.2))).all()


def test_the_rankers_inner_split_holds_out_as_long_a_time_as_the_outer_one(
    tmp_path: Path,
) -> None:
    """The ranker learns from a window as long as the one it is judged on."""
    write(SMALL, tmp_path)
    events = load(tmp_path / "interactions.parquet").events
    protocol = Protocol.parse("time")
    outer = split(events, protocol)
    inner = split(outer.train, protocol.inner())
    outer_horizon = int(events["ts"].max()) - outer.now_ms
    inner_horizon = int(outer.train["ts"].max()) - inner.now_ms
    assert inner_horizon == pytest.approx(outer_horizon, rel=0.01)
    assert int(inner.train["ts"].max()) < inner.now_ms <= int(inner.test["ts"].min())
    last_n = Protocol.parse("last-n", "20%")
    assert last_n.inner() == last_n


@pytest.mark.parametrize("bad", ["0", "abc", "150%", "2.5"])
def test_last_n_refuses_bad_values(bad: str) -> None:
    with pytest.raises(InputError, match="--last-n"):
        Protocol.parse("last-n", bad)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_users() -> None:
    rng = np.random.default_rng(0)
    few, many = rng.random(50), rng.random(5000)
    low, high = bootstrap_interval(few)
    assert low < few.mean() < high
    low_many, high_many = bootstrap_interval(many)
    assert high_many - low_many < (high - low) / 5
    estimate = Estimate.of(np.array([1.0, np.nan, 0.0]))
    assert estimate.users == 2
    assert estimate.mean == 0.5


def test_every_report_has_baselines_with_intervals_by_history(tmp_path: Path) -> None:
    write(SMALL, tmp_path)
    options = Options(protocol=Protocol.parse("last-n", "20%"), final_lists=False)
    output = run(tmp_path, options, quiet=True)
    names = {row.name for row in output.report}
    for system in ("popularity", "itemknn", "ease"):
        assert {f"{system}_ndcg@10", f"{system}_recall@200"} <= names
    assert {"ranker_ndcg@10", "candidates_recall@200"} <= names
    for row in output.report:
        assert row.all.users == row.with_history.users + row.without_history.users
        assert row.all.low <= row.all.mean <= row.all.high
    assert output.metrics["eval_users"] > 100
    text = output.table()
    assert "with history" in text
    assert "[" in text


def test_ratings_shape_one_event_per_user_and_item_over_years() -> None:
    spec = SynthSpec(users=200, items=150, days=1095, events_per_user=20, seed=1)
    interactions, items = generate_ratings(spec)
    assert not interactions.duplicated(["user_id", "item_id"]).any()
    assert set(interactions["event_type"]) == {"like", "view"}
    assert {"session_id", "device"}.isdisjoint(interactions.columns)
    span_days = (interactions["ts"].max() - interactions["ts"].min()) / 86_400_000
    assert span_days > 700
    assert interactions.groupby("user_id").size().min() >= 5
    assert set(interactions["item_id"]) <= set(items["item_id"])
    first, _ = generate_ratings(spec)
    pd.testing.assert_frame_equal(first, interactions)


def test_ratings_shape_evaluates_in_both_protocols_with_a_fitted_decay(tmp_path: Path) -> None:
    spec = SynthSpec(users=250, items=150, days=1095, events_per_user=25, seed=2)
    write(spec, tmp_path, "ratings")
    for protocol in (Protocol(), Protocol.parse("last-n", "20%")):
        output = run(tmp_path, Options(protocol=protocol, final_lists=False), quiet=True)
        # a half-life on the data's time scale (years of data): not a fixed week
        assert output.metrics["decay_half_life_days"] > 60
        assert output.metrics["eval_users"] > 20
        for name in ("ranker_ndcg@10", "ease_ndcg@10", "candidates_recall@200"):
            assert 0 < output.metrics[name] <= 1


def test_seen_items_excluded_by_event_type_and_cold_users_get_popular_items(
    tmp_path: Path,
) -> None:
    write(SMALL, tmp_path)
    data = load(tmp_path / "interactions.parquet", tmp_path / "items.parquet")
    events = data.events
    cold_user = int(events["user"].max())
    train = events.loc[events["user"] != cold_user]
    clock = cand.Clock.fitted(train, int(train["ts"].max()) + 1)
    i2i = cand.item_to_item(train, data.n_items, clock)
    for kinds in (frozenset({"purchase"}), ALL_EVENTS):
        frame = cand.user_candidates(
            train, data.n_users, data.n_items, clock, i2i, kinds, data.item_category
        ).frame
        listed = set(zip(frame["user"], frame["item"], strict=True))
        banned = train.loc[train["event_type"].isin(list(kinds))]
        assert not listed & set(zip(banned["user"], banned["item"], strict=True))
        if kinds == ALL_EVENTS:
            views = train.loc[train["event_type"] == "view"]
            assert not listed & set(zip(views["user"], views["item"], strict=True))
        else:  # a viewed item may come back when only purchases are excluded
            views = train.loc[train["event_type"] == "view"]
            assert listed & set(zip(views["user"], views["item"], strict=True))
    cold = frame.loc[frame["user"] == cold_user]
    assert len(cold) == cand.COLD_START_ITEMS
    top = np.argsort(-cand.popularity(train, data.n_items, clock), kind="stable")[:10]
    assert set(top.tolist()) <= set(cold["item"].tolist())
