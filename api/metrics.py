"""Prometheus metrics of the API (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)

REQUESTS = Histogram(
    "tandem_api_request_seconds", "Request latency", ["route", "outcome"], buckets=LATENCY_BUCKETS
)
DEGRADED = Counter(
    "tandem_api_degraded_total", "Answers in batch order or from the snapshot", ["reason"]
)
CACHE_HITS = Counter("tandem_api_cache_hits_total", "Answers served from the response cache")
RERANK = Histogram(
    "tandem_api_rerank_seconds", "Feature building and scoring", buckets=LATENCY_BUCKETS
)
LIVE_VERSION = Gauge(
    "tandem_api_live_version",
    "Live version seen per store",
    ["store"],
    multiprocess_mode="max",  # under serve --workers: the newest any process has seen
)
EVENTS = Counter("tandem_api_events_total", "Events acknowledged by the broker")
PRODUCER_RECREATIONS = Counter(
    "tandem_api_producer_recreations_total",
    "Events producers replaced after a fatal error (e.g. UNKNOWN_PRODUCER_ID, fenced)",
)
PRODUCER_POLL_ERRORS = Counter(
    "tandem_api_producer_poll_errors_total",
    "Errors caught around the events producer's poll (its ack thread logs them and goes on)",
)
