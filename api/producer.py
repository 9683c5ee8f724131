"""An asyncio face on the confluent-kafka producer: a future per event, resolved on ack."""

from __future__ import annotations

import asyncio
import threading

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from tandem.api.exceptions import Unavailable
from tandem.contracts import topics
from tandem.contracts.kafka import make_producer
from tandem.contracts.settings import Settings

# librdkafka gives up on a message after this long. Keep it well above a broker failover: when
# messages expire, the idempotent producer bumps its epoch and resends batches that may already
# be written, under new sequence numbers the broker cannot recognise as duplicates (seen with a
# 5 s timeout and a 4-7 s failover: acknowledged events written twice). The HTTP answer has its
# own, shorter bound (``EVENTS_ACK_TIMEOUT_S`` in handlers).
DELIVERY_TIMEOUT_MS = 120_000


class AsyncProducer:
    """Idempotent producer for ``tandem.events``; a thread serves its delivery callbacks."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._producer = make_producer(
            settings, bulk=False, **{"message.timeout.ms": DELIVERY_TIMEOUT_MS}
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="kafka-acks", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _ack(self, future: asyncio.Future[None], err: KafkaError | None, _msg: Message) -> None:
        def settle() -> None:
            if future.done():
                return
            if err is None:
                future.set_result(None)
            else:
                future.set_exception(Unavailable(f"the broker did not take the event: {err.str()}"))

        self._loop.call_soon_threadsafe(settle)

    def send_event(self, user_id: str, value: bytes) -> asyncio.Future[None]:
        """Queue one event keyed by its user; the future completes when the broker acks it."""
        future: asyncio.Future[None] = self._loop.create_future()
        try:
            self._producer.produce(
                topics.EVENTS,
                key=user_id.encode(),
                value=value,
                on_delivery=lambda e, m: self._ack(future, e, m),
            )
        except BufferError as e:
            raise Unavailable("too many events waiting for the broker; retry shortly") from e
        except KafkaException as e:
            raise Unavailable(f"the producer refused the event: {e}") from e
        return future

    @property
    def producer(self) -> Producer:
        """The underlying producer (its acks are served here): lifecycle records use it too."""
        return self._producer

    def broker_reachable(self, timeout_s: float = 1.0) -> bool:
        """Whether a metadata request succeeds (blocking: call it from a thread)."""
        try:
            self._producer.list_topics(topic=topics.EVENTS, timeout=timeout_s)
        except KafkaException:
            return False
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued, then stop the ack thread."""
        self._producer.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout_s)
