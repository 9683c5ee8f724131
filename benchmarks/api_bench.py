"""``python -m benchmarks api``: open-loop load (constant arrival rate) against tandem's
recommendations (one process and two) and against a bare aiohttp handler (one Redis GET of the
same bytes and an orjson answer), in the same run, repeated.

Beside latency it counts the CPU time each server process spent per request, from the process's
own counters: on a shared machine latency moves with the neighbours' load, CPU per request
hardly does.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import lightgbm as lgb
import numpy as np

from benchmarks.common import Spread, cpu_s, machine, machine_busy, percentile, process_tree
from tandem.contracts.codec import encode
from tandem.contracts.domain import U2I
from tandem.contracts.features import FEATURES
from tandem.contracts.settings import Settings
from tandem.contracts.waiting import wait_for
from tandem.shell import devservices
from tandem.store.connect import connect
from tandem.store.keys import Keys
from tandem.store.lifecycle import Lifecycle
from tandem.store.writer import VersionWriter

CANDIDATES = 200
P99_LIMIT_MS = 10.0
RATES = (100, 200, 300, 400, 500, 700, 900, 1200, 1500, 2000, 2500, 3000)
CPU_RATES = (100, 200, 300)  # CPU per request is counted where every server keeps up
TARGET_RATE = 300
SETTLE_S = 120.0
BARE = "bare"
# Both servers are asked for identity encoding: the bare handler never compresses, and the API
# compresses answers of MIN_GZIP_BYTES or more for clients that ask for gzip (aiohttp's client
# asks by default), which would count ~4% of CPU the baseline does not pay.
CLIENT_HEADERS = {"Accept-Encoding": "identity"}


@dataclass(frozen=True)
class Step:
    """One offered rate, once."""

    rate: int
    sent: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_s: float  # of the server's processes during the step

    @property
    def held(self) -> bool:
        """Whether the server kept p99 under the limit without errors."""
        return self.errors == 0 and self.p99_ms < P99_LIMIT_MS


@dataclass(frozen=True)
class Climb:
    """One server's rates, low to high, until two in a row are not held."""

    steps: list[Step]

    @property
    def highest(self) -> int:
        """The highest rate held (0 if none)."""
        return max((s.rate for s in self.steps if s.held), default=0)

    @property
    def cpu_us_per_request(self) -> float:
        """CPU microseconds per request over the steps at :data:`CPU_RATES`."""
        steps = [s for s in self.steps if s.rate in CPU_RATES]
        return 1e6 * sum(s.cpu_s for s in steps) / sum(s.sent for s in steps)


@dataclass
class Server:
    """One server under test and its climbs, one per repetition."""

    name: str
    label: str
    climbs: list[Climb] = field(default_factory=list)

    def step_spread(self, rate: int, figure: str) -> Spread | None:
        """The spread of a step figure at ``rate`` over the repetitions that reached it."""
        values = [getattr(s, figure) for c in self.climbs for s in c.steps if s.rate == rate]
        return Spread.of(values) if values else None

    def reached(self, rate: int) -> int:
        """In how many repetitions the climb got to ``rate``."""
        return sum(1 for c in self.climbs if any(s.rate == rate for s in c.steps))

    @property
    def cpu(self) -> Spread:
        """CPU µs per request over the repetitions."""
        return Spread.of([c.cpu_us_per_request for c in self.climbs])

    @property
    def highest(self) -> Spread:
        """The highest rate held over the repetitions."""
        return Spread.of([float(c.highest) for c in self.climbs])


@dataclass(frozen=True)
class ApiResult:
    """Every server's climbs and how busy the machine was meanwhile."""

    users: int
    seconds: float
    repeat: int
    reranker: str
    servers: list[Server]
    busy: float  # fraction of the machine's CPU in use during the run (everyone's)
    load: tuple[float, float, float]

    def server(self, name: str) -> Server:
        """The server called ``name``."""
        return next(s for s in self.servers if s.name == name)

    def _ratios(self, name: str, figure: str) -> Spread:
        """Per repetition (same moment, same neighbours), ``name``'s figure over bare's."""
        ours, bare = self.server(name), self.server(BARE)
        pairs = zip(ours.climbs, bare.climbs, strict=True)
        if figure == "cpu":
            return Spread.of([o.cpu_us_per_request / b.cpu_us_per_request for o, b in pairs])
        return Spread.of([o.highest / b.highest if b.highest else 0.0 for o, b in pairs])

    @property
    def cpu_ratio(self) -> Spread:
        """tandem's (one process) CPU per request over the bare handler's."""
        return self._ratios("tandem-1", "cpu")

    @property
    def rate_ratio(self) -> Spread:
        """tandem's (one process) highest rate held over the bare handler's."""
        return self._ratios("tandem-1", "rate")

    def to_json(self) -> dict[str, Any]:
        """The figures as JSON (``cpu_per_request_ratio`` at the top)."""

        def spread(s: Spread | None) -> dict[str, float] | None:
            return None if s is None else {"median": s.median, "low": s.low, "high": s.high}

        return {
            "cpu_per_request_ratio": self.cpu_ratio.median,
            "cpu_per_request_ratio_spread": spread(self.cpu_ratio),
            "highest_rate_ratio": self.rate_ratio.median,
            "machine": machine(),
            "machine_busy": self.busy,
            "load_average": list(self.load),
            "users": self.users,
            "seconds": self.seconds,
            "repeat": self.repeat,
            "reranker": self.reranker,
            "servers": {
                s.name: {
                    "label": s.label,
                    "cpu_us_per_request": spread(s.cpu),
                    "highest_rate_held": spread(s.highest),
                    "steps": {
                        str(rate): {
                            "reached": s.reached(rate),
                            **{
                                f: spread(s.step_spread(rate, f))
                                for f in ("p50_ms", "p95_ms", "p99_ms", "errors")
                            },
                        }
                        for rate in RATES
                        if s.reached(rate)
                    },
                }
                for s in self.servers
            },
        }

    def markdown(self) -> str:
        """The RESULTS.md section."""
        tandem, bare = self.server("tandem-1"), self.server(BARE)
        at_target = tandem.step_spread(TARGET_RATE, "p99_ms")
        rows = [
            "## API (`python -m benchmarks api`)",
            "",
            f"Machine: {machine()}; during the run the whole machine's CPU was "
            f"**{100 * self.busy:.0f}% busy** (everyone's, load average "
            f"{' / '.join(f'{v:.1f}' for v in self.load)} at the end). Open-loop load from the "
            f"benchmark's process on the same cores, {self.seconds:g} s per rate, "
            f"{self.repeat} repetitions (servers interleaved), {self.users:,} users with "
            f"{CANDIDATES} candidates each, re-ranker: {self.reranker}. tandem: read, merge, "
            "features, re-rank, answer; the bare handler: one Redis GET of the same bytes and an "
            "orjson answer. Each cell: median (lowest–highest) over the repetitions; CPU is the "
            "server processes' own user + system time (`/proc/PID/stat`) over the steps at "
            f"{', '.join(map(str, CPU_RATES))} req/s, per request.",
            "",
            f"| server | CPU µs / request | highest rate held, p99 < {P99_LIMIT_MS:g} ms (req/s) |",
            "|---|---|---|",
        ]
        rows += [
            f"| {s.label} | {s.cpu.cell('.0f')} | {s.highest.cell('.0f')} |" for s in self.servers
        ]
        rows += [
            "",
            "| rate (req/s) | "
            + " | ".join(f"{s.label} p50 / p99 ms" for s in self.servers)
            + " |",
            "|---" * (len(self.servers) + 1) + "|",
        ]
        for rate in RATES:
            if not any(s.reached(rate) for s in self.servers):
                break
            rows.append(
                f"| {rate} | " + " | ".join(self._cell(s, rate) for s in self.servers) + " |"
            )
        rows += [
            "",
            f"tandem (1 process) CPU per request over the bare handler's: "
            f"**{self.cpu_ratio.cell('.2f')}** (target ≤ 2).",
            f"Highest rate held, tandem (1 process) over bare: **{self.rate_ratio.cell('.2f')}** "
            "(target ≥ 0.50).",
            f"tandem p99 at {TARGET_RATE} req/s: **"
            f"{at_target.cell() if at_target else 'not reached'} ms** (target ≤ 10 ms).",
            f"(bare: {bare.cpu.median:.0f} µs of CPU per request.)",
        ]
        return "\n".join(rows)

    def _cell(self, server: Server, rate: int) -> str:
        reached = server.reached(rate)
        if not reached:
            return "past saturation"
        p50, p99 = server.step_spread(rate, "p50_ms"), server.step_spread(rate, "p99_ms")
        assert p50 is not None and p99 is not None
        note = "" if reached == len(server.climbs) else f" ({reached} of {len(server.climbs)})"
        return f"{p50.median:.1f} / {p99.cell()}{note}"


def tiny_model() -> str:
    """A LightGBM ranker the size the batch stage trains (80 trees of 15 leaves) on random
    features: what a request costs does not depend on what the trees learned."""
    rng = np.random.default_rng(1)
    features = rng.random((4000, len(FEATURES)), dtype=np.float32)
    labels = (features[:, 0] + 0.3 * rng.random(4000) > 0.9).astype(np.int32)
    dataset = lgb.Dataset(features, label=labels, group=[40] * 100, feature_name=list(FEATURES))
    params = {"objective": "lambdarank", "num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1}
    return str(lgb.train(params, dataset, num_boost_round=80).model_to_string())


async def _seed(settings: Settings, users: int, model: str | None) -> None:
    redis = connect(settings)
    keys = Keys(settings.key_prefix)
    rng = random.Random(1)
    lifecycle = Lifecycle(redis, keys)
    for store, entities in (
        (U2I, [f"u{n}" for n in range(users)]),
        ("popular", ["global"]),
        ("i2i", []),
    ):
        writer = VersionWriter(redis, keys, store, 1)
        for at in range(0, len(entities), 500):
            rows = []
            for entity in entities[at : at + 500]:  # lists hold each item once, as a batch does
                ids = [f"i{n}" for n in rng.sample(range(50_000), CANDIDATES)]
                rows.append(
                    (entity, encode(ids, sorted((rng.random() for _ in ids), reverse=True)))
                )
            await writer.write(rows)
        if store == U2I and model is not None:
            await redis.set(keys.model(U2I, 1), model)
        await writer.seal()
        await lifecycle.promote(store, 1, expected=None)
    await redis.aclose()


async def _step(
    session: aiohttp.ClientSession, url: str, rate: int, seconds: float, users: int, pid: int
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

    pids = process_tree(pid)
    cpu_before = cpu_s(pids)
    start = time.perf_counter() + 0.05
    await asyncio.gather(*(one(start + n / rate, rng.randrange(users)) for n in range(total)))
    cpu = cpu_s(pids) - cpu_before
    return Step(
        rate,
        total,
        errors,
        percentile(latencies, 50),
        percentile(latencies, 95),
        percentile(latencies, 99),
        cpu,
    )


async def _climb(url: str, seconds: float, users: int, pid: int) -> Climb:
    steps = []
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector, headers=CLIENT_HEADERS) as session:
        statuses = []
        for user in range(300):  # warm up connections and every step of the request path
            async with session.get(url.format(user=users - 1 - user)) as response:
                await response.read()
                statuses.append(response.status)
        if statuses[-100:].count(200) < 100:  # a cold start may time out; a warm one may not
            raise RuntimeError(f"{url} answered {statuses[-100:]} while warming up")
        await wait_for(partial(_quiet, pid), SETTLE_S, "the server to finish its start-up work")
        misses = 0
        for rate in RATES:
            step = await _step(session, url, rate, seconds, users, pid)
            steps.append(step)
            misses = 0 if step.held else misses + 1
            if misses >= 2 and rate >= max(CPU_RATES):
                break
    return Climb(steps)


async def _quiet(pid: int) -> bool:
    """Whether the idle server spent under 2% of a core over half a second (the re-ranker's
    compilation, in a thread after the first requests, is over)."""
    pids = process_tree(pid)
    before = cpu_s(pids)
    await asyncio.sleep(0.5)
    return cpu_s(pids) - before < 0.01


def _wait_http(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for port {port} exited with {proc.returncode}")
        try:
            with __import__("socket").create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def _start(
    settings: Settings, procs: list[subprocess.Popen[bytes]], only: str | None = None
) -> tuple[list[Server], dict[str, str]]:
    """Start the servers (appending to ``procs`` as they start) and wait until they listen."""
    url = settings.redis_url.get_secret_value()
    keys = Keys(settings.key_prefix)
    template = keys.entity_unchecked(keys.version_root(U2I, 1), "%s")
    env = {
        **os.environ,
        "TANDEM_KAFKA": settings.kafka,
        "TANDEM_REDIS_URL": url,
        "TANDEM_KEY_PREFIX": settings.key_prefix,
        "TANDEM_API_CACHE_TTL_S": "5",
    }
    servers: list[Server] = []
    urls: dict[str, str] = {}
    for name, label, argv, path in (
        (BARE, "bare handler", ["-m", "benchmarks.bare_server"], "/bare/u{user}"),
        (
            "tandem-1",
            "tandem, 1 process",
            ["-m", "tandem", "serve"],
            "/v1/recommendations/u{user}?k=20",
        ),
        (
            "tandem-2",
            "tandem, 2 processes",
            ["-m", "tandem", "serve", "--workers", "2"],
            "/v1/recommendations/u{user}?k=20",
        ),
    ):
        if only is not None and name != only:
            continue
        port = devservices.free_port()
        extra = [str(port), url, template] if name == BARE else ["--port", str(port)]
        log = (Path(tempfile.gettempdir()) / f"tandem-bench-{name}.log").open("wb")
        proc = subprocess.Popen([sys.executable, *argv, *extra], env=env, stderr=log)
        procs.append(proc)
        _wait_http(port, proc)
        servers.append(Server(name, label))
        urls[name] = f"http://127.0.0.1:{port}{path}"
    return servers, urls


def run(
    settings: Settings, users: int, seconds: float, repeat: int, reranker: str = "lightgbm"
) -> ApiResult:
    """Seed the stores, start the servers, climb the rates on each, ``repeat`` times."""
    settings = settings.model_copy(update={"key_prefix": "api" + uuid.uuid4().hex[:6]})
    asyncio.run(_seed(settings, users, tiny_model() if reranker == "lightgbm" else None))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        servers, urls = _start(settings, procs)
        pid_of = {s.name: p.pid for s, p in zip(servers, procs, strict=True)}
        busy_before = machine_busy()
        for rep in range(repeat):
            order = servers[rep % len(servers) :] + servers[: rep % len(servers)]
            for server in order:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a server under test exited during the benchmark")
                server.climbs.append(
                    asyncio.run(_climb(urls[server.name], seconds, users, pid_of[server.name]))
                )
        busy_after = machine_busy()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(20)
    busy = (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1])
    load = os.getloadavg()
    return ApiResult(users, seconds, repeat, reranker, servers, busy, load)
