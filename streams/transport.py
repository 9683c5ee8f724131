"""Faust's aiokafka transport with a settable fetch wait, batched record sends, a hook that
runs before every producer flush, and topics whose fetched messages go to a handler in batches.

Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. On Apache Kafka a fetch
returns as soon as data is there, but the embedded broker sleeps about half that wait even when
data is ready, so every event would wait ~750 ms (KAFKA-NOTES). A short wait bounds freshness on
both, at the cost of more fetch requests when idle.

Faust flushes its producer before it commits offsets (and when partitions are revoked): the
hooks of :attr:`TandemApp.before_producer_flush` run first, so a worker that queues its table's
changelog records itself hands them to the producer before any offset past their events is
committed.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterable
from typing import Any, cast

import faust
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as driver
from faust.types import AgentT
from mode import Service

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 10
YIELD_EVERY = 100  # messages handed to the streams between two yields to the event loop
# Messages of one topic handed to its batch handler at once: a fetch of a busy partition holds
# thousands, and the event loop (the Redis mirror among others) waits while a batch is applied.
BATCH_MAX = 500
# More than arrives in FETCH_MAX_WAIT_MS below a few thousand events/s: the broker answers a
# fetch once it is that old (or this full) instead of as soon as one record is there, so at
# moderate rates a fetch carries many events. Every fetch round costs the consumer thread
# about a millisecond of Python (and the worker its hand-over), so one fetch per event made
# the consumer the worker's biggest cost at 500 events/s.
FETCH_MIN_BYTES = 1 << 20


BatchHandler = Callable[[list[Any]], Coroutine[Any, Any, None]]


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start()
        consumer._fetch_min_bytes = FETCH_MIN_BYTES
        return consumer


@types.coroutine
def _finish(coro: Coroutine[Any, Any, Any], waiting: Any) -> Generator[Any, Any, None]:
    """The rest of ``coro``, stepped once already and suspended on ``waiting`` (what
    ``yield from coro`` does from there on): a task can run it."""
    while True:
        try:
            sent = yield waiting
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as e:  # thrown in by the task (a cancellation): pass it on
            try:
                waiting = coro.throw(e)
            except StopIteration:
                return
        else:
            try:
                waiting = coro.send(sent)
            except StopIteration:
                return


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover
        """Faust's fetch loop (``Consumer._drain_messages`` of faust-streaming 0.15.3) with a
        fast path for handing a message to the streams (see :meth:`_step`), and a batch handler
        per topic for the topics that have one (see :meth:`TandemApp.batch_topic`)."""
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(faust_consumer.CONSUMER_FETCHING)
                records = self.getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    await self._hand_all(records)
                    self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)

    async def _hand_all(self, records: AsyncIterator[tuple[Any, Any]]) -> None:
        """Hand one fetch's messages to the streams, as Faust does (gaps, commit_every, a
        message older than one already read is dropped), yielding every 100 messages.

        Messages of a topic with a batch handler (:meth:`TandemApp.batch_topic`) skip the
        streams: they are collected and handed over together, at most ``BATCH_MAX`` at a time,
        once the fetch is through (the handler acks them)."""
        handlers = cast(TandemApp, self.app).batch_handlers
        batches: dict[str, list[Any]] = {}
        since_yield = 0
        async for tp, message in records:
            since_yield += 1
            if since_yield > YIELD_EVERY:
                await asyncio.sleep(0)
                since_yield = 0
            offset = message.offset
            read = self._read_offset[tp]
            if read is not None and offset < read:
                continue
            if read and offset - read > 1 and self.app.topics.acks_enabled_for(message.topic):
                await self._add_gap(tp, read + 1, offset)
            if self._commit_every is not None and self._n_acked >= self._commit_every:
                self._n_acked = 0
                await self.commit()
            topic = message.topic
            if topic in handlers:
                batch = batches.setdefault(topic, [])
                batch.append(message)
                if len(batch) >= BATCH_MAX:
                    await self._step(handlers[topic](batches.pop(topic)))
            else:
                await self._step(self.callback(message))
            self._read_offset[tp] = offset
        for topic, batch in batches.items():
            await self._step(handlers[topic](batch))

    async def _step(self, handing: Awaitable[Any]) -> None:
        """Await ``handing``: ``callback(message)`` (flow control, decoding, a put on each
        stream's queue) or a batch handler.

        Faust awaits ``wait_first(callback(message), suspend_flow.wait())`` for every message:
        four tasks, a wait and three cancellations per event, the largest single cost of a busy
        worker. The callback finishes without suspending unless a queue is full or the flow is
        suspended, so it is stepped once in place; only one that did suspend is finished the
        way Faust does it (a rebalance can interrupt it).
        """
        coro = cast(Coroutine[Any, Any, Any], handing)
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        rest = asyncio.ensure_future(_finish(coro, waiting))
        await self.wait_first(rest, self.suspend_flow.wait())


class _Producer(driver.Producer):
    async def flush(self) -> None:
        for hook in cast(TandemApp, self.transport.app).before_producer_flush:
            await hook()
        await super().flush()

    async def send_records(
        self, topic: str, partition: int, records: Iterable[tuple[bytes, bytes]]
    ) -> list[asyncio.Future[Any]]:
        """Queue ``(key, value)`` records for one partition in as few batches as the producer's
        batch size allows (one record per batch when it is 1); the futures resolve when the
        broker has them. Records of one partition keep their order."""
        producer = self._ensure_producer()
        futures = []
        batch = producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)  # the first always fits
        if batch.record_count():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures


class _Transport(driver.Transport):
    Consumer = _Consumer
    Producer = _Producer


class TandemApp(faust.App):
    """A Faust app whose consumer uses the tuned transport."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Coroutines run (in order) before every flush of the producer.
        self.before_producer_flush: list[Callable[[], Awaitable[None]]] = []
        #: Topic name -> its batch handler (see :meth:`batch_topic`).
        self.batch_handlers: dict[str, BatchHandler] = {}

    async def _on_agent_error(self, agent: AgentT[Any], exc: BaseException) -> None:
        """An agent that failed stops the app (Faust would restart the agent past the record it
        failed on, so losing it, and the process would live on): the worker exits non-zero and,
        started again, reads from the last committed offset."""
        await super()._on_agent_error(agent, exc)
        log.error("the %s agent failed: %r", agent.name, exc)
        await self.crash(exc)

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    def batch_topic(self, topic: faust.types.TopicT, handler: BatchHandler) -> None:
        """Subscribe to ``topic`` and hand its fetched messages to ``handler`` in batches
        (Faust's ``ConsumerMessage``s, in offset order per partition), past Faust's streams.

        Faust's per-event machinery (a conductor callback, a queue put and get, sensors, an
        ``Event`` and an ack per message) cost a busy worker more than its own work. The handler
        takes over what a stream did: it waits for ``flow_control``, skips messages of an older
        ``consumer_generation_id`` (the rebalance's seek reads them again), and acks each
        message (``consumer.ack``) once done with it, so its offset can be committed.
        """
        self.topics.add(topic)
        for name in topic.topics:
            self.batch_handlers[name] = handler

    async def send_records(
        self, topic: str, partition: int, records: Iterable[tuple[bytes, bytes]]
    ) -> list[asyncio.Future[Any]]:
        """See ``_Producer.send_records``."""
        return await cast(_Producer, self.producer).send_records(topic, partition, records)
