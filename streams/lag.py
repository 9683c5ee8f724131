"""The stream worker's consumer lag: per partition of ``tandem.events`` it owns, the events the
broker has that the worker has not read yet. Worked out when Prometheus scrapes, from the last
offset the worker read (recorded per batch: a dictionary write per event) and the partition's high
watermark as the consumer last fetched it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tandem.streams.metrics import REGISTRY

log = logging.getLogger(__name__)


class WorkerLag(Collector):
    """``tandem_worker_consumer_lag{topic,partition}`` of the partitions assigned now."""

    def __init__(self) -> None:
        self.read: dict[Any, int] = {}  # Faust's TP -> last offset read
        self.consumer: Any = None

    def record_all(self, consumer: Any, messages: Iterable[Any]) -> None:
        """The worker read ``messages`` (Faust's, each partition's in offset order)."""
        self.consumer = consumer
        read = self.read
        for message in messages:
            read[message.tp] = message.offset

    def lags(self) -> dict[Any, int]:
        """Per assigned partition read so far: high watermark minus the next offset to read."""
        consumer = self.consumer
        if consumer is None:
            return {}
        try:
            assigned = set(consumer.assignment())
        except Exception:  # the consumer is starting or stopping: nothing to report
            log.debug("no assignment to report lag for", exc_info=True)
            return {}
        found = {}
        for tp, offset in list(self.read.items()):
            if tp not in assigned:
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:  # not fetched yet (aiokafka raises for an unknown position)
                continue
            if isinstance(high, int):
                found[tp] = max(0, high - offset - 1)
        return found

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tandem_worker_consumer_lag",
            "Events of tandem.events not yet read by this worker (per partition it owns)",
            labels=["topic", "partition"],
        )
        for tp, lag in sorted(self.lags().items()):
            family.add_metric([tp.topic, str(tp.partition)], lag)
        yield family


LAG = WorkerLag()
REGISTRY.register(LAG)
