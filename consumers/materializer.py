"""The materializer: a consumer group that writes version topics into Redis and cuts over.

Offsets are committed only after Redis holds the batch; the partition's progress is written in
the same Lua call as the batch, so a crash or rebalance at any point neither loses a record nor
counts one twice (re-delivered records are skipped by offset).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from tandem.consumers.finalize import Finalizer
from tandem.consumers.records import Record, split
from tandem.consumers.sink import VersionSink
from tandem.contracts import topics
from tandem.contracts.kafka import make_consumer, make_producer
from tandem.contracts.settings import Settings
from tandem.store.connect import connect

log = logging.getLogger(__name__)

GROUP = "tandem-materializer"


@dataclass(frozen=True)
class MaterializerOptions:
    """How the materializer consumes."""

    group: str = GROUP
    batch_size: int = 5000
    poll_timeout_s: float = 0.5
    until_idle_s: float | None = None
    cutover: bool = True


class Materializer:
    """Consumes every version topic and decides each version once it has been fully written."""

    def __init__(self, settings: Settings, options: MaterializerOptions) -> None:
        self._settings = settings
        self._options = options
        self._redis = connect(settings)
        self._producer = make_producer(settings, bulk=False)
        self._sink = VersionSink(self._redis, settings, self._producer, source="materializer")
        self._finalizer = Finalizer(self._redis, settings, self._producer)
        self._consumer = make_consumer(
            settings,
            options.group,
            **{"max.partition.fetch.bytes": 8 << 20, "fetch.max.bytes": 64 << 20},
        )
        self._assigned = False
        self._rebalanced_at = time.monotonic()
        self.first_record_at: float | None = None

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = True
        self._rebalanced_at = time.monotonic()  # what it now owns may still have to arrive
        log.info("assigned %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Nothing to flush: a batch still being applied is guarded by the progress CAS in Redis,
        # so whoever owns the partition next skips what this process wrote, and vice versa.
        self._rebalanced_at = time.monotonic()
        log.info("revoked %s", [f"{p.topic}[{p.partition}]" for p in partitions])

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set (or, with ``until_idle_s``, until nothing arrives)."""
        stop = stop or asyncio.Event()
        self._consumer.subscribe(
            [topics.version_topic_regex(list(self._settings.stores))],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
        )
        await self._decide_pending()
        last_activity = time.monotonic()
        # The next poll runs in its thread while this batch is written to Redis.
        polling = asyncio.ensure_future(self._poll())
        try:
            while not stop.is_set():
                messages = await polling
                polling = asyncio.ensure_future(self._poll())
                if await self._handle(messages):
                    last_activity = time.monotonic()
                elif self._idle(last_activity) and await asyncio.to_thread(self._caught_up):
                    await self._decide_pending()
                    stalled = await self._finalizer.pending()
                    if stalled:  # nothing arrived for them either: their pushes did not finish
                        log.warning(
                            "idle for %.1f s with incomplete versions %s (a failed push? "
                            "`tandem versions abort STORE VERSION` cleans one up): stopping",
                            self._options.until_idle_s,
                            ", ".join(f"{s} v{v}" for s, v in stalled),
                        )
                    else:
                        log.info("idle for %.1f s: stopping", self._options.until_idle_s)
                    return
        finally:
            await polling
            await self.close()

    async def _poll(self) -> list[Message]:
        return await asyncio.to_thread(
            self._consumer.consume, self._options.batch_size, self._options.poll_timeout_s
        )

    def _caught_up(self) -> bool:
        """Whether every assigned partition has been read to its end: an incomplete version is
        then one whose push never finished, not one still arriving."""
        try:
            for tp in self._consumer.assignment():
                low, high = self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                position = self._consumer.position([tp])[0].offset
                if position < 0:  # nothing fetched yet: where the group's commit left it
                    position = self._consumer.committed([tp], timeout=5)[0].offset
                if high > low and position < high:
                    return False
        except KafkaException as e:
            log.warning("could not tell whether every partition was read (%s); waiting on", e)
            return False
        return True

    def _idle(self, last_activity: float) -> bool:
        idle_s = self._options.until_idle_s
        if idle_s is None:
            return False
        waited = time.monotonic() - max(last_activity, self._rebalanced_at)
        # Before the first assignment, allow for the group join as well.
        return waited > (idle_s if self._assigned else idle_s + 10)

    async def _handle(self, messages: list[Message]) -> bool:
        polled = split(messages)
        for error in polled.errors:
            log.warning("consumer error: %s", error.str())
        if not polled.batches:
            return False
        if self.first_record_at is None:
            self.first_record_at = time.monotonic()
        finished = set()
        for (topic, partition), batch in polled.batches.items():
            parsed = topics.parse_version_topic(topic)
            if parsed is None:
                continue
            store, version = parsed
            progress = await self._sink.apply(store, version, partition, batch)
            if progress.closed:
                finished.add((store, version))
        self._commit(polled.batches)
        for store, version in finished:
            if await self._finalizer.check(store, version, cutover=self._options.cutover):
                self._sink.forget(store, version)
        return True

    def _commit(self, batches: dict[tuple[str, int], list[Record]]) -> None:
        offsets = [TopicPartition(t, p, batch[-1].offset + 1) for (t, p), batch in batches.items()]
        try:
            # Asynchronous: Redis already holds the progress, so a commit lost to a crash or a
            # rebalance only means re-delivered records, which the sink skips by offset.
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as e:
            log.warning("offset commit failed (records will be skipped on re-delivery): %s", e)

    async def _decide_pending(self) -> None:
        for store, version in await self._finalizer.pending():
            await self._finalizer.check(store, version, cutover=self._options.cutover)

    async def close(self) -> None:
        """Leave the group and release connections."""
        await asyncio.to_thread(self._consumer.close)
        self._producer.flush(10)
        await self._redis.aclose()
