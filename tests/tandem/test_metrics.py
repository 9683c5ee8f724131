"""Each component's metrics in a registry of its own; live versions with every digit; consumer lag,
version age and event freshness."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tandem.api import metrics as api_metrics
from tandem.batch.candidates_io import synthetic_candidates
from tandem.batch.publish import Publisher
from tandem.consumers import lag
from tandem.consumers import metrics as consumer_metrics
from tandem.contracts.metrics import LiveVersionGauge, component_registry, published_s
from tandem.contracts.settings import Settings, StorePolicy
from tandem.shell import processes
from tandem.shell.devservices import free_port
from tandem.streams import metrics as worker_metrics
from tests.helpers import wait_for

VERSION = 20261130164200123  # 17 digits: a float64 would make it 20261130164200124


def names(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}


def test_each_component_exports_its_own_metrics_only() -> None:
    exported = {
        "tandem_api_": names(api_metrics.REGISTRY),
        "tandem_worker_": names(worker_metrics.REGISTRY),
        "tandem_materializer_": names(consumer_metrics.REGISTRY),
    }
    for prefix, found in exported.items():
        ours = {name for name in found if name.startswith("tandem_")}
        assert ours, prefix
        others = {n for n in ours if not n.startswith(prefix) and not n.startswith("tandem_store_")}
        assert others == set(), f"{prefix} registry exports {others}"
        assert "process_cpu_seconds" in found  # the process collectors are still there


def test_a_live_version_keeps_every_digit_and_its_age() -> None:
    assert float(VERSION) != VERSION
    registry = component_registry()
    gauge = LiveVersionGauge("t_live_version", "test", registry)
    gauge.labels("u2i").set(VERSION)
    text = generate_latest(registry).decode()
    assert f't_live_version_info{{store="u2i",version="{VERSION}"}} 1.0' in text
    age_name = "t_live_version_published_timestamp_seconds"
    published = registry.get_sample_value(age_name, {"store": "u2i"})
    assert published == pytest.approx(1796056920.123)  # 2026-11-30T16:42:00.123Z
    gauge.labels("u2i").set(VERSION + 1)
    text = generate_latest(registry).decode()
    assert f'version="{VERSION}"' not in text  # the old version is no longer reported
    assert f't_live_version_info{{store="u2i",version="{VERSION + 1}"}} 1.0' in text
    assert gauge.get("u2i") == VERSION + 1


def test_published_time_of_other_version_ids_is_unknown() -> None:
    assert published_s(42) is None
    assert published_s(20261399000000000) is None  # month 13
    assert published_s(VERSION) == pytest.approx(1796056920.123)


def test_consumer_lag_from_librdkafka_statistics() -> None:
    stats = {
        "topics": {
            "tandem.store.u2i.v1": {
                "partitions": {
                    "0": {"consumer_lag": 5},
                    "1": {"consumer_lag": 7},
                    "2": {"consumer_lag": -1},  # not fetched by this process
                    "-1": {"consumer_lag": 99},  # librdkafka's internal UA partition
                }
            },
            "tandem.store.i2i.v1": {"partitions": {"0": {"consumer_lag": 0}}},
        }
    }
    assert lag.lag_of(stats) == {"tandem.store.u2i.v1": 12, "tandem.store.i2i.v1": 0}
    lag.record_lag(orjson.dumps(stats).decode())
    sample = consumer_metrics.REGISTRY.get_sample_value
    assert sample("tandem_materializer_consumer_lag", {"topic": "tandem.store.u2i.v1"}) == 12
    i2i_only = {"topics": {"tandem.store.i2i.v1": {"partitions": {"0": {"consumer_lag": 0}}}}}
    lag.record_lag(orjson.dumps(i2i_only).decode())
    assert sample("tandem_materializer_consumer_lag", {"topic": "tandem.store.u2i.v1"}) is None
    lag.record_lag("not json")  # logged, ignored


def test_worker_event_freshness() -> None:
    sample = worker_metrics.REGISTRY.get_sample_value
    before = sample("tandem_worker_event_age_seconds_count") or 0
    worker_metrics.applied(int(time.time() * 1000) - 2000)
    assert sample("tandem_worker_event_age_seconds_count") == before + 1
    assert sample("tandem_worker_event_age_seconds_bucket", {"le": "1.0"}) is not None
    assert (sample("tandem_worker_last_event_timestamp_seconds") or 0) > time.time() - 60


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


@pytest.mark.integration
async def test_materialize_process_reports_version_lag_and_nothing_else(
    settings: Settings, tmp_path: Path
) -> None:
    store = "m" + uuid.uuid4().hex[:10]
    policy = StorePolicy(ttl_s=3600, min_coverage=0.5)
    own = settings.model_copy(update={"stores": {store: policy}})
    port = free_port()
    args = ["materialize", "--group", "g" + uuid.uuid4().hex[:8]]
    args += ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
    component = processes.start("materialize", args, own, tmp_path)
    with processes.running([component]):
        with Publisher(own) as publisher:
            pushed = await asyncio.to_thread(
                publisher.publish, store, synthetic_candidates(200, 10, seed=3), partitions=2
            )
        live = f'tandem_store_live_version_info{{store="{store}",version="{pushed.version}"}} 1.0'

        async def reported() -> str | None:
            component.check()
            text = await asyncio.to_thread(scrape, port)
            topic_lag = f'tandem_materializer_consumer_lag{{topic="tandem.store.{store}.v'
            return text if live in text and topic_lag in text else None

        text = await wait_for(reported, 60, "the live version and the lag in the metrics")
    assert "tandem_worker_" not in text
    assert "tandem_api_" not in text
    assert f'tandem_store_live_version_published_timestamp_seconds{{store="{store}"}}' in text


@pytest.mark.integration
async def test_worker_process_reports_its_lag_and_freshness_and_nothing_else(
    settings: Settings, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tandem.contracts.schemas import Event
    from tandem.streams.produce import EventProducer

    port = free_port()
    args = ["worker", "--app-id", "w" + uuid.uuid4().hex[:8], "--metrics-port", str(port)]
    component = processes.start("worker", args, settings, tmp_path)
    now_ms = time.time_ns() // 1_000_000
    users = [f"lag{uuid.uuid4().hex[:6]}{n}" for n in range(12)]

    def send() -> None:
        producer = EventProducer(settings)
        for n, user in enumerate(users):
            producer.send(Event(user, "i1", "view", now_ms, f"{user}-{n}"))
        producer.flush()

    def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
        return [
            (sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        ]

    with processes.running([component]):
        await asyncio.to_thread(send)

        async def caught_up() -> str | None:
            component.check()
            text = await asyncio.to_thread(scrape, port)
            lags = samples(text, "tandem_worker_consumer_lag")
            applied = samples(text, "tandem_worker_events_total")
            done = applied and applied[0][1] >= len(users) and lags
            return text if done and all(value == 0 for _, value in lags) else None

        text = await wait_for(caught_up, 90, "the worker to apply the events and report lag 0")
    lags = samples(text, "tandem_worker_consumer_lag")
    assert {labels["topic"] for labels, _ in lags} == {"tandem.events"}
    ages = samples(text, "tandem_worker_event_age_seconds_count")
    assert ages and ages[0][1] >= len(users)
    assert "tandem_api_" not in text
    assert "tandem_materializer_" not in text


def test_under_serve_workers_an_old_version_reads_0(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the multiprocess directory, a label set cannot be removed: it is set to 0."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent")  # only the check reads it
    registry = component_registry()
    gauge = LiveVersionGauge("m_live_version", "test", registry)
    gauge.labels("i2i").set(VERSION)
    gauge.labels("i2i").set(VERSION + 5)
    sample = registry.get_sample_value
    assert sample("m_live_version_info", {"store": "i2i", "version": str(VERSION)}) == 0
    assert sample("m_live_version_info", {"store": "i2i", "version": str(VERSION + 5)}) == 1
    assert gauge.labels("i2i") is gauge.labels("i2i")
