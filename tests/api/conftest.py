"""An in-process API on the session's broker and Redis, and helpers to give it data."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from redis.asyncio import Redis

from tandem.api.app import create_app
from tandem.contracts.codec import encode
from tandem.contracts.settings import Settings
from tandem.store.keys import Keys
from tandem.store.lifecycle import Lifecycle
from tandem.store.writer import VersionWriter


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    """Settings with an admin token and a generous deadline (CI machines are slow)."""
    return settings.model_copy(
        update={
            "admin_token": SecretStr("s3cret-token"),
            "api_deadline_ms": 500,
            "api_redis_timeout_ms": 400,
        }
    )


@pytest.fixture
async def client(api_settings: Settings) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """A test client of the API."""
    async with TestClient(TestServer(create_app(api_settings))) as test_client:
        yield test_client


async def put_version(
    redis: Redis,
    keys: Keys,
    store: str,
    version: int,
    lists: dict[str, list[tuple[str, float]]],
    *,
    promote: bool = True,
) -> None:
    """Write one version of ``store`` directly (no Kafka) and make it live."""
    writer = VersionWriter(redis, keys, store, version)
    await writer.write(
        [
            (entity, encode([i for i, _ in items], [s for _, s in items]))
            for entity, items in lists.items()
        ]
    )
    await writer.seal()
    if promote:
        lifecycle = Lifecycle(redis, keys)
        await lifecycle.promote(store, version, expected=await lifecycle.live(store))
