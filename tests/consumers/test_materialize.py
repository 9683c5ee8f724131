"""Publish → materialize → live, against the real broker and Redis, and every way it can fail."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from tandem.batch.candidates_io import synthetic_candidates
from tandem.batch.exceptions import PushError
from tandem.batch.publish import Publisher
from tandem.contracts import topics
from tandem.contracts.codec import encode
from tandem.contracts.control import record_headers
from tandem.contracts.kafka import admin, make_producer
from tandem.contracts.schemas import CandidateList
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State
from tandem.store.keys import Keys
from tandem.store.lifecycle import Lifecycle
from tandem.store.registry import Registry, VersionInfo
from tests.consumers.conftest import materializing
from tests.consumers.pushes import good_records, raw_push
from tests.helpers import read_dlq, served, wait_for

pytestmark = pytest.mark.integration

FINAL = (State.LIVE, State.REJECTED)  # INGESTED is passed through on the way to LIVE


async def decided(redis: Redis, keys: Keys, store: str, version: int) -> VersionInfo:
    registry = Registry(redis, keys)

    async def probe() -> VersionInfo | None:
        info = await registry.get(store, version)
        return info if info is not None and info.state in FINAL else None

    return await wait_for(probe, 40, f"{store} v{version} to be decided")


async def test_publish_materialize_live(
    store_settings: Settings, store: str, redis: Redis, keys: Keys
) -> None:
    with Publisher(store_settings) as publisher:
        push = publisher.publish(
            store,
            synthetic_candidates(500, 30, seed=1),
            metadata={"metrics": {"ndcg@10": 0.3}},
            attachments={"model": b"tree text", "categories": b'{"i1": "books"}'},
        )
    async with materializing(store_settings):
        info = await decided(redis, keys, store, push.version)
    assert info.state is State.LIVE
    assert info.count == push.count == 500
    assert info.checksum == push.checksum
    assert info.metadata == {"metrics": {"ndcg@10": 0.3}}
    assert await redis.get(keys.model(store, push.version)) == b"tree text"
    assert await redis.ttl(keys.attachment(store, push.version, "categories")) == -1  # serving
    got = await served(store_settings, store, "u7")
    expected = next(row for row in synthetic_candidates(500, 30, seed=1) if row.entity_id == "u7")
    assert got.version == push.version
    assert got.item_ids == expected.item_ids


async def test_failed_gate_keeps_old_version_live(
    store_settings: Settings, store: str, redis: Redis, keys: Keys
) -> None:
    publisher = Publisher(store_settings)
    first = publisher.publish(
        store, synthetic_candidates(200, 5, seed=1), metadata={"metrics": {"ndcg@10": 0.30}}
    )
    async with materializing(store_settings):
        assert (await decided(redis, keys, store, first.version)).state is State.LIVE
        small = publisher.publish(
            store, synthetic_candidates(100, 5, seed=2), metadata={"metrics": {"ndcg@10": 0.10}}
        )
        info = await decided(redis, keys, store, small.version)
    assert info.state is State.REJECTED
    assert any("entity count 100 is 50.0%" in r for r in info.reasons)
    assert any("ndcg@10 fell from 0.3 to 0.1" in r for r in info.reasons)
    assert await Lifecycle(redis, keys).live(store) == first.version


async def topics_of(settings: Settings, store: str) -> list[int]:
    """The versions of ``store`` that have a topic."""
    listed = await asyncio.to_thread(lambda: admin(settings).list_topics(timeout=10).topics)
    return [
        parsed[1]
        for name in listed
        if (parsed := topics.parse_version_topic(name)) is not None and parsed[0] == store
    ]


async def state_is(
    redis: Redis, keys: Keys, store: str, version: int, state: State
) -> VersionInfo | None:
    info = await Registry(redis, keys).get(store, version)
    return info if info is not None and info.state is state else None


async def test_push_without_end_of_push_never_goes_live(
    store_settings: Settings, store: str, redis: Redis, keys: Keys
) -> None:
    def dies_midway() -> object:
        yield from synthetic_candidates(50, 5)
        raise RuntimeError("batch job killed")

    with Publisher(store_settings) as publisher, pytest.raises(RuntimeError):
        publisher.publish(store, dies_midway(), partitions=2)  # type: ignore[arg-type]
    died = max(await topics_of(store_settings, store))
    unended = raw_push(store_settings, store, good_records(20), end=False)
    lying = raw_push(store_settings, store, good_records(20), count_delta=1)
    async with materializing(store_settings):
        info = await decided(redis, keys, store, lying)
        aborted = await wait_for(
            lambda: state_is(redis, keys, store, died, State.ABORTED), 30, "the abort"
        )
        pending = await Registry(redis, keys).get(store, unended)
    assert info.state is State.REJECTED
    assert any("count 20 != pushed 21" in r for r in info.reasons)
    assert aborted.reasons == ("RuntimeError: batch job killed",)
    for pattern in keys.version_patterns(store, died):  # what was written of it is gone
        assert [k async for k in redis.scan_iter(match=pattern)] == []
    assert pending is not None
    assert pending.state is State.INGESTING  # no END_OF_PUSH and no abort: the operator's call
    assert await Lifecycle(redis, keys).live(store) is None


async def test_oversized_record_fails_the_push_naming_the_entity(
    store_settings: Settings, store: str
) -> None:
    small = store_settings.model_copy(update={"max_record_bytes": 2048})
    huge = CandidateList("big-user", [f"i{n}" for n in range(400)], [0.5] * 400)
    limit = r"entity 'big-user'.*bytes, over the 2048-byte limit"
    with pytest.raises(PushError, match=limit), Publisher(small) as publisher:
        publisher.publish(store, iter([huge]))


async def test_undecodable_record_goes_to_dlq_and_rejects_version(
    store_settings: Settings, store: str, redis: Redis, keys: Keys
) -> None:
    records = [*good_records(10), (b"u-bad", b"\xff garbage"), (b"bad key!", b"")]
    version = raw_push(store_settings, store, records)
    topic = topics.version_topic(store, version)
    async with materializing(store_settings):
        info = await decided(redis, keys, store, version)
    assert info.state is State.REJECTED
    assert any("2 record(s) could not be applied" in r for r in info.reasons)
    dead = read_dlq(store_settings, topic)
    assert {m[0] for m in dead} == {b"u-bad", b"bad key!"}
    reasons = {m[0]: m[1] for m in dead}
    assert b"format byte" in reasons[b"u-bad"] or b"shorter" in reasons[b"u-bad"]
    assert b"key" in reasons[b"bad key!"]


async def test_replay_after_keys_deleted(
    store_settings: Settings, store: str, redis: Redis, keys: Keys
) -> None:
    from tandem.consumers.replay import replay

    with Publisher(store_settings) as publisher:
        push = publisher.publish(store, synthetic_candidates(300, 10, seed=4))
    async with materializing(store_settings):
        original = await decided(redis, keys, store, push.version)
    assert original.state is State.LIVE
    await redis.flushdb()
    assert (await served(store_settings, store, "u1")).version is None
    rebuilt = await replay(store_settings, store, push.version, cutover=False)
    assert rebuilt.checksum == original.checksum
    assert rebuilt.count == 300
    assert await Lifecycle(redis, keys).live(store) is None
    live = await replay(store_settings, store, push.version, cutover=True)
    assert live.state is State.LIVE
    assert live.checksum == original.checksum
    got = await served(store_settings, store, "u1")
    assert got.version == push.version
    assert len(got.item_ids) == 10


async def test_a_record_after_end_of_push_is_dead_lettered_never_served(
    store_settings: Settings, store: str, redis: Redis, keys: Keys
) -> None:
    version = raw_push(store_settings, store, good_records(10, tag="good"))
    topic = topics.version_topic(store, version)
    async with materializing(store_settings):
        info = await decided(redis, keys, store, version)
        assert info.state is State.LIVE
        producer = make_producer(store_settings, bulk=False)
        late = encode(["evil1", "evil2"], [1.0, 0.9])
        producer.produce(
            topic, key=b"u3", value=late, partition=0, headers=record_headers(store, version)
        )
        assert producer.flush(10) == 0
        dead = await wait_for(
            lambda: asyncio.to_thread(read_dlq, store_settings, topic), 30, "the dead letter"
        )
    assert [(key, reason) for key, reason, _ in dead] == [
        (b"u3", b"sealed: the partition's END_OF_PUSH (or abort) came first")
    ]
    assert (await served(store_settings, store, "u3")).item_ids == ["good3", "i2"]
    after = await Registry(redis, keys).get(store, version)
    assert after is not None
    assert (after.state, after.count, after.checksum) == (State.LIVE, 10, info.checksum)


async def test_replay_of_the_live_version_never_empties_an_answer(
    store_settings: Settings, store: str, redis: Redis, keys: Keys
) -> None:
    from tandem.consumers.replay import replay

    with Publisher(store_settings) as publisher:
        push = publisher.publish(store, synthetic_candidates(3000, 10, seed=6))
    async with materializing(store_settings):
        original = await decided(redis, keys, store, push.version)
    assert original.state is State.LIVE
    done = asyncio.Event()
    reads, empty = 0, 0

    async def read_until_done() -> None:
        nonlocal reads, empty
        while not done.is_set() or reads < 100:
            raw = await redis.get(keys.entity(store, push.version, f"u{reads % 3000}"))
            empty += raw is None
            reads += 1

    async def replay_then_stop() -> VersionInfo:
        try:
            return await replay(store_settings, store, push.version, cutover=False)
        finally:
            done.set()

    _, rebuilt = await asyncio.gather(read_until_done(), replay_then_stop())
    assert empty == 0, f"{empty} of {reads} reads found nothing"
    assert (rebuilt.state, rebuilt.count, rebuilt.checksum) == (
        State.LIVE,
        3000,
        original.checksum,
    )
    assert await Lifecycle(redis, keys).live(store) == push.version


async def test_replay_racing_the_materializer_agrees_with_it(
    store_settings: Settings, store: str, redis: Redis, keys: Keys
) -> None:
    from tandem.consumers.replay import replay

    with Publisher(store_settings) as publisher:
        push = publisher.publish(store, synthetic_candidates(20_000, 10, seed=8))
    async with materializing(store_settings, batch_size=200):
        rebuilt = await replay(store_settings, store, push.version, cutover=True)
        info = await decided(redis, keys, store, push.version)
    assert info.state is State.LIVE, info.reasons
    assert info.count == rebuilt.count == 20_000
    assert info.checksum == rebuilt.checksum == push.checksum
