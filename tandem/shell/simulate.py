"""``tandem simulate canary``: two canary experiments end to end, decided by the guard.

Simulated users click by a hidden preference (each user likes every fourth item, shifted by
the user). The control version recommends a mix; a *worse* canary recommends what users do not
like, a *better* one what they do. Each runs as a canary for half of the users, through the real
API (answers, impressions), broker (events, impressions, lifecycle records), stream worker
(attribution) and ``tandem guard`` (judging, aborting, promoting) processes. The guard must abort
the worse canary and promote the better one on its own.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tandem.contracts.codec import encode
from tandem.contracts.domain import U2I
from tandem.contracts.settings import GuardPolicy, Settings
from tandem.contracts.versions import State
from tandem.contracts.waiting import wait_for
from tandem.shell import devservices, processes
from tandem.store.connect import connect
from tandem.store.experiments import CANARY, CONTROL
from tandem.store.guards import interval
from tandem.store.keys import Keys
from tandem.store.lifecycle import Lifecycle
from tandem.store.registry import Registry
from tandem.store.writer import VersionWriter

K = 5
P_LIKED = 0.25  # chance a shown item the user likes is clicked...
P_OTHER = 0.03  # ...and one the user does not like
START_TIMEOUT_S = 90.0
CONCURRENCY = 16
EVENTS_BATCH = 8  # clicks are sent in small batches, as a page would send them
# How many items of K each version shows that the user likes.
LIKED_SHOWN = {"control": 2, "worse": 0, "better": 4}


@dataclass(frozen=True)
class Spec:
    """How large the simulation is, and the guard it runs under."""

    users: int = 2000
    share: float = 0.5
    min_impressions: int = 300
    promote_after: int = 800
    decide_timeout_s: float = 120.0
    # Health guards, generous: every process of the simulation shares this machine, and what is
    # simulated is users' response (tests/api/test_canary.py checks the health guards).
    max_degraded_share: float = 0.5
    max_p99_ms: float = 5000.0


def likes(user: int, item: int) -> bool:
    """The hidden preference."""
    return (user + item) % 4 == 0


def recommended(user: int, liked: int) -> list[str]:
    """K items for ``user``, ``liked`` of which the user likes."""
    good = [i for i in range(200) if likes(user, i)][:liked]
    other = [i for i in range(200) if not likes(user, i)][: K - liked]
    return [f"i{i}" for i in good + other]


def clicked(user: int, items: list[str], rng: random.Random) -> str | None:
    """The item the user clicks, if any (at most one per answer)."""
    for item in items:
        p = P_LIKED if likes(user, int(item[1:])) else P_OTHER
        if rng.random() < p:
            return item
    return None


def guarded(settings: Settings, spec: Spec) -> Settings:
    """``settings`` with the u2i guard of the simulation (generous latency bounds: the machine
    is shared by every process of the simulation)."""
    guard = GuardPolicy(
        min_impressions=spec.min_impressions,
        promote_after=spec.promote_after,
        max_p99_ms=spec.max_p99_ms,
        max_degraded_share=spec.max_degraded_share,
    )
    stores = {**settings.stores, U2I: settings.stores[U2I].model_copy(update={"guard": guard})}
    return settings.model_copy(
        update={"stores": stores, "api_deadline_ms": 500, "api_redis_timeout_ms": 400}
    )


async def write_version(settings: Settings, version: int, users: int, kind: str) -> None:
    """Write a u2i version for every user straight into Redis, as a validated version."""
    redis = connect(settings)
    keys = Keys(settings.key_prefix)
    try:
        writer = VersionWriter(redis, keys, U2I, version)
        lists = [
            (f"u{u}", encode(recommended(u, LIKED_SHOWN[kind]), [1.0 - i / 10 for i in range(K)]))
            for u in range(users)
        ]
        await writer.write(lists)
        await writer.seal()
        await Registry(redis, keys).update(U2I, version, State.INGESTED, count=users)
        if kind == "control":
            lifecycle = Lifecycle(redis, keys)
            await lifecycle.promote(U2I, version, await lifecycle.live(U2I))
    finally:
        await redis.aclose()


class Shoppers:
    """Simulated users asking for recommendations and clicking, through the API."""

    def __init__(self, url: str, users: int, seed: int) -> None:
        self._url = url
        self._users = users
        self._rng = random.Random(seed)
        self._clicks: list[dict[str, Any]] = []
        self.answers = 0
        self.errors = 0

    async def shop(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        """Ask and click until ``stop``, with a few requests in flight."""
        await asyncio.gather(*(self._one_by_one(http, stop) for _ in range(CONCURRENCY)))
        await self._send(http)

    async def _one_by_one(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            user = self._rng.randrange(self._users)
            async with http.get(f"{self._url}/v1/recommendations/u{user}?k={K}") as response:
                body = orjson.loads(await response.read())
                request_id = response.headers.get("X-Request-ID")
            if response.status != 200:  # a 503 while the machine is overloaded: ask again
                self.errors += 1
                continue
            self.answers += 1
            item = clicked(user, [i["item_id"] for i in body["items"]], self._rng)
            if item is not None:
                click = {"user_id": f"u{user}", "item_id": item, "event_type": "click"}
                self._clicks.append({**click, "request_id": request_id})
            if len(self._clicks) >= EVENTS_BATCH:
                await self._send(http)

    async def _send(self, http: aiohttp.ClientSession) -> None:
        batch, self._clicks = self._clicks, []
        if batch:
            async with http.post(f"{self._url}/v1/events", data=orjson.dumps(batch)) as response:
                await response.read()


async def experiment(
    settings: Settings, url: str, kind: str, spec: Spec, components: list[processes.Component]
) -> dict[str, Any]:
    """Run one canary until the guard decides; what it decided, with the numbers."""
    version = int(time.strftime("%Y%m%d%H%M%S")) * 1000 + random.randrange(1000)
    await write_version(settings, version, spec.users, kind)
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        body = {"version": str(version), "share": spec.share}
        async with http.post(f"{url}/v1/stores/u2i/canary", json=body, headers=auth) as response:
            if response.status != 200:
                raise RuntimeError(f"the canary did not start: {await response.text()}")
        started = time.monotonic()
        stop = asyncio.Event()
        shoppers = Shoppers(url, spec.users, seed=version % 1000)
        shopping = asyncio.ensure_future(shoppers.shop(http, stop))
        try:
            info = await wait_for(
                lambda: _decided(settings, version, components),
                spec.decide_timeout_s,
                f"the guard to decide the {kind} canary",
            )
        finally:
            stop.set()
            await shopping
    found = _report(settings, info, version, time.monotonic() - started, shoppers.answers)
    return {**found, "errors": shoppers.errors}


async def _decided(
    settings: Settings, version: int, components: list[processes.Component]
) -> dict[str, Any] | None:
    for component in components:
        component.check()
    redis = connect(settings)
    keys = Keys(settings.key_prefix)
    try:
        info = await Registry(redis, keys).get(U2I, version)
        if info is None or "guard" not in info.metadata.get("canary", {}):
            return None  # still running, or decided but its decision not yet recorded
        counters = await redis.hgetall(keys.experiment(U2I, version))
    finally:
        await redis.aclose()
    return {"info": info, "counters": counters}


def _report(
    settings: Settings, found: dict[str, Any], version: int, wall_s: float, answers: int
) -> dict[str, Any]:
    from tandem.store.experiments import parse_counters

    del settings
    info = found["info"]
    stats = parse_counters(found["counters"])
    guard = info.metadata.get("canary", {}).get("guard", {})
    ctr = {}
    for variant in (CONTROL, CANARY):
        s = stats[variant]
        low, high = interval(s.click, s.impressions)
        ctr[variant] = {"ctr": round(s.ctr, 4), "interval": [round(low, 4), round(high, 4)]}
    return {
        "version": str(version),
        "outcome": "promoted" if info.state is State.LIVE else "aborted",
        "state": info.state.value,
        "reasons": list(info.reasons) or guard.get("reasons", []),
        "impressions": {v: stats[v].impressions for v in (CONTROL, CANARY)},
        "clicks": {v: stats[v].click for v in (CONTROL, CANARY)},
        "ctr": ctr,
        "z": guard.get("z", {}),
        "decided_after_s": guard.get("decided_after_s"),
        "wall_s": round(wall_s, 2),
        "answers": answers,
    }


async def simulate(settings: Settings, folder: Path, spec: Spec) -> dict[str, Any]:
    """Both experiments on running services (``settings``), with the worker, the API and the
    guard started here as their own processes."""
    # The guard decides from the impression log: every answer goes to it, whatever the caller's
    # sampling (the test suite, for one, logs none by default).
    settings = guarded(settings, spec).model_copy(update={"impressions_sample": 1.0})
    await write_version(settings, int(time.strftime("%Y%m%d%H%M%S")) * 1000, spec.users, "control")
    port = devservices.free_port()
    url = f"http://127.0.0.1:{port}"
    components = [
        processes.start("worker", ["worker"], settings, folder),
        processes.start("serve", ["serve", "--port", str(port)], settings, folder),
        processes.start("guard", ["guard", "--interval-s", "0.5"], settings, folder),
    ]
    with processes.running(components):
        await wait_for(lambda: _ready(url, components), START_TIMEOUT_S, "the API to be ready")
        return {
            "worse": await experiment(settings, url, "worse", spec, components),
            "better": await experiment(settings, url, "better", spec, components),
        }


async def _ready(url: str, components: list[processes.Component]) -> bool:
    for component in components:
        component.check()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


def run(state_dir: Path, spec: Spec, broker: str) -> dict[str, Any]:
    """Start private services and simulate (the ``tandem simulate canary`` command)."""
    folder = state_dir / "simulate"
    folder.mkdir(parents=True, exist_ok=True)
    with devservices.private_services(folder / "services", broker=broker) as services:
        settings = Settings.load(
            kafka=services.kafka,
            redis_url=services.redis_url,
            key_prefix="sim",
            admin_token="sim-" + uuid.uuid4().hex[:12],
            state_dir=folder,
            replication_factor=services.replication_factor,
        )
        return asyncio.run(simulate(settings, folder, spec))
