"""Events, admin, health and failure behaviour of the API, against real services."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import TopicPartition
from pydantic import SecretStr
from redis.asyncio import Redis

from tandem.api import models
from tandem.api.app import create_app
from tandem.contracts import topics
from tandem.contracts.kafka import make_consumer
from tandem.contracts.settings import Settings
from tandem.shell import devservices
from tandem.store.keys import Keys
from tests.api.conftest import put_version
from tests.conftest import Services

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": "Bearer s3cret-token"}


async def call(client: Client, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await client.request(method, path, **kwargs)
    return response.status, orjson.loads(await response.read())


def events_for(settings: Settings, user: str) -> list[dict[str, Any]]:
    """Every event of ``user`` on tandem.events (read to the end of each partition)."""
    consumer = make_consumer(settings, "t" + uuid.uuid4().hex[:6], **{"enable.partition.eof": True})
    consumer.assign(
        [TopicPartition(topics.EVENTS, p, 0) for p in range(settings.events_partitions)]
    )
    found, ended = [], 0
    try:
        while ended < settings.events_partitions:
            msg = consumer.poll(5)
            assert msg is not None
            if msg.error():
                ended += 1
            elif msg.key() == user.encode():
                found.append(orjson.loads(msg.value() or b""))
    finally:
        consumer.close()
    return found


async def test_events_validation_and_acknowledgement(
    client: Client, api_settings: Settings
) -> None:
    user = "ev" + uuid.uuid4().hex[:8]
    good = {"user_id": user, "item_id": "i1", "event_type": "click", "device": "mobile"}
    status, body = await call(
        client, "POST", "/v1/events", data=orjson.dumps([good, {**good, "event_type": "teleport"}])
    )
    assert status == 400
    assert (body["field"], body["index"]) == ("event_type", 1)
    status, body = await call(client, "POST", "/v1/events", data=b"{nope")
    assert (status, body["field"]) == (400, "body")
    status, body = await call(client, "POST", "/v1/events", data=orjson.dumps([good] * 1001))
    assert status == 400
    assert events_for(api_settings, user) == []  # nothing of a refused batch was sent
    status, body = await call(
        client, "POST", "/v1/events", data=orjson.dumps([good, {**good, "item_id": "i2"}])
    )
    assert status == 202
    assert body["accepted"] == 2
    sent = events_for(api_settings, user)
    assert [e["item_id"] for e in sent] == ["i1", "i2"]
    assert [e["event_id"] for e in sent] == body["event_ids"]
    too_big = b"[" + b",".join([orjson.dumps({**good, "context": {"x": "y" * 200}})] * 6000) + b"]"
    response = await client.post("/v1/events", data=io.BytesIO(too_big))
    assert response.status == 413


async def test_admin_auth(client: Client, redis: Redis, keys: Keys, settings: Settings) -> None:
    await put_version(redis, keys, "u2i", 1, {"a": [("i", 1.0)]})
    await put_version(redis, keys, "u2i", 2, {"a": [("j", 1.0)]})
    assert (await client.get("/v1/stores")).status == 401
    assert (await client.get("/v1/stores", headers={"Authorization": "Bearer wrong"})).status == 403
    not_utf8 = {"Authorization": "Bearer \xff\xfe"}  # sent as the bytes ff fe: not UTF-8
    assert (await client.get("/v1/stores", headers=not_utf8)).status == 403
    status, body = await call(client, "GET", "/v1/stores", headers=AUTH)
    assert status == 200
    assert {"store": "u2i", "live": "2", "backup": "1"} in body["stores"]
    models.Stores.model_validate(body)
    status, body = await call(client, "GET", "/v1/stores/u2i/versions", headers=AUTH)
    assert [v["version"] for v in body["versions"]] == ["1", "2"]
    models.StoreVersions.model_validate(body)
    assert (await client.post("/v1/stores/u2i/rollback")).status == 401
    status, body = await call(client, "POST", "/v1/stores/u2i/rollback", headers=AUTH)
    assert (status, body["live"], body["rolled_back"]) == (200, "1", "2")
    models.RolledBack.model_validate(body)
    status, body = await call(client, "POST", "/v1/stores/u2i/rollback", headers=AUTH)
    assert status == 409
    assert "no backup" in body["detail"]
    assert (await client.get("/v1/stores/nope/versions", headers=AUTH)).status == 404
    async with TestClient(TestServer(create_app(settings))) as no_admin:
        status, body = await call(no_admin, "GET", "/v1/stores", headers=AUTH)
        assert status == 404
        assert "TANDEM_ADMIN_TOKEN" in body["detail"]


@pytest.mark.parametrize("k", ["0", "201", "x", "²", "٣", "9" * 5000, "", "-1", "1.5"])
async def test_k_is_ascii_digits_from_1_to_200(client: Client, k: str) -> None:
    status, body = await call(client, "GET", f"/v1/recommendations/alice?k={k}")
    assert (status, body["field"]) == (400, "k")


async def test_health_metrics_and_openapi(client: Client, redis: Redis, keys: Keys) -> None:
    assert (await client.get("/healthz")).status == 200
    status, body = await call(client, "GET", "/readyz")
    assert status == 503
    assert body["checks"] == {"redis": True, "live_version": False, "broker": True, "events": True}
    await put_version(redis, keys, "u2i", 1, {"a": [("i", 1.0)]})
    assert (await client.get("/readyz")).status == 200
    await client.get("/v1/recommendations/a")
    text = await (await client.get("/metrics")).text()
    assert (
        'tandem_api_request_seconds_count{outcome="ok",route="/v1/recommendations/{user_id}"}'
        in text
    )
    assert 'tandem_api_live_version_info{store="u2i",version="1"} 1.0' in text
    spec = await (await client.get("/openapi.json")).json()
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    routed = {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert documented == routed


@pytest.fixture
def own_services(
    tmp_path: Path, settings: Settings, services: Services
) -> Iterator[tuple[Settings, devservices.PrivateServices]]:
    """A broker (of the session's kind) and a Redis of this test's own, so it can stop them."""
    kind = "tansu" if services.broker_kind == "tansu" else "auto"
    with devservices.private_services(tmp_path, broker=kind) as own:
        yield (
            Settings.load(
                kafka=own.kafka,
                redis_url=own.redis_url,
                key_prefix=settings.key_prefix,
                api_deadline_ms=100,
                api_redis_timeout_ms=50,
            ),
            own,
        )


async def test_broker_stopped_gives_503(
    own_services: tuple[Settings, devservices.PrivateServices],
) -> None:
    own, owned = own_services
    async with TestClient(TestServer(create_app(own))) as client:
        event = {"user_id": "u1", "item_id": "i1", "event_type": "view"}
        assert (await client.post("/v1/events", data=orjson.dumps(event))).status == 202
        owned.stop_broker()
        started = time.perf_counter()
        ids = [f"e{n}-{uuid.uuid4().hex[:6]}" for n in range(3)]
        batch = [{**event, "event_id": i} for i in ids]
        status, body = await call(client, "POST", "/v1/events", data=orjson.dumps(batch))
        assert status == 503
        assert "not acknowledged" in body["detail"]
        assert "same event_id" in body["detail"]  # a retry is safe: it is counted once
        assert (body["accepted_event_ids"], body["unconfirmed_event_ids"]) == ([], ids)
        assert time.perf_counter() - started < 10


async def test_redis_stopped_degrades_in_time(
    own_services: tuple[Settings, devservices.PrivateServices],
) -> None:
    own, owned = own_services
    keys = Keys(own.key_prefix)
    redis = Redis.from_url(own.redis_url.get_secret_value())
    await put_version(redis, keys, "popular", 1, {"global": [("p1", 0.9), ("p2", 0.8)]})
    await redis.aclose()
    async with TestClient(TestServer(create_app(own))) as client:
        fresh_status, _ = await call(client, "GET", "/v1/recommendations/someone")
        assert fresh_status == 200
        owned.stop_redis()
        for user in ("someone", "else"):
            started = time.perf_counter()
            status, body = await call(client, "GET", f"/v1/recommendations/{user}?k=2")
            assert time.perf_counter() - started < 0.5
            assert status == 200
            assert body["degraded"] is True
            assert [i["item_id"] for i in body["items"]] == ["p1", "p2"]
            models.Recommendations.model_validate(body)  # the snapshot answer keeps the contract
        admin = own.model_copy(update={"admin_token": SecretStr("s3cret-token")})
    async with TestClient(TestServer(create_app(admin))) as operator:
        for method, path in (("GET", "/v1/stores"), ("POST", "/v1/stores/u2i/rollback")):
            response = await operator.request(method, path, headers=AUTH)
            assert response.status == 503, await response.text()  # not a 500
            assert response.headers["Retry-After"] == "1"
        text = await (await operator.get("/metrics")).text()
        assert 'outcome="503",route="/v1/stores"' in text
    async with TestClient(TestServer(create_app(own))) as cold:
        started = time.perf_counter()
        status, body = await call(cold, "GET", "/v1/recommendations/someone")
        assert status == 503
        assert time.perf_counter() - started < 0.5
