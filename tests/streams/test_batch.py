"""The worker applies a fetched batch of events as it would apply them one by one."""

from __future__ import annotations

from pathlib import Path

from tandem.contracts.schemas import Event
from tandem.contracts.session import SessionPolicy, SessionState, update
from tandem.contracts.settings import Settings
from tandem.streams.app import StreamWorker, WorkerOptions

T0 = 1_790_000_000_000
POLICY = SessionPolicy(gap_ms=60_000, max_items=3)


def one_by_one(events: list[Event]) -> dict[str, SessionState]:
    states: dict[str, SessionState] = {}
    for event in events:
        states[event.user_id] = update(states.get(event.user_id), event, None, POLICY)
    return states


def test_a_batch_ends_where_its_events_one_by_one_end(tmp_path: Path) -> None:
    # Not started: apply() only touches the table's in-memory store and the worker's queues.
    settings = Settings.load(state_dir=tmp_path / "state")
    worker = StreamWorker(settings, WorkerOptions(app_id="batch", session=POLICY))
    a1 = Event("a", "i1", "view", T0, "a1", device="mobile")
    events = [
        a1,
        Event("b", "i2", "click", T0, "b1"),
        a1,  # a re-delivery within the batch: counted once
        Event("a", "i3", "click", T0 + 1, "a2"),
        Event("b", "i4", "view", T0 + 120_000, "b2"),  # after the gap: b's new session
        Event("a", "i5", "view", T0 + 2, "a3"),
        Event("a", "i6", "view", T0 + 3, "a4"),  # a's fourth item: the first one drops out
    ]
    partitions = [0, 1, 0, 2, 1, 2, 2]
    worker.apply(list(zip(events, partitions, strict=True)))

    expected = one_by_one(events)
    for user, state in expected.items():
        assert SessionState.decode(worker.sessions.data[user.encode()]) == state
        assert worker.pending[user] == worker.sessions.data[user.encode()]
    assert [i for i, _, _ in expected["a"].items] == ["i3", "i5", "i6"]
    assert expected["b"].items == (("i4", "view", T0 + 120_000),)
    # One changelog record per user, on the partition of the user's last event.
    assert {key: partition for key, (partition, _) in worker.unlogged.items()} == {
        b"a": 2,
        b"b": 1,
    }
    trending = worker.trending.drain()
    assert sum(sum(c.values()) for (segment, _), c in trending.items() if segment == "global") == 6
    assert trending[("device:mobile", T0 // 60_000)] == {"i1": 1}

    # A batch of nothing but re-deliveries changes nothing and queues nothing.
    worker.pending.clear()
    worker.unlogged.clear()
    worker.apply([(a1, 0)])
    assert not worker.pending
    assert not worker.unlogged
