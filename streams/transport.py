"""Faust's aiokafka transport with a settable fetch wait.

Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. On Apache Kafka a fetch
returns as soon as data is there, but the embedded broker sleeps about half that wait even when
data is ready, so every event would wait ~750 ms (KAFKA-NOTES). A short wait bounds freshness on
both, at the cost of more fetch requests when idle.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as driver

FETCH_MAX_WAIT_MS = 20


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by AIOKafkaConsumer.start()
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(driver.Transport):
    Consumer = _Consumer


class TandemApp(faust.App):
    """A Faust app whose consumer uses the tuned transport."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
