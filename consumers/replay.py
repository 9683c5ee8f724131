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
from tandem.consumers.gates import verify
from tandem.consumers.records import split
from tandem.consumers.sink import VersionSink
from tandem.contracts import topics
from tandem.contracts.kafka import (
    admin,
    make_consumer,
    make_producer,
)
from tandem.contracts.settings import Settings
from tandem.contracts.versions import IN_SERVICE, State
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
    """Rebuild the version from its topic and decide it again, never removing what is served.

    Records are written over the version's keys (the same bytes they hold, or the bytes Redis
    lost) while the count and checksum are recomputed in a progress of the replay's own, which
    replaces the version's progress in one step once every partition's END_OF_PUSH matched. A
    live or backup version stays in service throughout; a materializer finishing the same
    version meanwhile reaches the same result.
    """
    settings.policy(store)
    topic = topics.version_topic(store, version)
    partitions = _partitions(settings, topic)
    redis = connect(settings)
    producer = make_producer(settings, bulk=False)
    consumer = make_consumer(
        settings, f"tandem-replay-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True}
    )
    try:
        sink = VersionSink(redis, settings, producer, source="replay", rebuild=True)
        finalizer = Finalizer(redis, settings, producer)
        before = await sink.registry.get(store, version)
        in_service = before is not None and before.state in IN_SERVICE
        if not in_service:
            await sink.registry.update(
                store, version, State.INGESTING, partitions=len(partitions), reasons=[]
            )
        writer = sink.writer(store, version)
        await writer.discard()  # an earlier replay that died midway starts over
        log.info("replay %s: reading %d partitions", topic, len(partitions))
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        await _read_all(consumer, sink, store, version, set(partitions), on_progress)
        result = verify(await writer.load_all(), len(partitions))
        if in_service and before is not None:
            if result.reasons or result.checksum != before.checksum:
                problem = "; ".join(result.reasons) or f"checksum {result.checksum}"
                raise ReplayError(
                    f"replay {topic}: the topic no longer matches the version in service "
                    f"({problem} vs {before.checksum}); nothing was changed in its registry"
                )
            await writer.promote_rebuild()
            return await _in_service(finalizer, before, cutover)
        await writer.promote_rebuild()
        info = await finalizer.check(store, version, cutover=cutover)
        if info is None:  # a materializer decided it meanwhile
            info = await finalizer.registry.get(store, version)
        if info is None or info.state in (State.PUSHED, State.INGESTING):
            raise ReplayError(f"replay {topic}: the version is still incomplete after reading it")
        if info.state is State.INGESTED and await finalizer.lifecycle.live(store) == version:
            info = await finalizer.registry.update(store, version, State.LIVE)
        return info
    finally:
        await asyncio.to_thread(consumer.close)
        producer.flush(10)
        await redis.aclose()


async def _in_service(finalizer: Finalizer, info: VersionInfo, cutover: bool) -> VersionInfo:
    """A rebuilt live or backup version: a backup becomes live when ``cutover`` asks."""
    live = await finalizer.lifecycle.live(info.store)
    if cutover and live != info.version:
        await finalizer.lifecycle.promote(info.store, info.version, expected=live)
    found = await finalizer.registry.get(info.store, info.version)
    return found if found is not None else info


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
            if progress.closed:
                waiting.discard(partition)
        missing = {p for _, p in polled.at_end} & waiting
        if missing:
            raise ReplayError(
                f"{topics.version_topic(store, version)}: partition(s) {sorted(missing)} end "
                "without END_OF_PUSH; the push never completed and cannot go live"
            )
