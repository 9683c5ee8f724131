"""Session-scoped real services: a broker (Apache Kafka by default) and a redis-server, on free
ports, started once for the whole run.

``TANDEM_TEST_BROKER`` chooses the broker: ``kafka`` (Apache Kafka, fetched with Maven), ``tansu``
(the embedded fallback), or ``auto`` (the default: Kafka where Java 17+ and Maven exist).
``TANDEM_TEST_REDIS=cluster`` runs on a six-node Redis Cluster instead of one redis-server. Set
``TANDEM_TEST_KAFKA`` and ``TANDEM_TEST_REDIS_URL`` to run against services of your own instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tandem.contracts.kafka import ensure_base_topics
from tandem.contracts.settings import Settings
from tandem.shell import devservices
from tandem.store.connect import connect
from tandem.store.keys import Keys


@dataclass(frozen=True)
class Services:
    """Where the session's broker and Redis listen."""

    kafka: str
    redis_url: str
    broker_kind: str
    state_dir: Path
    started: devservices.PrivateServices | None = None  # what the tests started, if anything


def broker_kind() -> str:
    """The broker kind this run uses (``kafka`` or ``tansu``)."""
    return devservices.choose_broker(os.environ.get("TANDEM_TEST_BROKER", "auto"))


def redis_cluster() -> bool:
    """Whether this run uses a Redis Cluster."""
    return os.environ.get("TANDEM_TEST_REDIS", "standalone") == "cluster"


def pytest_report_header() -> list[str]:
    redis = "Redis Cluster (6 nodes)" if redis_cluster() else "redis-server"
    if os.environ.get("TANDEM_TEST_KAFKA"):
        return [f"broker: yours, at {os.environ['TANDEM_TEST_KAFKA']}", f"redis: {redis}"]
    kind = broker_kind()
    if kind == "kafka":
        from tandem.shell import kafka_broker

        broker = f"Apache Kafka {kafka_broker.KAFKA_VERSION} (KRaft, started by the tests)"
    else:
        broker = f"Tansu {devservices.TANSU_VERSION} (TANDEM_TEST_BROKER=tansu or no Java)"
    return [f"broker: {broker}", f"redis: {redis}"]


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """The real broker and Redis every integration test uses."""
    state_dir = tmp_path_factory.mktemp("services")
    kafka = os.environ.get("TANDEM_TEST_KAFKA")
    redis_url = os.environ.get("TANDEM_TEST_REDIS_URL")
    if kafka is not None and redis_url is not None:
        ensure_base_topics(Settings.load(kafka=kafka, redis_url=redis_url))
        yield Services(kafka, redis_url, "yours", state_dir)
        return
    kind = broker_kind()
    with devservices.private_services(
        state_dir, broker=kind, kafka=kafka is None, redis_cluster=redis_cluster()
    ) as started:
        yield Services(
            kafka or started.kafka,
            redis_url or started.redis_url,
            started.broker_kind,
            state_dir,
            started,
        )


@pytest.fixture
def settings(services: Services, tmp_path: Path) -> Settings:
    """Settings pointing at the session services, with a key prefix of this test's own."""
    return Settings.load(
        kafka=services.kafka,
        redis_url=services.redis_url,
        key_prefix="t" + uuid.uuid4().hex[:12],
        state_dir=tmp_path / "state",
        partitions=3,
        # Every test's answers on one shared tandem.impressions topic would make each test's
        # stream worker read all earlier tests' answers first; the tests of the log ask for it.
        impressions_sample=0.0,
    )


@pytest.fixture
def keys(settings: Settings) -> Keys:
    """The key builder of this test's prefix."""
    return Keys(settings.key_prefix)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    """An asyncio client of the session's Redis."""
    client = connect(settings)
    yield client
    await client.aclose()
