"""Session and trending updates are pure functions of (state, event)."""

from __future__ import annotations

import pytest

from tandem.contracts.schemas import Event
from tandem.contracts.session import SessionPolicy, SessionState, update
from tandem.streams.trending import TrendingCounts, window_of

POLICY = SessionPolicy(gap_ms=30 * 60_000, max_items=3, half_life_ms=10 * 60_000)
T0 = 1_790_000_000_000


def ev(item: str, ts_ms: int, kind: str = "view", **extra: str) -> Event:
    return Event("u1", item, kind, ts_ms, f"e{ts_ms}{item}", **extra)  # type: ignore[arg-type]


def run(events: list[tuple[Event, str | None]]) -> SessionState:
    state = None
    for event, category in events:
        state = update(state, event, category, POLICY)
    assert state is not None
    return state


def test_first_event_starts_a_session() -> None:
    state = run([(ev("i1", T0, device="mobile"), "shoes")])
    assert (state.start_ms, state.last_ms, state.device) == (T0, T0, "mobile")
    assert state.items == (("i1", "view", T0),)
    assert state.counts == {"view": 1}
    assert state.affinity == {"shoes": 1.0}


def test_gap_starts_a_new_session() -> None:
    state = run([(ev("i1", T0), "a"), (ev("i2", T0 + 31 * 60_000, "click"), "b")])
    assert state.start_ms == T0 + 31 * 60_000
    assert state.items == (("i2", "click", T0 + 31 * 60_000),)
    assert state.counts == {"click": 1}
    assert state.affinity == {"b": 2.0}


def test_within_gap_continues_and_new_session_id_restarts() -> None:
    same = run([(ev("i1", T0), None), (ev("i2", T0 + 29 * 60_000), None)])
    assert same.start_ms == T0
    assert len(same.items) == 2
    changed = run(
        [(ev("i1", T0, session_id="s1"), None), (ev("i2", T0 + 1, session_id="s2"), None)]
    )
    assert changed.session_id == "s2"
    assert len(changed.items) == 1


def test_affinity_decays_with_half_life() -> None:
    state = run([(ev("i1", T0, "purchase"), "a"), (ev("i2", T0 + 10 * 60_000), "b")])
    assert state.affinity["a"] == pytest.approx(2.0)  # 4.0 halved after one half-life
    assert state.affinity["b"] == pytest.approx(1.0)


def test_last_items_are_bounded_and_counts_kept() -> None:
    state = run([(ev(f"i{n}", T0 + n), None) for n in range(5)])
    assert [i for i, _, _ in state.items] == ["i2", "i3", "i4"]
    assert state.counts == {"view": 5}


def test_late_event_does_not_move_time_backwards() -> None:
    state = run([(ev("i1", T0 + 1000), None), (ev("i2", T0), None)])
    assert state.last_ms == T0 + 1000


def test_redelivered_event_is_skipped() -> None:
    first = ev("i1", T0)
    state = update(None, first, "a", POLICY)
    assert update(state, first, "a", POLICY) is state


def test_encoding_round_trip() -> None:
    state = run([(ev("i1", T0, device="tv"), "a"), (ev("i2", T0 + 5, "dislike"), "a")])
    assert SessionState.decode(state.encode()) == state


def test_trending_counts_per_segment_and_window() -> None:
    counts = TrendingCounts()
    counts.add(ev("i1", T0, device="mobile"))
    counts.add(ev("i1", T0 + 1))
    counts.add(ev("i2", T0 + 60_000))
    drained = counts.drain()
    assert drained[("global", window_of(T0))] == {"i1": 2}
    assert drained[("device:mobile", window_of(T0))] == {"i1": 1}
    assert drained[("global", window_of(T0 + 60_000))] == {"i2": 1}
    assert counts.drain() == {}
