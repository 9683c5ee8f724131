"""Prometheus metrics of the materializing consumers, in a registry of their own."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from tandem.contracts.metrics import LiveVersionGauge, component_registry

REGISTRY = component_registry()

RECORDS_APPLIED = Counter(
    "tandem_materializer_records_applied_total",
    "Records written into Redis",
    ["store"],
    registry=REGISTRY,
)
RECORDS_DEAD = Counter(
    "tandem_materializer_records_dead_lettered_total",
    "Records sent to tandem.dlq",
    ["store"],
    registry=REGISTRY,
)
VERSIONS = Counter(
    "tandem_materializer_versions_total",
    "Versions that reached a final state",
    ["store", "state"],
    registry=REGISTRY,
)
LIVE_VERSION = LiveVersionGauge(
    "tandem_store_live_version", "The version this materializer made live", REGISTRY
)
OUTAGE_RETRIES = Counter(
    "tandem_materializer_outage_retries_total",
    "Redis or Kafka operations retried (or probed again) while the service was unavailable",
    ["service"],
    registry=REGISTRY,
)
LAG = Gauge(
    "tandem_materializer_consumer_lag",
    "Records of a version topic not yet consumed (sum over the partitions this process owns)",
    ["topic"],
    registry=REGISTRY,
)
