"""Prometheus metrics of the materializing consumers."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECORDS_APPLIED = Counter(
    "tandem_materializer_records_applied_total", "Records written into Redis", ["store"]
)
RECORDS_DEAD = Counter(
    "tandem_materializer_records_dead_lettered_total", "Records sent to tandem.dlq", ["store"]
)
VERSIONS = Counter(
    "tandem_materializer_versions_total", "Versions that reached a final state", ["store", "state"]
)
LIVE_VERSION = Gauge("tandem_store_live_version", "The live version of each store", ["store"])
OUTAGE_RETRIES = Counter(
    "tandem_materializer_outage_retries_total",
    "Redis or Kafka operations retried (or probed again) while the service was unavailable",
    ["service"],
)
