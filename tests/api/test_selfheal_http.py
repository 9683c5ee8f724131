"""Small faults of the HTTP surface, against the real broker and Redis: a bearer token that is not
UTF-8, a bug in a handler, and Redis going away under the admin endpoints and /readyz (and coming
back without restarting the API)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import KafkaError, KafkaException
from redis.asyncio import Redis

from tandem.api.app import create_app
from tandem.api.metrics import REGISTRY
from tandem.api.service import RecommendationService
from tandem.contracts.settings import Settings
from tandem.contracts.waiting import wait_for
from tandem.shell import devservices
from tandem.store.admin import VersionAdmin
from tandem.store.keys import Keys
from tests.api.conftest import put_version

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": "Bearer s3cret-token"}


def answers(route: str, outcome: str) -> float:
    """Requests of ``route`` answered with ``outcome`` so far (this process)."""
    labels = {"route": route, "outcome": outcome}
    return REGISTRY.get_sample_value("tandem_api_request_seconds_count", labels) or 0.0


def errors() -> float:
    """Requests of any route counted as ``outcome="error"`` so far (this process)."""
    return sum(
        s.value
        for metric in REGISTRY.collect()
        for s in metric.samples
        if s.name == "tandem_api_request_seconds_count" and s.labels.get("outcome") == "error"
    )


async def raw_get(client: Client, path: str, header: bytes) -> tuple[int, dict[str, str], Any]:
    """GET ``path`` with one raw header line (bytes as given, whatever their encoding)."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            + header
            + b"\r\n\r\n"
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return status, headers, orjson.loads(body)


async def test_a_bearer_token_that_is_not_utf8_is_401_with_a_challenge(client: Client) -> None:
    errors_before, unauthorized = errors(), answers("/v1/stores", "401")
    status, headers, body = await raw_get(client, "/v1/stores", b"Authorization: Bearer \xff\xfe")
    assert status == 401, body
    assert headers["www-authenticate"] == 'Bearer realm="tandem-admin", error="invalid_token"'
    assert "not UTF-8" in body["detail"]
    response = await client.get("/v1/stores")  # no token at all
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tandem-admin"'
    status, headers, _ = await raw_get(client, "/v1/stores", b"Authorization: Bearer caf\xc3\xa9")
    assert status == 403  # UTF-8, just wrong
    assert "www-authenticate" not in headers
    assert (await client.get("/v1/stores", headers=AUTH)).status == 200
    assert answers("/v1/stores", "401") == unauthorized + 2
    assert errors() == errors_before


async def test_a_bug_in_a_handler_is_a_json_500_counted_as_error(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(RecommendationService, "recommend", broken)
    route = "/v1/recommendations/{user_id}"
    before = {outcome: answers(route, outcome) for outcome in ("error", "ok", "500")}
    response = await client.get("/v1/recommendations/someone")
    assert response.status == 500
    assert response.content_type == "application/problem+json"
    assert "internal error" in (await response.json(content_type=None))["detail"]
    after = {outcome: answers(route, outcome) for outcome in before}
    assert after == {**before, "error": before["error"] + 1}
    text = await (await client.get("/metrics")).text()  # and so /metrics says
    assert f'tandem_api_request_seconds_count{{outcome="error",route="{route}"}}' in text


async def test_a_broker_refusing_a_lifecycle_record_is_a_503(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(*_args: object) -> None:
        raise KafkaException(KafkaError(KafkaError._FATAL, "Local: Fatal error"))

    monkeypatch.setattr(VersionAdmin, "rollback", refused)
    response = await client.post("/v1/stores/u2i/rollback", headers=AUTH)
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"] == "1"
    assert "broker" in (await response.json(content_type=None))["detail"]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[devservices.Started]:
    """A redis-server of this test's own, so it can be stopped and started again."""
    started = devservices.start_redis(devservices.free_port(), tmp_path)
    yield started
    devservices.stop(started.pid)


async def test_redis_down_gives_503_on_admin_endpoints_and_readyz_until_it_is_back(
    api_settings: Settings, own_redis: devservices.Started, tmp_path: Path
) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    own = api_settings.model_copy(update={"redis_url": Settings.load(redis_url=url).redis_url})
    keys = Keys(own.key_prefix)

    async def seed() -> None:
        redis = Redis.from_url(url)
        try:
            await put_version(redis, keys, "u2i", 1, {"a": [("i", 1.0)]})
        finally:
            await redis.aclose()

    async def readyz() -> tuple[int, dict[str, bool]]:
        response = await client.get("/readyz")
        return response.status, orjson.loads(await response.read())["checks"]

    async def ready() -> bool:
        return (await readyz())[0] == 200

    await seed()
    errors_before = errors()
    async with TestClient(TestServer(create_app(own))) as client:
        await wait_for(ready, 30, "/readyz to answer 200")
        devservices.stop(own_redis.pid)
        for method, path in (
            ("GET", "/v1/stores"),
            ("GET", "/v1/stores/u2i/versions"),
            ("POST", "/v1/stores/u2i/rollback"),
        ):
            response = await client.request(method, path, headers=AUTH)
            assert response.status == 503, await response.text()
            assert response.headers["Retry-After"] == "1"
            assert "Redis is unreachable" in (await response.json(content_type=None))["detail"]
        status, checks = await readyz()
        assert status == 503
        assert checks == {"redis": False, "live_version": False, "broker": True, "events": True}
        assert answers("/v1/stores/{store}/versions", "503") >= 1
        assert errors() == errors_before
        again = devservices.start_redis(own_redis.port, tmp_path)
        try:
            await seed()  # the restarted server has no data
            await wait_for(ready, 30, "/readyz to answer 200 once Redis is back")
            assert (await client.get("/v1/stores", headers=AUTH)).status == 200
        finally:
            devservices.stop(again.pid)
