"""The materializer: a consumer group that writes version topics into Redis and cuts over.

Offsets are committed only after Redis holds the batch; the partition's progress is written in
the same Lua call as the batch, so a crash or rebalance at any point neither loses a record nor
counts one twice (re-delivered records are skipped by offset).

Redis and broker outages are ridden out: a batch or a decision Redis failed is retried with
exponential backoff until Redis takes it (the progress compare-and-set makes repeating it safe),
and the broker is probed until it answers again. An outage longer than its bound
(``redis_outage_s``, ``broker_outage_s``) ends the run with an error saying what to do, so the
process exits non-zero rather than staying alive and idle. A stop request ends every wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from tandem.consumers.exceptions import Stopped
from tandem.consumers.finalize import Finalizer
from tandem.consumers.lag import LAG_CONFIG
from tandem.consumers.records import Polled, Record, split
from tandem.consumers.retry import (
    PROBE_TIMEOUT_S,
    REDIS_TRANSIENT,
    BrokerWatch,
    OutagePolicy,
    Outages,
)
from tandem.consumers.sink import VersionSink
from tandem.contracts import topics
from tandem.contracts.kafka import make_consumer, make_producer
from tandem.contracts.settings import Settings
from tandem.store.connect import connect
from tandem.store.registry import VersionInfo

log = logging.getLogger(__name__)

GROUP = "tandem-materializer"
STOP_GRACE_S = 2.0  # how long a stop request lets the batch in hand finish before cutting it off
CLOSE_FLUSH_S = 3.0  # how long closing waits for queued dead letters and announcements
HEALTH_CHECK_S = 10.0  # how often an idle materializer makes sure Redis still answers
MAX_POLL_INTERVAL_S = 300.0  # librdkafka's default; raised to outlast a Redis outage
T = TypeVar("T")


@dataclass(frozen=True)
class MaterializerOptions:
    """How the materializer consumes."""

    group: str = GROUP
    batch_size: int = 5000
    poll_timeout_s: float = 0.5
    until_idle_s: float | None = None
    cutover: bool = True
    # How long Redis may fail the materializer's writes (or the broker not answer) before it gives
    # up and exits non-zero.
    redis_outage_s: float = 60.0
    broker_outage_s: float = 300.0


class Materializer:
    """Consumes every version topic and decides each version once it has been fully written."""

    def __init__(self, settings: Settings, options: MaterializerOptions) -> None:
        self._settings = settings
        self._options = options
        self._redis = connect(settings)
        self._producer = make_producer(settings, bulk=False)
        self._outages = Outages(
            settings,
            OutagePolicy(options.redis_outage_s, options.broker_outage_s),
            resume="start `tandem materialize` again and it resumes where it stopped",
            redis_option="--redis-outage-s",
        )
        self._sink = VersionSink(
            self._redis, settings, self._producer, source="materializer", outages=self._outages
        )
        self._finalizer = Finalizer(self._redis, settings, self._producer)
        self._broker = BrokerWatch(self._outages, self._probe_broker)
        # Not polling while a Redis outage is ridden out must not cost the group membership.
        poll_interval_s = max(MAX_POLL_INTERVAL_S, options.redis_outage_s + 60)
        self._consumer = make_consumer(
            settings,
            options.group,
            **{
                "max.partition.fetch.bytes": 8 << 20,
                "fetch.max.bytes": 64 << 20,
                "max.poll.interval.ms": int(poll_interval_s * 1000),
                "error_cb": self._broker.error,
                **LAG_CONFIG,  # tandem_materializer_consumer_lag
            },
        )
        self._assigned = False
        self._rebalanced_at = time.monotonic()
        self._redis_checked_at = time.monotonic()
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
        """Consume until ``stop`` is set (or, with ``until_idle_s``, until nothing arrives).

        Raises :class:`RedisUnavailable` or :class:`BrokerUnavailable` after an outage longer
        than the options allow; a stop request during an outage just ends the run.
        """
        stop = self._outages.stop = stop or asyncio.Event()
        self._consumer.subscribe(
            [topics.version_topic_regex(list(self._settings.stores))],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
        )
        polling: asyncio.Future[list[Message]] | None = None
        try:
            await self._stoppable(self._decide_pending())
            last_activity = time.monotonic()
            # The next poll runs in its thread while this batch is written to Redis.
            polling = asyncio.ensure_future(self._poll())
            while not stop.is_set():
                messages = await polling
                polling = asyncio.ensure_future(self._poll())
                if await self._stoppable(self._handle(messages)):
                    last_activity = time.monotonic()
                    continue
                await self._stoppable(self._check_services())
                if self._idle(last_activity) and await asyncio.to_thread(self._caught_up):
                    await self._stoppable(self._stop_idle())
                    return
        except Stopped:
            log.info("stopped while a batch or an outage was in hand; the next run resumes it")
        finally:
            if polling is not None:
                await polling
            await self.close()

    async def _stoppable(self, work: Awaitable[T]) -> T:
        """``work``, unless a stop is asked for: then it gets ``STOP_GRACE_S`` to finish before
        it is cancelled (what it wrote is guarded by the progress compare-and-set) and
        :class:`Stopped` is raised."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._outages.stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=STOP_GRACE_S)
            if not task.done():
                raise Stopped("stop requested")
            return task.result()
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _poll(self) -> list[Message]:
        return await asyncio.to_thread(
            self._consumer.consume, self._options.batch_size, self._options.poll_timeout_s
        )

    async def _check_services(self) -> None:
        """While idle: probe the broker if it was seen gone, and make sure Redis answers now and
        then (an outage must end the run even when nothing arrives)."""
        await self._broker.check()
        if time.monotonic() - self._redis_checked_at > HEALTH_CHECK_S:
            await self._outages.redis("a health check", self._ping)
            self._redis_checked_at = time.monotonic()

    def _probe_broker(self) -> None:
        self._consumer.list_topics(timeout=PROBE_TIMEOUT_S)

    async def _ping(self) -> None:
        await self._redis.ping()

    async def _stop_idle(self) -> None:
        await self._decide_pending()
        stalled = await self._outages.redis("the version list", self._finalizer.pending)
        if stalled:  # nothing arrived for them either: their pushes did not finish
            log.warning(
                "idle for %.1f s with incomplete versions %s (a failed push? "
                "`tandem versions abort STORE VERSION` cleans one up): stopping",
                self._options.until_idle_s,
                ", ".join(f"{s} v{v}" for s, v in stalled),
            )
        else:
            log.info("idle for %.1f s: stopping", self._options.until_idle_s)

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
        self._note(polled)
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
            progress = await self._outages.redis(
                f"the batch of {topic}[{partition}] up to offset {batch[-1].offset}",
                partial(self._sink.apply, store, version, partition, batch),
            )
            if progress.closed:
                finished.add((store, version))
        # Only now, with every batch in Redis: a commit covers nothing Redis does not hold.
        self._commit(polled.batches)
        for store, version in finished:
            if await self._decide(store, version):
                self._sink.forget(store, version)
        return True

    def _note(self, polled: Polled) -> None:
        for error in polled.errors:
            log.warning("consumer error: %s", error.str())
            self._broker.error(error)
        if polled.batches:
            self._broker.answered()

    def _commit(self, batches: dict[tuple[str, int], list[Record]]) -> None:
        offsets = [TopicPartition(t, p, batch[-1].offset + 1) for (t, p), batch in batches.items()]
        try:
            # Asynchronous: Redis already holds the progress, so a commit lost to a crash, a
            # rebalance or a broker outage only means re-delivered records, which the sink skips
            # by offset.
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as e:
            log.warning("offset commit failed (records will be skipped on re-delivery): %s", e)

    async def _decide(self, store: str, version: int) -> VersionInfo | None:
        """Decide a version, through a Redis outage: an attempt Redis failed midway is resumed
        by the next one, which does only what is left."""
        interrupted = False

        async def attempt() -> VersionInfo | None:
            nonlocal interrupted
            decide = self._finalizer.resume if interrupted else self._finalizer.check
            try:
                return await decide(store, version, cutover=self._options.cutover)
            except REDIS_TRANSIENT:
                interrupted = True
                raise

        return await self._outages.redis(f"the decision on {store} v{version}", attempt)

    async def _decide_pending(self) -> None:
        for store, version in await self._outages.redis(
            "the version list", self._finalizer.pending
        ):
            await self._decide(store, version)

    async def close(self) -> None:
        """Leave the group, hand the broker what is queued (bounded) and release Redis."""
        await asyncio.to_thread(self._consumer.close)
        left = await asyncio.to_thread(self._producer.flush, CLOSE_FLUSH_S)
        if left:
            log.warning("%d message(s) (dead letters, announcements) not delivered at exit", left)
        await self._redis.aclose()
