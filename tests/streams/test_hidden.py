"""The stream worker applies an operator's hides from ``tandem.hidden`` (real broker and Redis)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tandem.contracts import topics
from tandem.contracts.hidden import encode_hidden
from tandem.contracts.kafka import make_producer
from tandem.contracts.settings import Settings
from tandem.shell import processes
from tandem.store.keys import Keys
from tandem.streams.app import WorkerOptions
from tandem.streams.runner import running
from tests.helpers import read_dlq, wait_for

pytestmark = pytest.mark.integration


def publish(settings: Settings, *records: tuple[bytes, bytes]) -> None:
    producer = make_producer(settings, bulk=False)
    for key, value in records:
        producer.produce(topics.HIDDEN, key=key, value=value)
    assert producer.flush(10) == 0


async def test_hides_from_the_topic_reach_redis_and_bad_records_the_dlq(
    settings: Settings, redis: Redis, keys: Keys
) -> None:
    item, bad = "h" + uuid.uuid4().hex[:10], "bad" + uuid.uuid4().hex[:8]
    options = WorkerOptions(app_id="hid" + uuid.uuid4().hex[:8])
    async with running(settings, options):
        publish(
            settings,
            (item.encode(), encode_hidden(item, True)),
            (bad.encode(), b'{"item": "not an id", "hidden": true}'),
        )

        async def hidden() -> bool:
            return item.encode() in await redis.smembers(keys.hidden())

        await wait_for(hidden, 30, "the hide to reach Redis")
        assert await redis.get(keys.global_epoch())  # cached answers made unreachable
        version = int(await redis.get(keys.hidden_version()) or 0)
        started = time.monotonic()
        publish(settings, (item.encode(), encode_hidden(item, False)))

        async def shown() -> bool:
            return not await hidden()

        await wait_for(shown, 1.0, "the unhide to reach Redis within a second")
        assert time.monotonic() - started < 1.0
        assert int(await redis.get(keys.hidden_version()) or 0) == version + 1

        async def dead_lettered() -> list[tuple[bytes, bytes, bytes]]:
            return [d for d in read_dlq(settings, topics.HIDDEN) if d[0] == bad.encode()]

        (_, reason, _), *_ = await wait_for(dead_lettered, 10, "the bad record in the DLQ")
        assert reason.startswith(b"item: must be")


async def test_many_records_apply_in_order(settings: Settings, redis: Redis, keys: Keys) -> None:
    """A new worker group replays the compacted topic: many records, in batches, in order."""
    tag = uuid.uuid4().hex[:8]
    items = [f"m{tag}{n}" for n in range(300)]
    publish(
        settings,
        *[(item.encode(), encode_hidden(item, True)) for item in items],
        *[(item.encode(), encode_hidden(item, False)) for item in items[::2]],
    )
    expected = {item.encode() for item in items[1::2]}

    async def applied() -> bool:
        return {m for m in await redis.smembers(keys.hidden()) if tag.encode() in m} == expected

    async with running(settings, WorkerOptions(app_id="hm" + uuid.uuid4().hex[:8])):
        await wait_for(applied, 30, "the hides and unhides, in order")


async def test_a_failing_agent_stops_the_worker(
    settings: Settings, redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    """Faust would restart a failed agent past the record it failed on (so losing it) and the
    process would live on: the worker stops instead, and exits non-zero. The fault is a real one:
    the set of hidden items has the wrong type, so every script that changes it fails."""
    await redis.set(keys.hidden(), b"not a set")
    item = "f" + uuid.uuid4().hex[:10]
    options = ["worker", "--app-id", "hf" + uuid.uuid4().hex[:8], "--redis-outage-s", "2"]
    worker = processes.start("worker", options, settings, tmp_path)
    try:
        publish(settings, (item.encode(), encode_hidden(item, True)))
        code = await asyncio.to_thread(worker.proc.wait, 60)
    finally:
        worker.stop()
        await redis.delete(keys.hidden())
    assert code != 0
    log = worker.log_path.read_text()
    assert "the hidden agent failed" in log and "WRONGTYPE" in log, log[-2000:]
