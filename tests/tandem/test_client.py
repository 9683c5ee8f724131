"""tandem.client against the real API (on the session's broker and Redis), and its retries
against a server that answers 503 and 400 on purpose."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from redis.asyncio import Redis

from tandem.api.app import create_app
from tandem.client import (
    ApiUnavailable,
    AsyncClient,
    Client,
    RequestRefused,
    RetryPolicy,
)
from tandem.contracts.codec import encode
from tandem.contracts.settings import Settings
from tandem.shell.devservices import free_port
from tandem.store.keys import Keys
from tandem.store.lifecycle import Lifecycle
from tandem.store.writer import VersionWriter
from tests.helpers import read_messages

FAST = RetryPolicy(attempts=4, base_s=0.01, max_s=0.05)


@pytest.fixture
async def api(settings: Settings, redis: Redis, keys: Keys) -> AsyncIterator[str]:
    """The real API with a live u2i version, on a port of its own."""
    writer = VersionWriter(redis, keys, "u2i", 7)
    await writer.write([("u1", encode(["i1", "i2", "i3"], [3.0, 2.0, 1.0]))])
    await writer.seal()
    lifecycle = Lifecycle(redis, keys)
    await lifecycle.promote("u2i", 7, expected=await lifecycle.live("u2i"))
    own = settings.model_copy(
        update={
            "admin_token": SecretStr("tok"),
            "api_deadline_ms": 500,
            "api_redis_timeout_ms": 400,
        }
    )
    async with TestServer(create_app(own), port=free_port()) as server:
        yield str(server.make_url("")).rstrip("/")


@pytest.mark.integration
async def test_sync_and_async_clients_against_the_api(api: str, settings: Settings) -> None:
    events = [
        {"user_id": "u1", "item_id": "i2", "event_type": "click"},
        {"user_id": "u1", "item_id": "i3", "event_type": "view", "event_id": "mine-1"},
    ]
    with Client(api, retry=FAST) as client:
        ids = await asyncio.to_thread(client.send_events, events)
        answer = await asyncio.to_thread(client.recommendations, "u1", 2)
        with pytest.raises(RequestRefused) as refused:
            await asyncio.to_thread(client.recommendations, "u1", 500)
    assert len(ids) == 2 and ids[1] == "mine-1" and len(set(ids)) == 2
    assert [item["item_id"] for item in answer["items"]][:2] and len(answer["items"]) <= 2
    assert refused.value.status == 400 and refused.value.field == "k"
    async with AsyncClient(api, retry=FAST, token="tok") as client:
        more = await client.send_events([{"user_id": "u2", "item_id": "i1", "event_type": "like"}])
        again = await client.recommendations("u1", k=3, device="mobile")
        stores = await client.get("/v1/stores")
        with pytest.raises(RequestRefused) as bad_event:
            await client.send_events([{"user_id": "u1", "item_id": "i1", "event_type": "nope"}])
    assert len(again["items"]) == 3
    assert stores  # the admin endpoint answered with the token
    assert bad_event.value.status == 400
    # The ids the client chose are the ids on tandem.events.
    sent = set(ids) | set(more)
    on_topic = set()
    for message in await asyncio.to_thread(read_messages, settings, "tandem.events"):
        # the topic is shared with other tests, some of which write malformed records on purpose
        value = message.value() or b""
        event_id = orjson.loads(value).get("event_id") if _json(value) else None
        if event_id in sent:
            on_topic.add(event_id)
    assert on_topic == sent


def _json(value: bytes) -> bool:
    try:
        return isinstance(orjson.loads(value), dict)
    except orjson.JSONDecodeError:
        return False


class Flaky:
    """A server that answers the first ``failures`` event posts with 503 (accepting the first
    event of each), then 202; every body it received is kept."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.bodies: list[list[dict[str, Any]]] = []

    async def events(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        if len(self.bodies) <= self.failures:
            accepted = [body[0]["event_id"]]
            problem = {"detail": "broker slow", "accepted_event_ids": accepted}
            return web.json_response(problem, status=503, headers={"Retry-After": "0"})
        return web.json_response({"accepted": len(body)}, status=202)


async def serve(handler: Callable[[web.Request], Any]) -> TestServer:
    app = web.Application()
    app.router.add_post("/v1/events", handler)
    app.router.add_get("/v1/recommendations/{user_id}", handler)
    server = TestServer(app, port=free_port())
    await server.start_server()
    return server


async def test_a_retry_resends_only_the_unconfirmed_events_with_the_same_ids() -> None:
    flaky = Flaky(failures=2)
    server = await serve(flaky.events)
    url = str(server.make_url(""))
    events = [{"user_id": f"u{n}", "item_id": "i", "event_type": "view"} for n in range(3)]
    try:
        async with AsyncClient(url, retry=FAST) as client:
            ids = await client.send_events(events)
        sent_async, flaky.bodies, flaky.failures = flaky.bodies, [], 1
        with Client(url, retry=FAST) as sync:
            ids_sync = await asyncio.to_thread(sync.send_events, events)
    finally:
        await server.close()
    for sent, chosen in ((sent_async, ids), (flaky.bodies, ids_sync)):
        first = sent[0]
        assert [e["event_id"] for e in first] == chosen and len(set(chosen)) == 3
        # Each retry sends the events not yet accepted, unchanged (same ids, same ts).
        for before, after in itertools.pairwise(sent):
            assert after == before[1:]
    assert [len(body) for body in sent_async] == [3, 2, 1]
    assert [len(body) for body in flaky.bodies] == [3, 2]
    assert "ts" in sent_async[0][0]


async def test_retries_run_out_with_the_pending_ids() -> None:
    flaky = Flaky(failures=100)
    server = await serve(flaky.events)
    events = [{"user_id": f"u{n}", "item_id": "i", "event_type": "view"} for n in range(5)]
    try:
        async with AsyncClient(str(server.make_url("")), retry=FAST) as client:
            with pytest.raises(ApiUnavailable) as failed:
                await client.send_events(events)
    finally:
        await server.close()
    assert len(flaky.bodies) == FAST.attempts
    assert [len(body) for body in flaky.bodies] == [5, 4, 3, 2]
    assert failed.value.pending_event_ids == [e["event_id"] for e in flaky.bodies[-1][1:]]
    assert "HTTP 503: broker slow" in str(failed.value)


async def test_no_answer_is_retried_then_reported() -> None:
    port = free_port()  # nothing listens there
    client = Client(f"http://127.0.0.1:{port}", retry=FAST, timeout_s=1)
    with client, pytest.raises(ApiUnavailable, match="failed 4 times"):
        await asyncio.to_thread(client.recommendations, "u1")
    async with AsyncClient(f"http://127.0.0.1:{port}", retry=FAST, timeout_s=1) as aclient:
        with pytest.raises(ApiUnavailable, match="no answer"):
            await aclient.recommendations("u1")


def test_retry_after_is_honoured_within_the_bound() -> None:
    policy = RetryPolicy(attempts=3, base_s=0.1, max_s=2.0)
    assert policy.delay_s(1, "1") == 1.0
    assert policy.delay_s(1, "30") == 2.0
    assert 0 <= policy.delay_s(5) <= 2.0
