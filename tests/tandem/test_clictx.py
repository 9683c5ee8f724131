"""The shared CLI helpers: serving a process's Prometheus metrics."""

from __future__ import annotations

import urllib.request

import tandem.consumers.metrics  # noqa: F401 - registers the materializer's metrics
from tandem.shell import devservices
from tandem.shell.clictx import serve_metrics


def test_serve_metrics_exposes_the_registry() -> None:
    port = devservices.free_port()
    serve_metrics(port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "tandem_materializer_records_applied_total" in text
    serve_metrics(None)  # no port: nothing to serve, no error
