"""The sessions agent driven through Faust's test context (no broker traffic for events)."""

from __future__ import annotations

import gc
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest

from streams.app import StreamWorker, WorkerOptions
from streams.session import SessionState
from tandem.settings import Settings

pytestmark = pytest.mark.integration  # the worker opens a Redis client


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[StreamWorker]:
    built = StreamWorker(settings, WorkerOptions(app_id="tc" + uuid.uuid4().hex[:8]))
    yield built
    await built.redis.aclose()
    # The test context creates the app's consumer, whose thread owns an event loop that only a
    # started-and-stopped app would close; close it here so it does not leak its self-pipe.
    thread = getattr(built.app.consumer, "_thread", None)
    loop = getattr(thread, "thread_loop", None)
    if loop is not None and not loop.is_closed():
        loop.close()
    gc.collect()


async def test_agent_updates_the_table_and_queues_the_mirror(worker: StreamWorker) -> None:
    agent = worker.app.agents["sessions"]
    event = {
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "click",
        "event_id": "e1",
        "context": {"category": "shoes"},
    }
    async with agent.test_context() as context:
        await context.put(key=b"u1", value=orjson.dumps(event))
        await context.put(
            key=b"u1", value=orjson.dumps({**event, "item_id": "i2", "event_id": "e2"})
        )
        await context.put(key=b"u1", value=orjson.dumps(event))  # a re-delivery of e1
    state = SessionState.decode(worker.sessions[b"u1"])
    assert [item for item, _, _ in state.items] == ["i1", "i2"]
    assert state.affinity == {"shoes": pytest.approx(4.0, rel=1e-3)}
    assert SessionState.decode(worker.pending["u1"]) == state
    assert sum(sum(c.values()) for c in worker.trending.pending.values()) == 2  # global only
