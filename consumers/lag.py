"""The materializer's consumer lag, from librdkafka's statistics (``stats_cb``): per version topic,
the records this process's partitions still have to consume."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import orjson

from tandem.consumers.metrics import LAG

log = logging.getLogger(__name__)

STATS_INTERVAL_MS = 5000

_seen: set[str] = set()
_lock = threading.Lock()


def lag_of(stats: Mapping[str, Any]) -> dict[str, int]:
    """Per topic, the sum of ``consumer_lag`` over the partitions being consumed (librdkafka
    reports -1 for a partition it does not fetch or whose position it does not know yet)."""
    totals: dict[str, int] = {}
    topics = stats.get("topics")
    if not isinstance(topics, dict):
        return totals
    for name, topic in topics.items():
        partitions = topic.get("partitions", {}) if isinstance(topic, dict) else {}
        for partition_id, partition in partitions.items():
            lag = partition.get("consumer_lag", -1) if isinstance(partition, dict) else -1
            if partition_id == "-1" or not isinstance(lag, int) or lag < 0:
                continue
            totals[name] = totals.get(name, 0) + lag
    return totals


def record_lag(stats_json: str) -> None:
    """The consumer's ``stats_cb``: set the lag gauge of every topic consumed, drop the others."""
    try:
        totals = lag_of(orjson.loads(stats_json))
    except orjson.JSONDecodeError:
        log.warning("librdkafka statistics were not JSON; consumer lag not updated")
        return
    with _lock:
        for topic in _seen - totals.keys():
            LAG.remove(topic)
        for topic, lag in totals.items():
            LAG.labels(topic).set(lag)
        _seen.clear()
        _seen.update(totals)


# The settings that make a consumer report its lag (merged into the materializer's consumer).
LAG_CONFIG = {"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": record_lag}
