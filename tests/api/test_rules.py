"""Business rules on every answer path, against the real Redis: operator-hidden items (gone from
every answer within a second, cached ones included), ``exclude=``, session items by event type,
per-user hides, and the fallback snapshot served while Redis is down."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from redis.asyncio import Redis

from tandem.api.app import create_app
from tandem.api.keys import SERVICE
from tandem.api.rules import HiddenSet, parse_exclude
from tandem.contracts import topics
from tandem.contracts.domain import EVENT_TYPES
from tandem.contracts.exceptions import ConfigError
from tandem.contracts.schemas import Event
from tandem.contracts.session import SessionPolicy, update
from tandem.contracts.settings import Settings, excluded_event_types
from tandem.shell import devservices
from tandem.store.keys import Keys
from tests.api.conftest import put_version
from tests.helpers import read_topic, wait_for

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": "Bearer s3cret-token"}
USERS = [f"u{n}" for n in range(6)]


async def seed(redis: Redis, keys: Keys, users: list[str]) -> None:
    """Every user's best candidate is ``star``; ``star`` is popular too."""
    lists = {u: [("star", 1.0)] + [(f"i{n}", 0.9 - n / 100) for n in range(30)] for u in users}
    await put_version(redis, keys, "u2i", 1, lists)
    await put_version(redis, keys, "i2i", 1, {"i1": [("sim1", 0.9)]})
    popular = [("star", 1.0)] + [(f"p{n}", 0.9 - n / 100) for n in range(10)]
    await put_version(redis, keys, "popular", 1, {"global": popular})


async def answer(
    client: Client, user: str, query: str = "k=5", request_id: str | None = None
) -> dict[str, Any]:
    headers = {"X-Request-ID": request_id} if request_id else {}
    response = await client.get(f"/v1/recommendations/{user}?{query}", headers=headers)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = orjson.loads(await response.read())
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in body["items"]]


async def write_session(redis: Redis, keys: Keys, user: str, events: list[tuple[str, str]]) -> None:
    """What the stream worker writes: the session and an epoch bump."""
    now, state = int(time.time() * 1000), None
    for n, (item, kind) in enumerate(events):
        state = update(state, Event(user, item, kind, now + n, f"e{n}"), None, SessionPolicy())
    assert state is not None
    await redis.set(keys.session(user), state.encode())
    await redis.incr(keys.epoch(user))


async def test_a_hidden_item_leaves_every_answer_within_a_second(
    client: Client, api_settings: Settings, redis: Redis, keys: Keys
) -> None:
    await seed(redis, keys, USERS)
    async with TestClient(TestServer(create_app(api_settings))) as other:  # a second process
        apis = (client, other)
        for user in USERS:  # every answer is cached (and holds the item) before the hide

            async def cached(user: str = user) -> dict[str, Any] | None:
                body = await answer(client, user)
                return body if body["cached"] else None

            assert (await wait_for(cached, 5, f"{user}'s answer cached"))["items"][0] == {
                "item_id": "star",
                "score": 1.0,
                "sources": ["u2i", "popular"],
            }
        for api in apis:
            assert "star" in ids(await answer(api, "u0"))
        started = time.monotonic()
        response = await client.put("/v1/admin/hidden/star", headers=AUTH)
        assert response.status == 200
        assert orjson.loads(await response.read()) == {
            "item_id": "star",
            "hidden": True,
            "changed": True,
        }

        async def gone() -> list[dict[str, Any]] | None:
            bodies = [await answer(api, user) for api in apis for user in USERS]
            return bodies if all("star" not in ids(body) for body in bodies) else None

        bodies = await wait_for(gone, 1.0, "the hidden item to leave every answer")
        took_s = time.monotonic() - started
        assert took_s < 1.0
        assert all(len(body["items"]) == 5 for body in bodies)  # k items still
        again = await other.put("/v1/admin/hidden/star", headers=AUTH)
        assert orjson.loads(await again.read())["changed"] is False

        async def recached() -> dict[str, Any] | None:  # cached again, and still without it
            body = await answer(other, "u1")
            return body if body["cached"] else None

        assert "star" not in ids(await wait_for(recached, 5, "a new cached answer"))
        listed = await client.get("/v1/admin/hidden", headers=AUTH)
        assert orjson.loads(await listed.read()) == {"items": ["star"], "count": 1}
        assert (await client.get("/v1/admin/hidden")).status == 401
        assert (await client.put("/v1/admin/hidden/bad%20id", headers=AUTH)).status == 400
        await client.delete("/v1/admin/hidden/star", headers=AUTH)
        assert ids(await answer(other, "u2"))[0] == "star"


async def test_exclude_leaves_out_the_items_named_and_refuses_bad_lists(
    client: Client, redis: Redis, keys: Keys
) -> None:
    await seed(redis, keys, ["alice"])

    async def cached() -> dict[str, Any] | None:
        body = await answer(client, "alice")
        return body if body["cached"] else None

    await wait_for(cached, 5, "alice's answer cached")
    for _ in range(2):  # never the cached answer, and never cached itself
        body = await answer(client, "alice", "k=5&exclude=star,i0,unknown")
        assert body["cached"] is False
        assert ids(body) == ["i1", "i2", "i3", "i4", "i5"]
    too_many = ",".join(f"x{n}" for n in range(101))
    for bad in ("", "a,,b", "a,", "bad%20id", "a%2Fb", too_many, "x" * 129):
        response = await client.get(f"/v1/recommendations/alice?exclude={bad}")
        assert response.status == 400, bad
        assert orjson.loads(await response.read())["field"] == "exclude"
    assert len(ids(await answer(client, "alice", "k=5&" + "&exclude=i0"))) == 5


async def test_session_items_of_the_configured_types_are_excluded(
    api_settings: Settings, redis: Redis, keys: Keys
) -> None:
    await seed(redis, keys, ["alice"])
    await write_session(redis, keys, "alice", [("i0", "click"), ("i1", "view"), ("i2", "purchase")])
    # Another k for each: the processes share the cache (a deployment has one setting).
    for k, setting, gone in ((10, "click,purchase", {"i0", "i2"}), (11, "all", {"i0", "i1", "i2"})):
        settings = api_settings.model_copy(update={"exclude_seen": setting})
        async with TestClient(TestServer(create_app(settings))) as client:
            got = ids(await answer(client, "alice", f"k={k}"))
            assert not gone & set(got), setting
            assert len(got) == k
            assert {"i0", "i1", "i2"} - gone <= set(got)
    with pytest.raises(ConfigError, match=r"TANDEM_EXCLUDE_SEEN: .*unknown event types bogus"):
        Settings.load(exclude_seen="click,bogus")


async def test_an_item_a_user_hid_never_comes_back_for_them(
    client: Client, redis: Redis, keys: Keys
) -> None:
    await seed(redis, keys, ["alice", "bob"])

    async def cached() -> dict[str, Any] | None:
        body = await answer(client, "alice")
        return body if body["cached"] else None

    assert "i0" in ids(await wait_for(cached, 5, "alice's answer cached"))
    response = await client.put("/v1/users/alice/hidden/i0")
    assert orjson.loads(await response.read()) == {
        "item_id": "i0",
        "hidden": True,
        "changed": True,
        "user_id": "alice",
    }
    assert "i0" not in ids(await answer(client, "alice"))  # the cached answer is not served
    assert "i0" in ids(await answer(client, "bob"))
    await write_session(redis, keys, "alice", [("i0", "view"), ("i1", "click")])  # new session
    for _ in range(2):
        assert "i0" not in ids(await answer(client, "alice", "k=20"))
    for bad, field in (("ali%20ce/hidden/i0", "user_id"), ("alice/hidden/i%200", "item_id")):
        refused = await client.put(f"/v1/users/{bad}")
        assert refused.status == 400
        assert orjson.loads(await refused.read())["field"] == field
    await client.delete("/v1/users/alice/hidden/i0")
    assert "i0" in ids(await answer(client, "alice", "k=20"))


async def test_the_fallback_snapshot_obeys_the_rules_too(
    api_settings: Settings, tmp_path: Any
) -> None:
    own = devservices.start_redis(devservices.free_port(), tmp_path)
    try:
        url = f"redis://127.0.0.1:{own.port}/0"
        settings = api_settings.model_copy(
            update={"redis_url": SecretStr(url), "impressions_sample": 1.0}
        )
        redis = Redis.from_url(url)
        await seed(redis, Keys(settings.key_prefix), ["alice"])
        await redis.aclose()
        async with TestClient(TestServer(create_app(settings))) as client:
            assert ids(await answer(client, "nobody", "k=3")) == ["star", "p0", "p1"]
            assert (await client.put("/v1/admin/hidden/star", headers=AUTH)).status == 200
            service = client.app[SERVICE]

            async def synced() -> bool:  # the process's own refresh, with no request coming
                return "star" in service.hidden.items

            await wait_for(synced, 1.0, "the process to see the hide")
            devservices.stop(own.pid)
            request_id = "fallback" + uuid.uuid4().hex[:8]
            body = await answer(client, "nobody", "k=3&exclude=p1", request_id)
            assert body["degraded"] is True
            assert body["degraded_reason"] == "redis unavailable"
            assert ids(body) == ["p0", "p2", "p3"]

            async def logged() -> list[dict[str, Any]]:  # what the user saw is logged too
                read = await asyncio.to_thread(read_topic, settings, topics.IMPRESSIONS)
                found = [orjson.loads(v) for k, v in read if k == b"nobody"]
                return [r for r in found if r["degraded"] and r["request_id"] == request_id]

            [fallback] = await wait_for(logged, 10, "the fallback answer's impression")
            assert [item["item_id"] for item in fallback["items"]] == ["p0", "p2", "p3"]
    finally:
        devservices.stop(own.pid)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, frozenset()),
        ("i1", frozenset({"i1"})),
        ("i1,i2,i1", frozenset({"i1", "i2"})),
        (",".join(f"x{n}" for n in range(100)), frozenset(f"x{n}" for n in range(100))),
    ],
)
def test_exclude_parses_up_to_100_ids(raw: str | None, expected: frozenset[str]) -> None:
    assert parse_exclude(raw) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", frozenset(EVENT_TYPES)),
        ("none", frozenset()),
        ("", frozenset()),
        ("click, view", frozenset({"click", "view"})),
    ],
)
def test_exclude_seen_setting(text: str, expected: frozenset[str]) -> None:
    assert excluded_event_types(text) == expected


async def test_the_hidden_copy_reloads_once_per_version_and_keeps_the_newest() -> None:
    loads: list[int] = []

    async def load() -> set[str]:
        loads.append(1)
        await asyncio.sleep(0)
        return {f"h{len(loads)}"}

    copy = HiddenSet()
    assert all(await asyncio.gather(*(copy.sync("3", load) for _ in range(5))))
    assert (copy.version, copy.items, len(loads)) == (3, frozenset({"h1"}), 1)
    assert await copy.sync("2", load)  # older than the copy: nothing to do
    assert len(loads) == 1

    async def failing() -> set[str]:
        raise ConnectionError("down")

    assert not await copy.sync("4", failing)  # stale: the caller does not cache its answer
    assert copy.items == frozenset({"h1"})
