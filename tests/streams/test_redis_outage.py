"""The stream worker and Redis going away: a short outage is ridden out with nothing lost; a
long one makes the worker exit non-zero (never alive and idle)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

import tandem.streams.metrics  # noqa: F401 - registers the worker's counters
from tandem.contracts.schemas import Event
from tandem.contracts.session import SessionState
from tandem.contracts.settings import Settings
from tandem.shell import devservices, processes
from tandem.store.connect import connect
from tandem.store.keys import Keys
from tandem.streams.app import WorkerOptions
from tandem.streams.metrics import REGISTRY
from tandem.streams.produce import EventProducer
from tandem.streams.runner import running
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[devservices.Started]:
    """A redis-server of this test's own, so it can be stopped and started again."""
    started = devservices.start_redis(devservices.free_port(), tmp_path)
    yield started
    devservices.stop(started.pid)


def with_redis(settings: Settings, redis: devservices.Started) -> Settings:
    url = Settings.load(redis_url=f"redis://127.0.0.1:{redis.port}/0").redis_url
    return settings.model_copy(update={"redis_url": url})


def retries() -> float:
    """Redis writes the worker retried so far (this process's counter)."""
    return REGISTRY.get_sample_value("tandem_worker_redis_retries_total") or 0.0


def send(settings: Settings, *events: Event) -> None:
    producer = EventProducer(settings)
    for event in events:
        producer.send(event)
    producer.flush()


async def session_items(redis: Redis, keys: Keys, user: str) -> list[str]:
    raw = await redis.get(keys.session(user))
    if not isinstance(raw, bytes):
        return []
    return [item for item, _, _ in SessionState.decode(raw).items]


async def test_a_redis_restart_is_ridden_out_and_nothing_is_lost(
    settings: Settings, own_redis: devservices.Started, tmp_path: Path
) -> None:
    own = with_redis(settings, own_redis)
    keys = Keys(own.key_prefix)
    user, t0 = "o" + uuid.uuid4().hex[:8], time.time_ns() // 1_000_000
    options = WorkerOptions(app_id="o" + uuid.uuid4().hex[:8], redis_outage_s=60)
    retries_before = retries()
    async with running(own, options):
        redis = connect(own)
        send(own, Event(user, "i1", "view", t0, "o1"))
        await wait_for(lambda: session_items(redis, keys, user), 30, "the first event")
        await redis.aclose()
        devservices.stop(own_redis.pid)
        send(own, Event(user, "i2", "view", t0 + 1, "o2"))  # applied while Redis is down

        async def retrying() -> bool:
            return retries() > retries_before

        await wait_for(retrying, 30, "the worker to retry its Redis write")
        again = devservices.start_redis(own_redis.port, tmp_path)
        redis = connect(own)
        try:

            async def both() -> list[str] | None:
                items = await session_items(redis, keys, user)
                return items if items == ["i1", "i2"] else None

            await wait_for(both, 30, "the session written after Redis came back")
        finally:
            await redis.aclose()
    devservices.stop(again.pid)


async def test_a_long_redis_outage_makes_the_worker_exit_non_zero(
    settings: Settings, own_redis: devservices.Started, tmp_path: Path
) -> None:
    own = with_redis(settings, own_redis)
    worker = processes.start(
        "worker",
        ["worker", "--app-id", "x" + uuid.uuid4().hex[:8], "--redis-outage-s", "3"],
        own,
        tmp_path,
    )
    user, t0 = "x" + uuid.uuid4().hex[:8], time.time_ns() // 1_000_000
    try:
        redis = connect(own)
        try:
            send(own, Event(user, "i1", "view", t0, "x1"))
            keys = Keys(own.key_prefix)
            await wait_for(lambda: session_items(redis, keys, user), 60, "the worker to run")
        finally:
            await redis.aclose()
        devservices.stop(own_redis.pid)
        send(own, Event(user, "i2", "view", t0 + 1, "x2"))
        code = await asyncio.to_thread(worker.proc.wait, 60)
    finally:
        worker.stop()
    assert code != 0
    log = worker.log_path.read_text()
    assert "Redis did not take" in log and "for 3 s" in log  # whichever write gave up first
