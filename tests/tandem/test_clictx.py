"""The shared CLI helpers: serving a component's Prometheus metrics."""

from __future__ import annotations

import urllib.request

import pytest

from tandem.consumers.metrics import REGISTRY
from tandem.contracts.exceptions import ConfigError
from tandem.shell import devservices
from tandem.shell.clictx import serve_metrics


def test_serve_metrics_exposes_the_components_registry() -> None:
    port = devservices.free_port()
    serve_metrics(port, "127.0.0.1", REGISTRY)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "tandem_materializer_records_applied_total" in text
    assert "tandem_worker_" not in text
    serve_metrics(None)  # no port: nothing to serve, no error
    with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
        serve_metrics(port, "127.0.0.1", REGISTRY)  # taken by the first
