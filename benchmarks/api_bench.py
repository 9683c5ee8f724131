"""``python -m benchmarks api``: open-loop load (constant arrival rate) against tandem's
recommendations and against a bare aiohttp handler doing one Redis GET of the same bytes, in the
same run."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import aiohttp

from benchmarks.common import machine, percentile
from tandem.contracts.codec import encode
from tandem.contracts.settings import Settings
from tandem.shell import devservices
from tandem.store.connect import connect
from tandem.store.keys import Keys
from tandem.store.lifecycle import Lifecycle
from tandem.store.writer import VersionWriter

CANDIDATES = 200
P99_LIMIT_MS = 10.0
RATES = (100, 200, 300, 400, 500, 700, 900, 1200, 1500, 2000, 2500, 3000)


@dataclass(frozen=True)
class Step:
    """One offered rate."""

    rate: int
    sent: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def held(self) -> bool:
        """Whether the server kept p99 under the limit without errors."""
        return self.errors == 0 and self.p99_ms < P99_LIMIT_MS


@dataclass(frozen=True)
class ApiResult:
    """Both servers' steps."""

    users: int
    seconds: float
    bare: list[Step]
    tandem: list[Step]

    @staticmethod
    def highest(steps: list[Step]) -> int:
        """The highest rate held (0 if none)."""
        return max((s.rate for s in steps if s.held), default=0)

    def markdown(self) -> str:
        """The RESULTS.md section."""
        rows = [
            "## API (`python -m benchmarks api`)",
            "",
            f"Machine: {machine()}. One API process each; open-loop load from a third process "
            f"on the same 2 cores, {self.seconds:g} s per rate, {self.users:,} users with "
            f"{CANDIDATES} candidates each (tandem: read, merge, features, re-rank, answer; "
            "the bare handler: one Redis GET of the same bytes).",
            "",
            "| rate (req/s) | bare p50 / p95 / p99 ms | tandem p50 / p95 / p99 ms "
            "| tandem errors |",
            "|---|---|---|---|",
        ]
        by_rate = {s.rate: s for s in self.bare}
        for step in self.tandem:
            base = by_rate.get(step.rate)
            bare_cell = (
                f"{base.p50_ms:.1f} / {base.p95_ms:.1f} / {base.p99_ms:.1f}" if base else "-"
            )
            rows.append(
                f"| {step.rate} | {bare_cell} | {step.p50_ms:.1f} / {step.p95_ms:.1f} / "
                f"{step.p99_ms:.1f} | {step.errors} |"
            )
        bare_best, ours = self.highest(self.bare), self.highest(self.tandem)
        at_300 = next((s for s in self.tandem if s.rate == 300), None)
        rows += [
            "",
            f"Highest rate held with p99 < {P99_LIMIT_MS:g} ms: bare {bare_best} req/s, "
            f"tandem {ours} req/s, ratio **{ours / bare_best if bare_best else 0:.2f}** "
            "(target ≥ 0.30).",
            f"tandem p99 at 300 req/s: **{at_300.p99_ms if at_300 else float('nan'):.1f} ms** "
            "(target < 10 ms).",
        ]
        return "\n".join(rows)


async def _seed(settings: Settings, users: int) -> None:
    redis = connect(settings)
    keys = Keys(settings.key_prefix)
    rng = random.Random(1)
    lifecycle = Lifecycle(redis, keys)
    for store, entities in (
        ("u2i", [f"u{n}" for n in range(users)]),
        ("popular", ["global"]),
        ("i2i", []),
    ):
        writer = VersionWriter(redis, keys, store, 1)
        for at in range(0, len(entities), 500):
            rows = []
            for entity in entities[at : at + 500]:
                ids = [f"i{rng.randrange(50_000)}" for _ in range(CANDIDATES)]
                rows.append(
                    (entity, encode(ids, sorted((rng.random() for _ in ids), reverse=True)))
                )
            await writer.write(rows)
        await writer.seal()
        await lifecycle.promote(store, 1, expected=None)
    await redis.aclose()


async def _step(
    session: aiohttp.ClientSession, url: str, rate: int, seconds: float, users: int
) -> Step:
    rng = random.Random(rate)
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0

    async def one(at: float, user: int) -> None:
        nonlocal errors
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            async with session.get(url.format(user=user)) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
        except aiohttp.ClientError:
            errors += 1
        latencies.append((time.perf_counter() - at) * 1000)  # from the scheduled time

    start = time.perf_counter() + 0.05
    await asyncio.gather(*(one(start + n / rate, rng.randrange(users)) for n in range(total)))
    return Step(
        rate,
        total,
        errors,
        percentile(latencies, 50),
        percentile(latencies, 95),
        percentile(latencies, 99),
    )


async def _climb(url: str, seconds: float, users: int) -> list[Step]:
    steps = []
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:
        for user in range(300):  # warm up connections and every step of the request path
            async with session.get(url.format(user=users - 1 - user)) as response:
                await response.read()
        misses = 0
        for rate in RATES:
            step = await _step(session, url, rate, seconds, users)
            steps.append(step)
            misses = 0 if step.held else misses + 1
            if misses == 2:
                break
    return steps


def _wait_http(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with __import__("socket").create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def run(settings: Settings, users: int, seconds: float) -> ApiResult:
    """Seed the stores, start both servers, climb the rates on each."""
    settings = settings.model_copy(update={"key_prefix": "api" + uuid.uuid4().hex[:6]})
    asyncio.run(_seed(settings, users))
    url = settings.redis_url.get_secret_value()
    bare_port, api_port = devservices.free_port(), devservices.free_port()
    keys = Keys(settings.key_prefix)
    template = keys.entity_unchecked(keys.version_root("u2i", 1), "%s")
    env = {
        **os.environ,
        "TANDEM_KAFKA": settings.kafka,
        "TANDEM_REDIS_URL": url,
        "TANDEM_KEY_PREFIX": settings.key_prefix,
        "TANDEM_API_CACHE_TTL_S": "5",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bare_server", str(bare_port), url, template], env=env
        ),
        subprocess.Popen(
            [sys.executable, "-m", "tandem", "serve", "--port", str(api_port)],
            env=env,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        _wait_http(bare_port)
        _wait_http(api_port)
        bare = asyncio.run(_climb(f"http://127.0.0.1:{bare_port}/bare/u{{user}}", seconds, users))
        ours = asyncio.run(
            _climb(f"http://127.0.0.1:{api_port}/v1/recommendations/u{{user}}?k=20", seconds, users)
        )
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
    return ApiResult(users, seconds, bare, ours)
