"""Prometheus metrics of the stream worker, in a registry of their own."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

from tandem.contracts.metrics import component_registry

REGISTRY = component_registry()

EVENTS = Counter("tandem_worker_events_total", "Events applied to sessions", registry=REGISTRY)
DEAD = Counter(
    "tandem_worker_events_dead_lettered_total",
    "Events sent to tandem.dlq",
    ["reason"],
    registry=REGISTRY,
)
FLUSH_SECONDS = Histogram(
    "tandem_worker_flush_seconds",
    "Time to write one batch of sessions into Redis",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "tandem_worker_duplicate_events_total", "Re-delivered events skipped", registry=REGISTRY
)
REDIS_RETRIES = Counter(
    "tandem_worker_redis_retries_total", "Redis writes retried during an outage", registry=REGISTRY
)
EPOCH_BUMPS = Counter(
    "tandem_worker_global_epoch_bumps_total",
    "Cutovers seen on tandem.versions",
    registry=REGISTRY,
)
EVENT_AGE = Histogram(
    "tandem_worker_event_age_seconds",
    "Freshness: the age of an event (now minus its ts) when the worker applies it",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
HIDDEN = Counter(
    "tandem_worker_hidden_changes_total",
    "Hides and unhides applied from tandem.hidden",
    ["change"],
    registry=REGISTRY,
)
LAST_EVENT = Gauge(
    "tandem_worker_last_event_timestamp_seconds",
    "When the worker last applied an event",
    registry=REGISTRY,
)


def applied(ts_ms: int) -> None:
    """Record the freshness of an event just applied (its ``ts_ms``: when it happened)."""
    now = time.time()
    EVENT_AGE.observe(max(0.0, now - ts_ms / 1000))
    LAST_EVENT.set(now)


def applied_all(ts_ms: list[int]) -> None:
    """Count events applied at once (their ``ts_ms``) and record their freshness as
    :func:`applied` does: one clock read and one counter step per batch, not per event."""
    now = time.time()
    observe = EVENT_AGE.observe
    for ts in ts_ms:
        observe(max(0.0, now - ts / 1000))
    LAST_EVENT.set(now)
    EVENTS.inc(len(ts_ms))


ONLINE = Counter(
    "tandem_worker_online_total",
    "Impressions and attributed events (click, add_to_cart, purchase) per version and variant",
    ["store", "version", "variant", "metric"],
    registry=REGISTRY,
)
UNATTRIBUTED = Counter(
    "tandem_worker_unattributed_total",
    "Clicks, add-to-carts and purchases matching no impression within the window",
    registry=REGISTRY,
)
SKIPPED_IMPRESSIONS = Counter(
    "tandem_worker_impressions_skipped_total",
    "Impressions not counted again: seen before (a redelivery or retry), or older than the "
    "attribution window (a new consumer group replaying the topic)",
    ["reason"],
    registry=REGISTRY,
)
