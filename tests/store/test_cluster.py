"""Redis Cluster: entity data spreads over every master, and the API rides out a failover.

These tests start a six-node cluster of their own (three masters, three replicas), whatever
Redis the rest of the run uses, so that they can kill a master.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from redis.exceptions import MovedError

from tandem.api.app import create_app
from tandem.contracts.settings import Settings
from tandem.contracts.waiting import wait_for
from tandem.shell import devservices, redis_cluster
from tandem.store.connect import connect, is_cluster
from tandem.store.keys import Keys
from tests.api.conftest import put_version

pytestmark = pytest.mark.integration

USERS = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devservices.PrivateServices]:
    state_dir = tmp_path_factory.mktemp("cluster")
    with devservices.private_services(state_dir, kafka=False, redis_cluster=True) as started:
        yield started


@pytest.fixture
def cluster_settings(settings: Settings, cluster: devservices.PrivateServices) -> Settings:
    return settings.model_copy(
        update={
            "redis_url": Settings.load(redis_url=cluster.redis_url).redis_url,
            "api_deadline_ms": 200,
            "api_redis_timeout_ms": 150,
        }
    )


@pytest.fixture
async def cluster_redis(cluster_settings: Settings) -> AsyncIterator[Redis]:
    client = connect(cluster_settings)
    assert is_cluster(client)
    yield client
    await client.aclose()


async def seed(redis: Redis, keys: Keys) -> None:
    lists = {f"u{n}": [(f"i{n}-{k}", 1.0 - k / 10) for k in range(10)] for n in range(USERS)}
    await put_version(redis, keys, "u2i", 1, lists)
    await put_version(redis, keys, "popular", 1, {"global": [("p1", 0.9), ("p2", 0.8)]})


async def keys_per_master(cluster: devservices.PrivateServices, pattern: str) -> dict[int, int]:
    assert cluster.cluster is not None
    counts = {}
    for port in redis_cluster.masters(cluster.cluster):
        node = Redis(host="127.0.0.1", port=port)
        try:
            counts[port] = len([k async for k in node.scan_iter(match=pattern, count=1000)])
        finally:
            await node.aclose()
    return counts


async def master_of(cluster: devservices.PrivateServices, key: str) -> int:
    """The port of the master holding ``key``."""
    assert cluster.cluster is not None
    for port in redis_cluster.masters(cluster.cluster):
        node = Redis(host="127.0.0.1", port=port)
        try:
            if await node.exists(key):
                return port
        except MovedError:
            continue  # another master owns the key's slot
        finally:
            await node.aclose()
    raise AssertionError(f"no master holds {key}")


async def test_entities_spread_over_every_master(
    cluster: devservices.PrivateServices, cluster_redis: Redis, keys: Keys
) -> None:
    await seed(cluster_redis, keys)
    spread = await keys_per_master(cluster, keys.version_patterns("u2i", 1)[0])
    assert sum(spread.values()) == USERS
    assert len(spread) == 3
    assert all(count > USERS / 6 for count in spread.values()), spread  # about a third each
    meta = await keys_per_master(cluster, f"{keys.meta}:*")
    assert sorted(meta.values())[:2] == [0, 0], meta  # version metadata: one slot, one master


async def test_api_rides_out_a_master_failover(
    cluster: devservices.PrivateServices,
    cluster_settings: Settings,
    cluster_redis: Redis,
    keys: Keys,
) -> None:
    assert cluster.cluster is not None
    await seed(cluster_redis, keys)
    app = create_app(cluster_settings)
    async with TestClient(TestServer(app)) as client:

        async def ask(user: str) -> dict[str, Any]:
            response = await client.get(f"/v1/recommendations/{user}?k=3")
            assert response.status == 200, await response.text()
            body: dict[str, Any] = orjson.loads(await response.read())
            return body

        async def connected() -> bool:
            response = await client.get("/v1/recommendations/u0?k=3")
            return response.status == 200

        # A cold cluster client connects to every master within its first request's Redis
        # budget (150 ms), or that request answers 503; this test is about the failover.
        await wait_for(connected, 10, "a first answer through the cold cluster client")
        answers = [await ask(f"u{n}") for n in range(30)]
        assert not any(a["degraded"] for a in answers)
        victim_user = "u7"
        owner = await master_of(cluster, keys.entity("u2i", 1, victim_user))
        redis_cluster.kill_node(cluster.cluster.node(owner))
        killed = time.monotonic()
        degraded = 0

        async def fresh_again() -> dict[str, Any] | None:
            nonlocal degraded
            body = await ask(victim_user)  # always 200: degraded from the snapshot meanwhile
            degraded += bool(body["degraded"])
            return None if body["degraded"] else body

        recovered = await wait_for(fresh_again, 30, "fresh answers after the failover")
        recovered_s = time.monotonic() - killed
        assert [i["item_id"] for i in recovered["items"]] == ["i7-0", "i7-1", "i7-2"]
        assert recovered_s < 15, f"{degraded} degraded answers over {recovered_s:.1f} s"
        seen: list[tuple[str, str]] = []

        async def all_fresh() -> list[dict[str, Any]] | None:
            """Every user answered fresh (answers are 200 throughout, degraded meanwhile)."""
            others = [await ask(f"u{n}") for n in range(30)]
            seen.extend((a["user_id"], a["degraded_reason"]) for a in others if a["degraded"])
            return None if any(a["degraded"] for a in others) else others

        await wait_for(all_fresh, 15, "every user's answer fresh again after the failover")
        assert len(seen) <= 30, f"degraded after the victim's slot recovered: {seen}"
    restarted = redis_cluster.start_node_again(cluster.cluster.node(owner))
    cluster.cluster = cluster.cluster.with_node(restarted)
    redis_cluster.wait_healthy(cluster.cluster, 30)
