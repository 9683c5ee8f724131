"""What every component's Prometheus metrics share: a registry of its own (so a process exports
its component's metrics and no other's) and a live-version gauge that keeps every digit.

Version ids are 17-digit numbers (``YYYYMMDDhhmmss`` + milliseconds) and a Prometheus sample is a
float64, exact only up to 2**53 (16 digits): the version is therefore a *label* of an info-style
gauge (value 1 for the version in service), and its publication time a separate gauge from which
dashboards and alerts compute the version's age (``time() - …_published_timestamp_seconds``).
"""

from __future__ import annotations

import calendar
import os
import threading
import time

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector


def component_registry() -> CollectorRegistry:
    """A registry for one component, with the process, platform and GC collectors the default
    registry would have had."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def published_s(version: int) -> float | None:
    """When a version id of the form ``YYYYMMDDhhmmssmmm`` (UTC) was allocated, in epoch seconds;
    None for an id of another form (``tandem publish --version`` accepts any)."""
    digits = str(version)
    if len(digits) != 17:
        return None
    try:
        parsed = time.strptime(digits[:14], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return calendar.timegm(parsed) + int(digits[14:]) / 1000


class _StoreVersion:
    """``gauge.labels(store)``: what :meth:`set` acts on."""

    def __init__(self, owner: LiveVersionGauge, store: str) -> None:
        self._owner, self._store = owner, store

    def set(self, version: int) -> None:
        self._owner.set(self._store, version)


class LiveVersionGauge:
    """The live version of each store, exact: ``NAME_info{store, version} 1`` and
    ``NAME_published_timestamp_seconds{store}``. ``labels(store).set(version)`` as on a Gauge."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.info = Gauge(
            f"{name}_info",
            f"{documentation} (the version is the label; 1 while in service)",
            ["store", "version"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.published = Gauge(
            f"{name}_published_timestamp_seconds",
            f"{documentation}: when it was published (its age is time() minus this)",
            ["store"],
            registry=registry,
            multiprocess_mode="max",
        )
        self._current: dict[str, int] = {}
        self._children: dict[str, _StoreVersion] = {}
        self._lock = threading.Lock()

    def labels(self, store: str) -> _StoreVersion:
        """What ``set(version)`` applies to (made once per store: the API calls this per answer)."""
        child = self._children.get(store)
        if child is None:
            child = self._children[store] = _StoreVersion(self, store)
        return child

    def get(self, store: str) -> int | None:
        """The version last set for ``store``."""
        return self._current.get(store)

    def set(self, store: str, version: int) -> None:
        """Mark ``version`` in service for ``store`` (cheap when it already is)."""
        if self._current.get(store) == version:
            return
        with self._lock:
            old = self._current.get(store)
            if old == version:
                return
            if old is not None:
                if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
                    # Values live in files shared by the processes: a label set cannot be removed.
                    self.info.labels(store, str(old)).set(0)
                else:
                    self.info.remove(store, str(old))
            self.info.labels(store, str(version)).set(1)
            published = published_s(version)
            if published is not None:
                self.published.labels(store).set(published)
            self._current[store] = version
