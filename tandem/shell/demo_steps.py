"""The steps of ``tandem demo`` once the materializer, the worker and the API run: what a product
page, an event producer and an operator do, each through the API or the operator's commands."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from tandem.contracts.settings import Settings
from tandem.contracts.waiting import wait_for
from tandem.shell import processes
from tandem.shell.story import Story, percentiles

if TYPE_CHECKING:
    from tandem.batch.pipeline import BatchOutput

RATE = 100  # requests per second of the latency measurement
REQUESTS = 600
START_TIMEOUT_S = 120.0
STEP_TIMEOUT_S = 60.0
FRESH_TRIES = 20


@dataclass(frozen=True)
class Demo:
    """What the steps share."""

    settings: Settings
    url: str
    token: str
    story: Story

    @property
    def auth(self) -> dict[str, str]:
        """The admin header."""
        return {"Authorization": f"Bearer {self.token}"}


async def ask_all(
    demo: Demo, users: list[str], rate: float, requests: int
) -> tuple[list[float], list[float], int]:
    """Open-loop load: ``requests`` recommendation requests at ``rate`` per second."""
    import aiohttp
    import orjson

    rng = random.Random(3)
    client_ms: list[float] = []
    server_ms: list[float] = []
    degraded = 0

    async def one(http: aiohttp.ClientSession, at: float) -> None:
        nonlocal degraded
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        sent = time.perf_counter()
        user = users[rng.randrange(len(users))]
        async with http.get(f"{demo.url}/v1/recommendations/{user}?k=20") as response:
            body: dict[str, Any] = orjson.loads(await response.read())
        client_ms.append((time.perf_counter() - sent) * 1000)
        server_ms.append(float(body["took_ms"]))
        degraded += bool(body["degraded"])

    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:
        start = time.perf_counter() + 0.05
        await asyncio.gather(*(one(http, start + n / rate) for n in range(requests)))
    return client_ms, server_ms, degraded


async def walkthrough(
    demo: Demo, output: BatchOutput, components: list[processes.Component]
) -> None:
    """Every step after the components started."""
    story = demo.story
    async with aiohttp.ClientSession() as http:
        story.step("waiting for the versions to go live and the API to be ready")

        async def all_live() -> dict[str, int] | None:
            for component in components:
                component.check()
            try:
                live = await _live(demo, http)
                ready = await _status(demo, http, "GET", "/readyz")
            except aiohttp.ClientError:
                return None  # the API is still starting
            found = {store: v for store, v in live.items() if v is not None}
            return found if ready == 200 and len(found) == len(live) else None

        live = await wait_for(all_live, START_TIMEOUT_S, "every store live and the API ready")
        for store, version in live.items():
            story.add(f"{store} live version", version)
        users = [str(u) for u in output.data.users]
        await _session_changes_answer(demo, http, output)
        await _burst(demo, http, output)
        second = await _cutover_and_rollback(demo, http, output, live["u2i"])
        await _replay(demo, http, second, components)
        story.step(f"{REQUESTS} recommendation requests at {RATE}/s from this process")
        await ask_all(demo, users, RATE, 50)  # warm-up, not counted
        client_ms, server_ms, degraded = await ask_all(demo, users, RATE, REQUESTS)
        story.add(f"request latency at {RATE} req/s, server", percentiles(server_ms))
        story.add(f"request latency at {RATE} req/s, client", percentiles(client_ms))
        story.add("degraded answers", f"{degraded} of {len(server_ms)}")


async def _get(demo: Demo, http: aiohttp.ClientSession, path: str, **kw: Any) -> Any:
    async with http.get(demo.url + path, **kw) as response:
        return orjson.loads(await response.read())


async def _status(demo: Demo, http: aiohttp.ClientSession, method: str, path: str) -> int:
    async with http.request(method, demo.url + path) as response:
        await response.read()
        return response.status


async def _post(
    demo: Demo, http: aiohttp.ClientSession, path: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    async with http.post(demo.url + path, data=orjson.dumps(body), **kw) as response:
        return response.status, orjson.loads(await response.read())


async def _live(demo: Demo, http: aiohttp.ClientSession) -> dict[str, int | None]:
    body = await _get(demo, http, "/v1/stores", headers=demo.auth)
    # The API sends version ids as strings (they exceed 2**53).
    return {s["store"]: None if s["live"] is None else int(s["live"]) for s in body["stores"]}


async def _fresh(demo: Demo, http: aiohttp.ClientSession, user: str, k: int) -> dict[str, Any]:
    """An answer that was re-ranked (not cut short by the deadline), within a bounded number of
    tries: the first answer after a cutover also loads the version's model."""

    async def answer() -> dict[str, Any] | None:
        body: dict[str, Any] = await _get(demo, http, f"/v1/recommendations/{user}?k={k}")
        return None if body["degraded"] else body

    return await wait_for(answer, STEP_TIMEOUT_S, f"a re-ranked answer for {user}")


async def _session_changes_answer(
    demo: Demo, http: aiohttp.ClientSession, output: BatchOutput
) -> None:
    from tandem.store.connect import connect
    from tandem.store.keys import Keys

    story = demo.story
    user = str(output.data.users[0])
    story.step(f"{user} clicks three items; the worker updates the session and the cache epoch")
    before = await _fresh(demo, http, user, 10)
    listed = [i["item_id"] for i in before["items"]]
    picks = [str(i) for i in output.data.items[-40:] if str(i) not in listed][:3]
    sent = time.perf_counter()
    status, _ = await _post(
        demo,
        http,
        "/v1/events",
        [
            {"user_id": user, "item_id": item, "event_type": "click", "device": "mobile"}
            for item in picks
        ],
    )
    redis = connect(demo.settings)
    try:
        key = Keys(demo.settings.key_prefix).session(user)
        await wait_for(lambda: redis.get(key), STEP_TIMEOUT_S, "the session in Redis")
    finally:
        await redis.aclose()
    story.add(
        "event → session visible in Redis",
        f"{(time.perf_counter() - sent) * 1000:.0f} ms (HTTP {status}, broker, worker)",
    )
    after = await _fresh(demo, http, user, 10)
    after_ids = [i["item_id"] for i in after["items"]]
    similar = sum("i2i" in i["sources"] for i in after["items"])
    story.say("before: " + " ".join(listed))
    story.say("after:  " + " ".join(after_ids))
    story.add(
        "answer after session events",
        f"{'cached' if after['cached'] else 'recomputed (not cached)'}, {similar} of "
        f"{len(after_ids)} similar to the session's items, order changed: "
        f"{'yes' if after_ids != listed else 'no'}",
    )


async def _burst(demo: Demo, http: aiohttp.ClientSession, output: BatchOutput) -> None:
    demo.story.step("a burst of 500 events through POST /v1/events")
    rng = random.Random(7)
    burst = [
        {
            "user_id": str(output.data.users[rng.randrange(output.data.n_users)]),
            "item_id": str(output.data.items[rng.randrange(output.data.n_items)]),
            "event_type": "view",
            "device": "mobile",
        }
        for _ in range(500)
    ]
    status, body = await _post(demo, http, "/v1/events", burst)
    demo.story.add("events accepted (202 after broker ack)", f"{body.get('accepted')} ({status})")


async def _cutover_and_rollback(
    demo: Demo, http: aiohttp.ClientSession, output: BatchOutput, first: int
) -> int:
    from tandem.batch.publish import publish_output

    story = demo.story
    story.step("publishing a second u2i version; the materializer validates it and cuts over")
    for line in await asyncio.to_thread(publish_output, demo.settings, output, ["u2i"]):
        story.say(line.split(" on topic ")[0])

    async def moved() -> int | None:
        version = (await _live(demo, http))["u2i"]
        return version if version != first else None

    second = await wait_for(moved, STEP_TIMEOUT_S, "the second version to go live")
    story.add("cutover", f"u2i v{first} → v{second}")
    story.step("rolling back through POST /v1/stores/u2i/rollback")
    status, body = await _post(demo, http, "/v1/stores/u2i/rollback", headers=demo.auth)
    story.add(
        "rollback",
        f"HTTP {status}: live v{body.get('live')}, rolled back v{body.get('rolled_back')}",
    )
    return second


async def _replay(
    demo: Demo, http: aiohttp.ClientSession, version: int, components: list[processes.Component]
) -> None:
    from tandem.store.connect import connect
    from tandem.store.keys import Keys
    from tandem.store.lifecycle import Lifecycle

    story = demo.story
    story.step(f"Redis loses u2i v{version}; `tandem replay u2i --version {version}` rebuilds it")
    versions = await _get(demo, http, "/v1/stores/u2i/versions", headers=demo.auth)
    original = next(v for v in versions["versions"] if int(v["version"]) == version)
    redis = connect(demo.settings)
    try:
        dropped = await Lifecycle(redis, Keys(demo.settings.key_prefix)).drop("u2i", version)
    finally:
        await redis.aclose()
    folder = demo.settings.state_dir
    replay = processes.start(
        "replay", ["replay", "u2i", "--version", str(version)], demo.settings, folder
    )
    code = await asyncio.to_thread(replay.proc.wait, STEP_TIMEOUT_S)
    versions = await _get(demo, http, "/v1/stores/u2i/versions", headers=demo.auth)
    rebuilt = next(v for v in versions["versions"] if int(v["version"]) == version)
    same = code == 0 and rebuilt["checksum"] == original["checksum"]
    story.add(
        "replay",
        f"{dropped} keys deleted, rebuilt {rebuilt['count']} records, checksum "
        f"{rebuilt['checksum']} ({'identical' if same else 'DIFFERENT'})",
    )
    for component in components:
        component.check()
