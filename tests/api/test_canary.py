"""Canary versions through the API: bucketing, variants in answers, impressions, the guard."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from click.testing import CliRunner
from redis.asyncio import Redis

from tandem.contracts import topics
from tandem.contracts.domain import U2I
from tandem.contracts.kafka import make_producer
from tandem.contracts.settings import GuardPolicy, Settings
from tandem.contracts.versions import State
from tandem.shell.cli import main
from tandem.shell.processes import environment
from tandem.store.admin import VersionAdmin
from tandem.store.experiments import CANARY, CONTROL, bucket
from tandem.store.guards import Guard
from tandem.store.keys import Keys
from tandem.store.registry import Registry
from tests.api.conftest import put_version
from tests.helpers import read_messages, wait_for

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
ADMIN = {"Authorization": "Bearer s3cret-token"}
USERS = 400
SHARE = 0.3


async def two_versions(redis: Redis, keys: Keys, users: list[str]) -> tuple[int, int]:
    """A live u2i version recommending ``a*`` items and a validated one recommending ``b*``."""
    live, canary = (int(uuid.uuid4().int % 10**15) + n for n in (10**16, 2 * 10**16))
    for version, prefix, promote in ((live, "a", True), (canary, "b", False)):
        lists = {u: [(f"{prefix}{i}", 1.0 - i / 10) for i in range(5)] for u in users}
        await put_version(redis, keys, U2I, version, lists, promote=promote)
    await Registry(redis, keys).update(U2I, canary, State.INGESTED)
    return live, canary


@pytest.fixture
def api_settings(api_settings: Settings) -> Settings:
    """The API's settings with every answer logged (the suite's default logs none)."""
    return api_settings.model_copy(update={"impressions_sample": 1.0})


async def test_canary_serves_a_stable_share_and_never_mixes_versions(
    client: Client, redis: Redis, keys: Keys, api_settings: Settings
) -> None:
    users = ["u" + uuid.uuid4().hex[:10] for _ in range(USERS)]
    live, canary = await two_versions(redis, keys, users)
    refused = await client.post(
        "/v1/stores/u2i/canary", json={"version": str(live), "share": SHARE}, headers=ADMIN
    )
    assert refused.status == 409, await refused.text()  # the live version cannot be a canary
    started = await client.post(
        "/v1/stores/u2i/canary", json={"version": str(canary), "share": SHARE}, headers=ADMIN
    )
    assert started.status == 200, await started.text()
    variants: dict[str, str] = {}
    for user in users:
        answer = await (await client.get(f"/v1/recommendations/{user}?k=5")).json()
        expected = CANARY if bucket(U2I, canary, user) < SHARE * 10_000 else CONTROL
        assert answer["variant"] == expected
        served = canary if expected == CANARY else live
        assert answer["versions"]["u2i"] == str(served)
        prefix = "b" if expected == CANARY else "a"
        assert {i["item_id"][0] for i in answer["items"]} == {prefix}  # never a mix
        variants[user] = answer["variant"]
    share = sum(v == CANARY for v in variants.values()) / USERS
    assert abs(share - SHARE) < 0.08, share
    for user in users[:40]:  # again, from the cache: the same variant
        answer = await (await client.get(f"/v1/recommendations/{user}?k=5")).json()
        assert answer["cached"] and answer["variant"] == variants[user]

    # Every answer went to tandem.impressions, with its variant, versions and probability.
    mine = set(users)

    def logged() -> list[dict[str, Any]]:
        return [
            orjson.loads(message.value() or b"{}")
            for message in read_messages(api_settings, topics.IMPRESSIONS)
            if (message.key() or b"").decode() in mine
        ]

    async def all_logged() -> list[dict[str, Any]] | None:
        found = await asyncio.to_thread(logged)
        return found if len(found) >= USERS + 40 else None

    impressions = await wait_for(all_logged, timeout_s=20, what="every impression")
    assert len({r["request_id"] for r in impressions}) == len(impressions)
    first = next(r for r in impressions if r["variant"] == CANARY)
    assert first["versions"]["u2i"] == str(canary)
    assert first["probability"] == pytest.approx(SHARE)
    assert first["items"][0]["position"] == 0 and "features" in first["items"][0]

    promoted = await client.post("/v1/stores/u2i/canary/promote", headers=ADMIN)
    assert promoted.status == 200, await promoted.text()
    assert await redis.get(keys.live(U2I)) == str(canary).encode()
    assert await redis.get(keys.canary(U2I)) is None
    answer = await (await client.get(f"/v1/recommendations/{users[0]}?k=5")).json()
    assert answer["variant"] == CONTROL and answer["versions"]["u2i"] == str(canary)


class Admin(VersionAdmin):
    """The version admin with its own producer of lifecycle records."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.producer = make_producer(settings, bulk=False)
        super().__init__(settings, redis, self.producer)

    def flush(self) -> None:
        self.producer.flush(10)


async def with_two_versions(redis: Redis, keys: Keys, settings: Settings) -> tuple[Admin, int, int]:
    """An admin, and :func:`two_versions` for a few users."""
    users = ["u" + uuid.uuid4().hex[:10] for _ in range(10)]
    live, canary = await two_versions(redis, keys, users)
    return Admin(settings, redis), live, canary


async def test_the_guard_aborts_a_worse_canary_and_says_why(
    redis: Redis, keys: Keys, settings: Settings
) -> None:
    admin, live, canary = await with_two_versions(redis, keys, settings)
    started = await asyncio.to_thread(  # the operator's command (it runs its own event loop)
        CliRunner().invoke,
        main,
        ["versions", "canary", "u2i", str(canary), "--share", "50"],
        env=environment(settings),
    )
    assert started.exit_code == 0, started.output
    assert f"v{canary}: canary, served to 50.00% of users" in started.output
    guard = Guard(admin, {U2I: GuardPolicy(min_impressions=100, promote_after=0)})
    counters = keys.experiment(U2I, canary)
    await redis.hset(counters, mapping={"control:impressions": 50, "canary:impressions": 50})
    assert [o.decision.action for o in await guard.check()] == ["wait"]  # sample too small
    await redis.hset(
        counters,
        mapping={
            "control:impressions": 2000,
            "control:click": 300,
            "canary:impressions": 2000,
            "canary:click": 180,
        },
    )
    (outcome,) = await guard.check()
    assert outcome.decision.action == "abort"
    info = await admin.show(U2I, canary)
    assert info.state is State.REJECTED
    assert any(r.startswith("guard: ctr") for r in info.reasons), info.reasons
    assert info.metadata["canary"]["guard"]["action"] == "abort"
    assert await redis.get(keys.canary(U2I)) is None
    assert await redis.get(keys.live(U2I)) == str(live).encode()
    admin.flush()
    announced = [
        orjson.loads(m.value() or b"{}")
        for m in read_messages(settings, topics.VERSIONS)
        if m.key() == U2I.encode()
    ]
    mine = [r for r in announced if r["version"] == canary]
    assert [r["state"] for r in mine] == ["canary", "rejected"]
    assert mine[-1]["canary"] == "aborted" and mine[-1]["reasons"] == list(info.reasons)


async def test_the_guard_rolls_back_a_live_version_that_degrades(
    redis: Redis, keys: Keys, settings: Settings
) -> None:
    admin, first, second = await with_two_versions(redis, keys, settings)
    await admin.lifecycle.promote(U2I, second, expected=first)
    guard = Guard(admin, {U2I: GuardPolicy(min_impressions=100, max_degraded_share=0.05)})
    online = keys.online(U2I)
    await redis.hset(online, mapping={f"{second}:control:impressions": 90})
    assert await guard.check() == [] and await admin.lifecycle.live(U2I) == second  # too few
    await redis.hset(online, mapping={f"{second}:control:impressions": 400})
    await guard.check()
    assert await admin.lifecycle.live(U2I) == second  # healthy
    await redis.hset(
        online, mapping={f"{second}:control:impressions": 800, f"{second}:control:degraded": 90}
    )
    await guard.check()  # 22% of the last 400 answers degraded
    assert await admin.lifecycle.live(U2I) == first
    info = await admin.show(U2I, second)
    assert info.state is State.ROLLED_BACK
    assert info.reasons and info.reasons[0].startswith("guard: degraded share 0.225"), info.reasons


async def test_a_shadow_canary_is_computed_and_compared_but_never_served(
    client: Client, redis: Redis, keys: Keys, api_settings: Settings
) -> None:
    users = ["u" + uuid.uuid4().hex[:10] for _ in range(30)]
    live, canary = await two_versions(redis, keys, users)
    body = {"version": str(canary), "share": 1, "shadow": True}
    started = await client.post("/v1/stores/u2i/canary", json=body, headers=ADMIN)
    assert started.status == 200, await started.text()
    for user in users:
        answer = await (await client.get(f"/v1/recommendations/{user}?k=5")).json()
        assert answer["variant"] == CONTROL and answer["versions"]["u2i"] == str(live)
        assert {i["item_id"][0] for i in answer["items"]} == {"a"}
    experiments = Admin(api_settings, redis).experiments

    async def all_shadowed() -> dict[str, float | None] | None:
        found = await experiments.shadow(U2I, canary)
        return found if found["answers"] == len(users) else None

    shadow = await wait_for(all_shadowed, timeout_s=10, what="every shadow answer")
    assert shadow["overlap"] == 0.0  # the canary recommends other items
    assert shadow["latency_ms"] is not None and shadow["p99_ms"] is not None
    env = environment(api_settings)
    outputs = []
    for args in (["experiments", "show", "u2i"], ["experiments", "show", "u2i", "--json"]):
        shown = await asyncio.to_thread(CliRunner().invoke, main, args, env=env)
        assert shown.exit_code == 0, shown.output
        outputs.append(shown.output)
    assert f"canary v{canary} at 100.00%" in outputs[0]
    assert f"shadow: {len(users)} answers, overlap with served 0.0" in outputs[0]
    (body,) = orjson.loads(outputs[1])
    assert body["canary"] == {"version": str(canary), "share": 1.0, "shadow": True}
    assert body["shadow"]["answers"] == len(users)
    assert body["variants"]["canary"]["impressions"] == 0  # a shadow serves nobody
