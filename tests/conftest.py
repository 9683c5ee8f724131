"""Session-scoped real services: a Tansu broker and a redis-server on free ports.

Set TANDEM_TEST_KAFKA and TANDEM_TEST_REDIS_URL to run the suite against services of your own
(Apache Kafka from docker/compose.yaml, say) instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from store.connect import connect
from store.keys import Keys
from tandem import devservices
from tandem.kafka import ensure_base_topics
from tandem.settings import Settings


@dataclass(frozen=True)
class Services:
    """Where the session's broker and Redis listen, and how to stop them."""

    kafka: str
    redis_url: str
    redis_pid: int | None
    broker_pid: int | None
    state_dir: Path


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """The real broker and Redis every integration test uses."""
    state_dir = tmp_path_factory.mktemp("services")
    kafka = os.environ.get("TANDEM_TEST_KAFKA")
    redis_url = os.environ.get("TANDEM_TEST_REDIS_URL")
    started = []
    if kafka is None:
        broker = devservices.start_broker(devservices.free_port(), state_dir)
        started.append(broker.pid)
        kafka = f"127.0.0.1:{broker.port}"
    if redis_url is None:
        redis = devservices.start_redis(devservices.free_port(), state_dir)
        started.append(redis.pid)
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
    base = Settings.load(kafka=kafka, redis_url=redis_url)
    ensure_base_topics(base)
    yield Services(
        kafka,
        redis_url,
        redis_pid=started[-1] if len(started) > 1 else None,
        broker_pid=started[0] if started else None,
        state_dir=state_dir,
    )
    for pid in started:
        devservices.stop(pid)


@pytest.fixture
def settings(services: Services, tmp_path: Path) -> Settings:
    """Settings pointing at the session services, with a key prefix of this test's own."""
    return Settings.load(
        kafka=services.kafka,
        redis_url=services.redis_url,
        key_prefix="t" + uuid.uuid4().hex[:12],
        state_dir=tmp_path / "state",
        partitions=3,
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
