"""Prometheus metrics of the stream worker."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS = Counter("tandem_worker_events_total", "Events applied to sessions")
DEAD = Counter("tandem_worker_events_dead_lettered_total", "Events sent to tandem.dlq", ["reason"])
FLUSH_SECONDS = Histogram(
    "tandem_worker_flush_seconds",
    "Time to write one batch of sessions into Redis",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
)
DUPLICATES = Counter("tandem_worker_duplicate_events_total", "Re-delivered events skipped")
REDIS_RETRIES = Counter(
    "tandem_worker_redis_retries_total", "Redis writes retried during an outage"
)
EPOCH_BUMPS = Counter("tandem_worker_global_epoch_bumps_total", "Cutovers seen on tandem.versions")
