"""An asyncio face on the confluent-kafka producer: a future per event, resolved on ack.

The producer heals itself. A fatal error leaves a confluent-kafka idempotent producer unusable
for good (every later ``produce`` raises ``_FATAL``): librdkafka raises it from ``poll``, and it
can also arrive through the error callback, a delivery report or ``produce``. Whichever comes
first fails every event still waiting for its ack with :class:`Unavailable` (the HTTP answer
says they may still arrive) and has the ack thread replace the producer with a new one, after a
backoff that doubles while new producers keep failing (capped). Until then events are refused at
once, and ``/readyz`` says so. The ack thread logs and survives any error around ``poll``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from tandem.api import metrics
from tandem.api.exceptions import Unavailable
from tandem.contracts import topics
from tandem.contracts.kafka import make_producer
from tandem.contracts.settings import Settings

log = logging.getLogger(__name__)

# librdkafka gives up on a message after this long. Keep it well above a broker failover: when
# messages expire, the idempotent producer bumps its epoch and resends batches that may already
# be written, under new sequence numbers the broker cannot recognise as duplicates (seen with a
# 5 s timeout and a 4-7 s failover: acknowledged events written twice). The HTTP answer has its
# own, shorter bound (``EVENTS_ACK_TIMEOUT_S`` in handlers).
DELIVERY_TIMEOUT_MS = 120_000
POLL_S = 0.05
RECREATE_MIN_S = 0.2  # the wait before replacing a failed producer...
RECREATE_MAX_S = 5.0  # ...doubles while the new ones fail too, up to this

ErrorCallback = Callable[[KafkaError], None]
ProducerFactory = Callable[[ErrorCallback], Producer]
"""Makes a producer that reports its errors to the given callback (its ``error_cb``)."""


def is_fatal(error: KafkaError) -> bool:
    """Whether ``error`` leaves the producer unusable: only a new producer can send again."""
    return bool(error.fatal()) or error.code() == KafkaError._FATAL


def recreate_delay(attempt: int) -> float:
    """Seconds to wait before the ``attempt``-th replacement in a row (1-based) with no event
    acknowledged in between: doubling from ``RECREATE_MIN_S``, at most ``RECREATE_MAX_S``."""
    return min(RECREATE_MAX_S, RECREATE_MIN_S * 2.0 ** min(max(attempt - 1, 0), 16))


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def events_producer_factory(settings: Settings) -> ProducerFactory:
    """The factory of the API's producers of events (idempotent, low latency)."""

    def make(on_error: ErrorCallback) -> Producer:
        return make_producer(
            settings,
            bulk=False,
            **{"message.timeout.ms": DELIVERY_TIMEOUT_MS, "error_cb": on_error},
        )

    return make


class AsyncProducer:
    """Idempotent producer for ``tandem.events``; a thread serves its delivery callbacks and
    replaces it when it fails fatally."""

    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        factory: ProducerFactory | None = None,
    ) -> None:
        self._loop = loop
        self._factory = factory or events_producer_factory(settings)
        self._lock = threading.Lock()
        self._pending: set[asyncio.Future[None]] = set()  # queued on the current producer
        self._broken: str | None = None  # why the current producer is unusable
        self._generation = 0  # which producer is current: errors of older ones are ignored
        self._attempts = 0  # replacements since the last acknowledged event
        self._producer = self._make(0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="kafka-acks", daemon=True)
        self._thread.start()

    def _make(self, generation: int) -> Producer:
        return self._factory(functools.partial(self._on_error, generation))

    # ------------------------------------------------------------------ the ack thread

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._serve_once()
                except Exception:
                    metrics.PRODUCER_POLL_ERRORS.inc()
                    log.exception("serving the events producer failed; the ack thread goes on")
                    self._stop.wait(POLL_S)
        finally:
            if not self._stop.is_set():
                log.critical("the events producer's ack thread stopped; events are refused")

    def _serve_once(self) -> None:
        with self._lock:
            broken, producer, generation = self._broken, self._producer, self._generation
        if broken is not None:
            self._replace(generation, broken)
            return
        try:
            producer.poll(POLL_S)
        except KafkaException as e:  # librdkafka raises a fatal error from poll
            error = _kafka_error(e)
            if error is not None and is_fatal(error):
                self._fail(generation, error.str())
            else:
                metrics.PRODUCER_POLL_ERRORS.inc()
                log.warning("the events producer's poll raised %s; serving on", e)

    def _replace(self, generation: int, reason: str) -> None:
        """Make a new producer after the backoff (the ack thread only)."""
        with self._lock:
            self._attempts += 1
            attempt = self._attempts
        delay = recreate_delay(attempt)
        if self._stop.wait(delay):
            return
        try:
            fresh = self._make(generation + 1)
        except (KafkaException, ValueError, TypeError) as e:
            log.error("could not make a new events producer (%s); trying again", e)
            return
        with self._lock:
            old, self._producer = self._producer, fresh
            self._generation, self._broken = generation + 1, None
        metrics.PRODUCER_RECREATIONS.inc()
        log.warning(
            "events producer replaced (attempt %d, after %.1f s) following: %s",
            attempt,
            delay,
            reason,
        )
        try:  # drop what the failed producer still holds; its futures were already failed
            old.purge()
            old.poll(0)
        except (KafkaException, RuntimeError) as e:
            log.debug("discarding the failed events producer: %s", e)

    def _on_error(self, generation: int, error: KafkaError) -> None:
        """``error_cb`` of the producer of ``generation`` (runs in whichever thread polls)."""
        if is_fatal(error):
            self._fail(generation, error.str())
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("events producer: %s", error.str())
        else:
            log.debug("events producer: %s", error.str())

    def _fail(self, generation: int, reason: str) -> None:
        """The producer of ``generation`` failed fatally: fail what waits on it, replace it."""
        with self._lock:
            if generation != self._generation or self._broken is not None:
                return
            self._broken = reason
            waiting, self._pending = self._pending, set()
        log.error(
            "events producer failed fatally (%s): %d events in flight answered 503; replacing it",
            reason,
            len(waiting),
        )
        message = f"the events producer failed ({reason}) and is being replaced"
        for future in waiting:
            self._settle(future, message)

    def _ack(
        self, generation: int, future: asyncio.Future[None], err: KafkaError | None, _msg: Message
    ) -> None:
        with self._lock:
            self._pending.discard(future)
            if err is None:
                self._attempts = 0
        if err is None:
            self._settle(future, None)
            return
        if is_fatal(err):
            self._fail(generation, err.str())
        self._settle(future, f"the broker did not take the event: {err.str()}")

    def _settle(self, future: asyncio.Future[None], error: str | None) -> None:
        def settle() -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(Unavailable(error))

        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody waits for the answer any more
            log.debug("an ack arrived after the event loop closed")

    # ------------------------------------------------------------------ callers

    def send_event(self, user_id: str, value: bytes) -> asyncio.Future[None]:
        """Queue one event keyed by its user; the future completes when the broker acks it.
        Raises :class:`Unavailable` at once when the event cannot be queued."""
        future: asyncio.Future[None] = self._loop.create_future()
        with self._lock:
            broken, producer, generation = self._broken, self._producer, self._generation
            if broken is None:
                self._pending.add(future)
        if broken is not None:
            raise Unavailable(
                f"the events producer failed ({broken}) and is being replaced; retry shortly"
            )
        try:
            producer.produce(
                topics.EVENTS,
                key=user_id.encode(),
                value=value,
                on_delivery=functools.partial(self._ack, generation, future),
            )
        except BufferError as e:
            self._forget(future)
            raise Unavailable("too many events waiting for the broker; retry shortly") from e
        except KafkaException as e:
            self._forget(future)
            error = _kafka_error(e)
            if error is not None and is_fatal(error):
                self._fail(generation, error.str())
            raise Unavailable(f"the producer refused the event: {e}") from e
        return future

    def _forget(self, future: asyncio.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
        future.cancel()  # nobody will read it: a failure settled later must not be logged

    def produce_record(self, topic: str, *args: Any, **kwargs: Any) -> None:
        """``produce`` on the current producer (lifecycle records); a fatal error replaces it."""
        with self._lock:
            producer, generation = self._producer, self._generation
        try:
            producer.produce(topic, *args, **kwargs)
        except KafkaException as e:
            error = _kafka_error(e)
            if error is not None and is_fatal(error):
                self._fail(generation, error.str())
            raise

    @property
    def producer(self) -> Producer:
        """The current producer (its acks are served here; it changes after a fatal error)."""
        with self._lock:
            return self._producer

    @property
    def announcer(self) -> Announcer:
        """A producer of lifecycle records for :class:`~tandem.store.admin.VersionAdmin` that
        always uses the current producer."""
        return Announcer(self)

    @property
    def recreations(self) -> int:
        """How many times the producer was replaced (this process)."""
        with self._lock:
            return self._generation

    def problem(self) -> str | None:
        """Why events cannot be queued right now; None when they can."""
        with self._lock:
            broken = self._broken
        if broken is not None:
            return f"the events producer failed ({broken}) and is being replaced"
        if not self._thread.is_alive():
            return "the events producer's ack thread stopped"
        return None

    def broker_reachable(self, timeout_s: float = 1.0) -> bool:
        """Whether the broker describes the events topic with a leader for every partition
        (blocking: call it from a thread)."""
        try:
            found = self.producer.list_topics(topic=topics.EVENTS, timeout=timeout_s)
        except KafkaException:
            return False
        topic = found.topics.get(topics.EVENTS)
        if topic is None or topic.error is not None or not topic.partitions:
            return False
        return all(p.error is None and p.leader >= 0 for p in topic.partitions.values())

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued, then stop the ack thread."""
        try:
            self.producer.flush(timeout_s)
        except KafkaException as e:
            log.warning("events not flushed at shutdown: %s", e)
        self._stop.set()
        self._thread.join(timeout_s)


class Announcer:
    """What :class:`~tandem.store.admin.VersionAdmin` uses of a producer (``produce`` and
    ``poll``), on whichever producer of an :class:`AsyncProducer` is current."""

    def __init__(self, owner: AsyncProducer) -> None:
        self._owner = owner

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        """Queue one record on the current producer."""
        self._owner.produce_record(topic, *args, **kwargs)

    def poll(self, timeout: float = 0.0) -> int:
        """Nothing to do: the owner's ack thread serves every callback (polling here too could
        take a fatal error away from it)."""
        del timeout
        return 0
