"""Replay: rebuild one version into Redis from its topic, verified like the materializer does."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    Message,
    TopicPartition,
)

from tandem.consumers.exceptions import ReplayError
from tandem.consumers.finalize import Finalizer
from tandem.consumers.records import split
from tandem.consumers.sink import VersionSink
from tandem.contracts import topics
from tandem.contracts.kafka import (
    admin,
    make_consumer,
    make_producer,
)
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State
from tandem.store.connect import connect
from tandem.store.registry import VersionInfo

log = logging.getLogger(__name__)


def _partitions(settings: Settings, topic: str) -> list[int]:
    metadata = admin(settings).list_topics(topic=topic, timeout=10)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ReplayError(
            f"topic {topic} does not exist: the version cannot be rebuilt (was it deleted, or "
            "did the in-memory broker restart?)"
        )
    return sorted(found.partitions)


async def replay(
    settings: Settings,
    store: str,
    version: int,
    *,
    cutover: bool,
    on_progress: Callable[[int], object] | None = None,
) -> VersionInfo:
    """Drop what Redis holds of the version, re-apply its topic and decide it again."""
    settings.policy(store)
    topic = topics.version_topic(store, version)
    partitions = _partitions(settings, topic)
    redis = connect(settings)
    producer = make_producer(settings, bulk=False)
    consumer = make_consumer(
        settings, f"tandem-replay-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True}
    )
    try:
        sink = VersionSink(redis, settings, producer, source="replay")
        finalizer = Finalizer(redis, settings, producer)
        dropped = await finalizer.lifecycle.drop(store, version)
        log.info(
            "replay %s: dropped %d keys; reading %d partitions", topic, dropped, len(partitions)
        )
        await sink.registry.update(
            store, version, State.INGESTING, partitions=len(partitions), reasons=[]
        )
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        await _read_all(consumer, sink, store, version, set(partitions), on_progress)
        info = await finalizer.check(store, version, cutover=cutover)
        if info is None:
            raise ReplayError(f"replay {topic}: the version is still incomplete after reading it")
        if info.state is State.INGESTED and await finalizer.lifecycle.live(store) == version:
            info = await finalizer.registry.update(store, version, State.LIVE)
        return info
    finally:
        await asyncio.to_thread(consumer.close)
        producer.flush(10)
        await redis.aclose()


async def _read_all(
    consumer: Consumer,
    sink: VersionSink,
    store: str,
    version: int,
    waiting: set[int],
    on_progress: Callable[[int], object] | None,
) -> None:
    """Apply every partition up to its END_OF_PUSH; a partition that ends without one fails."""
    while waiting:
        messages: list[Message] = await asyncio.to_thread(consumer.consume, 5000, 1.0)
        polled = split(messages)
        if polled.errors:
            raise ReplayError(
                f"reading {topics.version_topic(store, version)}: {polled.errors[0].str()}"
            )
        for (_, partition), batch in polled.batches.items():
            progress = await sink.apply(store, version, partition, batch)
            if on_progress is not None:
                on_progress(len(batch))
            if progress.ended:
                waiting.discard(partition)
        missing = {p for _, p in polled.at_end} & waiting
        if missing:
            raise ReplayError(
                f"{topics.version_topic(store, version)}: partition(s) {sorted(missing)} end "
                "without END_OF_PUSH; the push never completed and cannot go live"
            )
