"""Prometheus metrics of the API (served at /metrics), in a registry of their own."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from tandem.contracts.metrics import LiveVersionGauge, component_registry

# The API's own metrics only: GET /metrics serves this registry (under ``serve --workers``, every
# API process's values from the multiprocess directory instead).
REGISTRY = component_registry()

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)

REQUESTS = Histogram(
    "tandem_api_request_seconds",
    "Request latency",
    ["route", "outcome"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
READ_RETRIES = Counter(
    "tandem_api_read_retries_total",
    "First round trips tried again after a failed Redis connection",
    registry=REGISTRY,
)
DEGRADED = Counter(
    "tandem_api_degraded_total",
    "Answers in batch order or from the snapshot",
    ["reason"],
    registry=REGISTRY,
)
CACHE_HITS = Counter(
    "tandem_api_cache_hits_total", "Answers served from the response cache", registry=REGISTRY
)
RERANK = Histogram(
    "tandem_api_rerank_seconds",
    "Feature building and scoring",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
# Under serve --workers the gauges aggregate with "max": a version is in service when any API
# process serves it.
LIVE_VERSION = LiveVersionGauge("tandem_api_live_version", "Live version served", REGISTRY)
EVENTS = Counter("tandem_api_events_total", "Events acknowledged by the broker", registry=REGISTRY)
PRODUCER_RECREATIONS = Counter(
    "tandem_api_producer_recreations_total",
    "Events producers replaced after a fatal error (e.g. UNKNOWN_PRODUCER_ID, fenced)",
    registry=REGISTRY,
)
PRODUCER_POLL_ERRORS = Counter(
    "tandem_api_producer_poll_errors_total",
    "Errors caught around the events producer's poll (its ack thread logs them and goes on)",
    registry=REGISTRY,
)
IMPRESSIONS = Counter(
    "tandem_api_impressions_total",
    "Answers logged to tandem.impressions (sent) or not, the buffer being full (dropped)",
    ["outcome"],
    registry=REGISTRY,
)
VARIANTS = Counter(
    "tandem_api_variant_answers_total",
    "Answers per experiment variant (control or canary)",
    ["variant"],
    registry=REGISTRY,
)
