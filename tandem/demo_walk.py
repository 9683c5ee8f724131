"""The steps of ``tandem demo`` once every process runs (an entry point: imports what it shows)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
import click
import orjson

from batch.cli import publish_output
from batch.pipeline import BatchOutput
from consumers.replay import replay
from store.connect import connect
from store.keys import Keys
from store.lifecycle import Lifecycle
from tandem.demo import Summary, _percentiles, step
from tandem.settings import Settings
from tandem.waiting import wait_for


class Walkthrough:
    """Drives the running system through the API, as a product page and an operator would."""

    def __init__(self, settings: Settings, base_url: str, token: str) -> None:
        self._settings = settings
        self._url = base_url
        self._auth = {"Authorization": f"Bearer {token}"}
        self._keys = Keys(settings.key_prefix)

    async def _get(self, http: aiohttp.ClientSession, path: str, **kw: Any) -> Any:
        async with http.get(self._url + path, **kw) as response:
            return orjson.loads(await response.read())

    async def _post(
        self, http: aiohttp.ClientSession, path: str, body: Any = None, **kw: Any
    ) -> tuple[int, Any]:
        async with http.post(self._url + path, data=orjson.dumps(body), **kw) as response:
            return response.status, orjson.loads(await response.read())

    async def _live(self, http: aiohttp.ClientSession) -> dict[str, int | None]:
        body = await self._get(http, "/v1/stores", headers=self._auth)
        return {s["store"]: s["live"] for s in body["stores"]}

    async def walkthrough(self, output: BatchOutput, summary: Summary) -> None:
        """Every step after start-up."""
        redis = connect(self._settings)
        try:
            async with aiohttp.ClientSession() as http:
                step("waiting for the three versions to be validated and go live")
                live = await wait_for(lambda: self._all_live(http), 90, "all stores live")
                for store, version in live.items():
                    summary.add(f"{store} live version", version)
                await self._session_changes_answer(http, redis, output, summary)
                await self._cutover_and_rollback(http, output, summary, live["u2i"])
                await self._replay(redis, summary, live["u2i"])
                await self._latency(http, output, summary)
        finally:
            await redis.aclose()

    async def _all_live(self, http: aiohttp.ClientSession) -> dict[str, int] | None:
        live = await self._live(http)
        return live if all(v is not None for v in live.values()) else None  # type: ignore[return-value]

    async def _session_changes_answer(
        self, http: aiohttp.ClientSession, redis: Any, output: BatchOutput, summary: Summary
    ) -> None:
        user = str(output.data.users[0])
        before = await self._get(http, f"/v1/recommendations/{user}?k=5")
        click.echo(
            f"  {user} before: {[i['item_id'] for i in before['items']]} "
            f"(re-ranker {before['reranker']})"
        )
        step("a burst of 500 events through POST /v1/events")
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
        status, body = await self._post(http, "/v1/events", burst)
        summary.add("events accepted (202 after broker ack)", f"{body['accepted']} ({status})")
        step(f"{user} starts a session on other items; the worker updates it in Redis")
        listed = {i["item_id"] for i in before["items"]}
        picks = [str(i) for i in output.data.items[-40:] if str(i) not in listed][:3]
        sent = time.perf_counter()
        status, _ = await self._post(
            http,
            "/v1/events",
            [
                {"user_id": user, "item_id": item, "event_type": "click", "device": "mobile"}
                for item in picks
            ],
        )
        await wait_for(lambda: redis.get(self._keys.session(user)), 30, "the session in Redis")
        summary.add(
            "event → session visible in Redis",
            f"{(time.perf_counter() - sent) * 1000:.0f} ms (through the API, broker and worker)",
        )
        after = await self._get(http, f"/v1/recommendations/{user}?k=5")
        click.echo(
            f"  {user} after:  {[i['item_id'] for i in after['items']]} (cached {after['cached']})"
        )
        changed = [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]
        summary.add("answer changed after session events", "yes" if changed else "no")

    async def _cutover_and_rollback(
        self, http: aiohttp.ClientSession, output: BatchOutput, summary: Summary, first: int
    ) -> None:
        step("publishing a second u2i version and watching it go live")
        for line in await asyncio.to_thread(publish_output, self._settings, output, ["u2i"]):
            click.echo("  " + line)

        async def moved() -> int | None:
            version = (await self._live(http))["u2i"]
            return version if version != first else None

        second = await wait_for(moved, 60, "the second version to go live")
        summary.add("cutover", f"u2i v{first} → v{second}")
        step("rolling back through POST /v1/stores/u2i/rollback")
        status, body = await self._post(http, "/v1/stores/u2i/rollback", headers=self._auth)
        summary.add(
            "rollback",
            f"HTTP {status}: live v{body.get('live')}, rolled back v{body.get('rolled_back')}",
        )

    async def _replay(self, redis: Any, summary: Summary, version: int) -> None:
        step(f"deleting u2i v{version} from Redis and rebuilding it by replay")
        lifecycle = Lifecycle(redis, self._keys)
        original = await lifecycle.registry.get("u2i", version)
        dropped = await lifecycle.drop("u2i", version)
        info = await replay(self._settings, "u2i", version, cutover=True)
        same = original is not None and info.checksum == original.checksum
        summary.add(
            "replay",
            f"{dropped} keys deleted, rebuilt {info.count} records, checksum "
            f"{info.checksum} ({'identical' if same else 'DIFFERENT'})",
        )

    async def _latency(
        self, http: aiohttp.ClientSession, output: BatchOutput, summary: Summary
    ) -> None:
        step("1,000 recommendation requests, 20 at a time")
        rng = random.Random(3)
        client_ms: list[float] = []
        server_ms: list[float] = []
        degraded = 0

        async def ask() -> None:
            nonlocal degraded
            for _ in range(50):
                user = output.data.users[rng.randrange(output.data.n_users)]
                started = time.perf_counter()
                body = await self._get(http, f"/v1/recommendations/{user}?k=20")
                client_ms.append((time.perf_counter() - started) * 1000)
                server_ms.append(body["took_ms"])
                degraded += bool(body["degraded"])

        await asyncio.gather(*(ask() for _ in range(20)))
        summary.add("request latency, server", _percentiles(server_ms))
        summary.add("request latency, client (same machine)", _percentiles(client_ms))
        summary.add("degraded answers", f"{degraded} of {len(server_ms)}")
