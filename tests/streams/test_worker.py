"""The stream worker against the real broker and Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import TopicPartition
from redis.asyncio import Redis

from tandem.contracts import topics
from tandem.contracts.kafka import make_consumer, make_producer
from tandem.contracts.schemas import Event
from tandem.contracts.session import SessionPolicy, SessionState
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State, VersionRecord, announce
from tandem.shell.processes import environment
from tandem.store.keys import Keys
from tandem.streams.app import WorkerOptions, changelog_topic
from tandem.streams.produce import EventProducer
from tandem.streams.runner import running
from tests.helpers import read_dlq, read_topic, wait_for

pytestmark = pytest.mark.integration


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_user() -> str:
    return "u" + uuid.uuid4().hex[:10]


@pytest.fixture
def options() -> WorkerOptions:
    return WorkerOptions(
        app_id="w" + uuid.uuid4().hex[:8],
        session=SessionPolicy(gap_ms=120_000),
        trending_flush_s=0.2,
    )


def send(settings: Settings, *events: Event) -> None:
    producer = EventProducer(settings)
    for event in events:
        producer.send(event)
    producer.flush()


def in_changelog(settings: Settings, options: WorkerOptions, user: str, items: int) -> bool:
    """Whether the worker's changelog holds a session of ``user`` with ``items`` items."""
    for key, value in read_topic(settings, changelog_topic(options)):
        if key == user.encode() and len(SessionState.decode(value).items) == items:
            return True
    return False


def events_committed(settings: Settings, options: WorkerOptions) -> bool:
    """Whether the worker's group committed every offset of every partition of events (a
    partition that never held an event has nothing to commit)."""
    parts = [TopicPartition(topics.EVENTS, p) for p in range(settings.events_partitions)]
    consumer = make_consumer(settings, options.app_id)
    try:
        committed = consumer.committed(parts, timeout=5)
        marks = [consumer.get_watermark_offsets(tp, timeout=5) for tp in parts]
    finally:
        consumer.close()
    return all(
        high <= low or c.offset >= high for c, (low, high) in zip(committed, marks, strict=True)
    )


async def items_are(redis: Redis, keys: Keys, user: str, items: list[str]) -> SessionState | None:
    raw = await redis.get(keys.session(user))
    if not isinstance(raw, bytes):
        return None
    state = SessionState.decode(raw)
    return state if [i for i, _, _ in state.items] == items else None


async def test_events_reach_session_epoch_and_sessions_expire(
    settings: Settings, options: WorkerOptions, redis: Redis, keys: Keys
) -> None:
    user, t0 = new_user(), now_ms()
    async with running(settings, options):
        send(
            settings,
            Event(user, "i1", "click", t0, "e1", device="mobile", context={"category": "shoes"}),
        )
        state = await wait_for(lambda: items_are(redis, keys, user, ["i1"]), 20, "a session")
        assert state.affinity == {"shoes": 2.0}
        assert state.device == "mobile"
        assert await redis.get(keys.epoch(user)) == b"1"
        assert 0 < await redis.ttl(keys.session(user)) <= 120
        send(settings, Event(user, "i2", "view", t0 + 1000, "e2"))
        await wait_for(lambda: items_are(redis, keys, user, ["i1", "i2"]), 20, "the 2nd event")
        assert await redis.get(keys.epoch(user)) == b"2"
        send(settings, Event(user, "i3", "view", t0 + 3 * 60_000, "e3"))  # after the 2-min gap
        fresh = await wait_for(lambda: items_are(redis, keys, user, ["i3"]), 20, "a new session")
        assert fresh.start_ms == t0 + 3 * 60_000
        assert fresh.counts == {"view": 1}


async def test_a_redelivered_event_counts_once(
    settings: Settings, options: WorkerOptions, redis: Redis, keys: Keys
) -> None:
    user, item, t0 = new_user(), "r" + uuid.uuid4().hex[:8], now_ms()
    first = Event(user, item, "click", t0, "e1", context={"category": "shoes"})
    second = Event(user, item + "b", "click", t0 + 1, "e2", context={"category": "shoes"})
    async with running(settings, options):
        send(settings, first, second, first)  # the third is a re-delivery of the first
        await wait_for(lambda: items_are(redis, keys, user, [item, item + "b"]), 20, "a session")
        epoch = int(await redis.get(keys.epoch(user)) or 0)
        send(settings, Event(user, item + "c", "view", t0 + 2, "e3"))
        state = await wait_for(
            lambda: items_are(redis, keys, user, [item, item + "b", item + "c"]), 20, "e3"
        )

        async def trended() -> float | None:
            score: float | None = await redis.zscore(keys.trending("global"), item + "c")
            return score

        await wait_for(trended, 20, "the trending flush")
    assert state.affinity == {"shoes": pytest.approx(4.0, rel=1e-3)}
    assert state.counts == {"click": 2, "view": 1}
    assert int(await redis.get(keys.epoch(user)) or 0) > epoch > 0  # each write bumps it
    assert await redis.zscore(keys.trending("global"), item) == 1


async def test_malformed_event_goes_to_dlq_and_the_next_is_processed(
    settings: Settings, options: WorkerOptions, redis: Redis, keys: Keys
) -> None:
    user = new_user()
    producer = make_producer(settings, bulk=False)
    producer.produce(
        topics.EVENTS,
        key=user.encode(),
        value=b'{"user_id": "' + user.encode() + b'", "item_id": "i1", "event_type": "teleport"}',
    )
    producer.produce(topics.EVENTS, key=user.encode(), value=b"not json at all")
    assert producer.flush(10) == 0
    send(settings, Event(user, "i9", "view", now_ms(), "ok1"))
    async with running(settings, options):
        await wait_for(lambda: items_are(redis, keys, user, ["i9"]), 20, "the good event")
    dead = [
        (key, reason)
        for key, reason, _ in read_dlq(settings, topics.EVENTS)
        if key == user.encode()
    ]
    assert len(dead) == 2
    assert b"event_type: must be one of" in dead[0][1]
    assert b"not valid JSON" in dead[1][1]


async def test_trending_flush(
    settings: Settings, options: WorkerOptions, redis: Redis, keys: Keys
) -> None:
    item = "hot" + uuid.uuid4().hex[:8]
    events = [Event(new_user(), item, "view", now_ms(), f"t{n}", device="tv") for n in range(3)]
    async with running(settings, options):
        send(settings, *events)

        async def counted() -> float | None:
            score: float | None = await redis.zscore(keys.trending("device:tv"), item)
            return score if score == 3 else None

        await wait_for(counted, 20, "trending counts")
        assert await redis.zscore(keys.trending("global"), item) == 3
        assert await redis.ttl(keys.trending("global")) > 0


async def test_cutover_bumps_the_global_epoch(
    settings: Settings, options: WorkerOptions, redis: Redis, keys: Keys
) -> None:
    user = new_user()
    async with running(settings, options):
        send(settings, Event(user, "i1", "view", now_ms(), "c1"))
        await wait_for(lambda: items_are(redis, keys, user, ["i1"]), 20, "the worker to run")
        producer = make_producer(settings, bulk=False)
        announce(producer, "u2i", 7, State.LIVE)
        assert producer.flush(10) == 0
        # This test's key prefix is new, so its global epoch counts every cutover record the
        # worker has read: all of those on the topic, this one included; and every change of
        # the hidden items (which bumps the epoch too) that it replays from tandem.hidden,
        # which the hidden set's version counts.
        cutovers = sum(
            VersionRecord.decode(value).state is State.LIVE
            for _, value in read_topic(settings, topics.VERSIONS)
        )

        async def bumped() -> int | None:
            value = int(await redis.get(keys.global_epoch()) or 0)
            hides = int(await redis.get(keys.hidden_version()) or 0)
            return value if value == cutovers + hides else None

        await wait_for(bumped, 20, f"the global epoch to count {cutovers} cutovers")


async def test_killed_worker_recovers_sessions_from_the_changelog(
    settings: Settings, options: WorkerOptions, redis: Redis, keys: Keys
) -> None:
    user, t0 = new_user(), now_ms()
    proc = subprocess.Popen(  # noqa: ASYNC220 - a child we SIGKILL; no output is read
        [
            sys.executable,
            "-m",
            "tandem",
            "worker",
            "--app-id",
            options.app_id,
            "--session-gap-s",
            "120",
        ],
        env=environment(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        send(
            settings, Event(user, "i1", "view", t0, "k1"), Event(user, "i2", "click", t0 + 1, "k2")
        )
        await wait_for(lambda: items_are(redis, keys, user, ["i1", "i2"]), 40, "the first worker")
        # Recovery must come from the changelog: wait until the session is in it and the
        # events' offsets are committed, so the next worker does not read the events again.
        await wait_for(
            lambda: asyncio.to_thread(in_changelog, settings, options, user, 2),
            40,
            "the session in the changelog",
        )
        await wait_for(
            lambda: asyncio.to_thread(events_committed, settings, options),
            40,
            "the events' offsets to be committed",
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    await redis.delete(keys.session(user))  # Redis alone could not bring it back
    async with running(settings, options):
        restored = await wait_for(
            lambda: items_are(redis, keys, user, ["i1", "i2"]),
            40,
            "the session to be recovered from the changelog",
        )
        assert restored.counts == {"view": 1, "click": 1}
        send(settings, Event(user, "i3", "view", t0 + 2, "k3"))
        final = await wait_for(
            lambda: items_are(redis, keys, user, ["i1", "i2", "i3"]),
            20,
            "the next event on the recovered session",
        )
        assert final.counts == {"view": 2, "click": 1}
