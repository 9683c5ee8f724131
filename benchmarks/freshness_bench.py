"""``python -m benchmarks freshness``: time from producing an event to its effect being readable
in Redis.

The worker runs as its own process (``tandem worker``). Each event is for a user of its own; the
bench subscribes to Redis keyspace notifications of the users' epoch keys, which the worker bumps
in the same script as the session write. The baseline, measured in the same run, is the bare
Kafka hop: the same events read back by a plain confluent-kafka consumer.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import orjson
from confluent_kafka import Producer

from benchmarks.common import Spread, broker_label, cpu_s, machine, machine_busy, percentile
from tandem.contracts import topics
from tandem.contracts.kafka import make_consumer, make_producer
from tandem.contracts.settings import Settings
from tandem.store.connect import connect
from tandem.store.keys import Keys

WORKER_READY_TIMEOUT_S = 60


@dataclass(frozen=True)
class RatePoint:
    """Latencies at one offered rate."""

    rate: int
    sent: int
    seen: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    hop_p50_ms: float
    hop_p99_ms: float
    achieved_per_s: float
    kept_up: bool
    cpu_us: float  # the worker process's CPU per event over the phase


@dataclass(frozen=True)
class Flood:
    """Events produced at once: the rate the worker applied them at, and its CPU per event."""

    events: int
    per_s: float
    cpu_us: float


@dataclass(frozen=True)
class FreshnessResult:
    """Every rate point and the worker's throughput when flooded, per repetition."""

    points: list[RatePoint]
    floods: list[Flood]
    changelog_batch_bytes: int  # 0: the worker's choice for the broker
    broker: str
    busy: float

    @property
    def batching(self) -> str:
        """The changelog batching, for people."""
        if self.changelog_batch_bytes:
            return f"{self.changelog_batch_bytes} B"
        return "the worker's default for the broker"

    def markdown(self) -> str:
        """The RESULTS.md section."""
        rows = [
            f"## Freshness on {self.broker} (`python -m benchmarks freshness`, changelog batch "
            f"{self.batching})",
            "",
            f"Machine: {machine()}; the whole machine's CPU was **{100 * self.busy:.0f}% busy** "
            f"during the run (everyone's). {self.broker}, worker in its own process, one user "
            "per event; latency = produce → epoch bump visible in Redis (keyspace "
            f"notification). {len(self.floods)} repetitions; cells: median (lowest–highest). "
            "CPU: the worker process's own user + system time (`/proc/PID/stat`) per event.",
            "",
            "| offered rate (ev/s) | events | p50 ms | p99 ms | bare Kafka hop p50 / p99 ms "
            "| worker CPU µs / event | runs the worker kept up |",
            "|---|---|---|---|---|---|---|",
        ]
        rates = sorted({p.rate for p in self.points})
        for rate in rates:
            at = [p for p in self.points if p.rate == rate]
            p50, p99 = Spread.of([p.p50_ms for p in at]), Spread.of([p.p99_ms for p in at])
            hop50, hop99 = (
                Spread.of([p.hop_p50_ms for p in at]),
                Spread.of([p.hop_p99_ms for p in at]),
            )
            cpu = Spread.of([p.cpu_us for p in at])
            kept = sum(p.kept_up for p in at)
            rows.append(
                f"| {rate} | {at[0].sent} | {p50.cell()} | {p99.cell()} | {hop50.median:.1f} / "
                f"{hop99.median:.1f} | {cpu.cell('.0f')} | {kept} of {len(at)} |"
            )
        flood_rate = Spread.of([f.per_s for f in self.floods])
        flood_cpu = Spread.of([f.cpu_us for f in self.floods])
        first = Spread.of([p.p99_ms for p in self.points if p.rate == rates[0]])
        rows += [
            "",
            f"Flood: {self.floods[0].events} events produced at once were applied at "
            f"**{flood_rate.cell(',.0f')} events/s**, {flood_cpu.cell('.0f')} µs of worker CPU "
            "per event (the rate the worker sustains; target ≥ 5,000).",
            "",
            f"Target: p99 ≤ 50 ms at {rates[0]} events/s: **{first.cell()} ms**.",
        ]
        return "\n".join(rows)


def _not_growing(latencies_ms: list[float]) -> bool:
    """Whether latency at the end of a phase is no worse than at its start (no backlog)."""
    tenth = max(1, len(latencies_ms) // 10)
    head, tail = latencies_ms[:tenth], latencies_ms[-tenth:]
    return percentile(tail, 50) <= 2 * percentile(head, 50) + 20


def _event(user: str, n: int) -> bytes:
    return orjson.dumps(
        {
            "user_id": user,
            "item_id": f"i{n % 500}",
            "event_type": "view",
            "event_id": f"{user}-e",
            "device": "mobile",
        }
    )


class _Hop:
    """A bare consumer of tandem.events that timestamps each bench event it reads."""

    def __init__(self, settings: Settings, tag: str) -> None:
        self.seen: dict[str, float] = {}
        self._tag = tag.encode()
        self._consumer = make_consumer(
            settings, "hop" + uuid.uuid4().hex[:6], **{"auto.offset.reset": "latest"}
        )
        self._consumer.subscribe([topics.EVENTS])
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)  # returns as soon as one message is there
            if self._consumer.assignment():
                self.ready.set()
            if msg is None or msg.error() is not None:
                continue
            key = msg.key()
            if key is not None and key.startswith(self._tag):
                self.seen[key.decode()] = time.monotonic()
        self._consumer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


async def _watch(
    settings: Settings, keys: Keys, seen: dict[str, float], stop: asyncio.Event
) -> None:
    redis = connect(settings)
    await redis.config_set("notify-keyspace-events", "K$")
    db = redis.connection_pool.connection_kwargs.get("db", 0)
    head = f"__keyspace@{db}__:{keys.epoch('')[:-1]}"  # the channel up to the user id and "}"
    pubsub = redis.pubsub()
    await pubsub.psubscribe(head + "*")
    try:
        while not stop.is_set():
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if msg is not None:
                user = msg["channel"].decode()[len(head) : -1]
                seen.setdefault(user, time.monotonic())
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()


def warm_producer(settings: Settings) -> Producer:
    """An idempotent producer that already holds its producer id (the first send waits for it,
    about half a second on the embedded broker: that is start-up, not freshness)."""
    producer = make_producer(settings, bulk=False)
    producer.produce(topics.DLQ, key=b"bench-warm-up", value=b"")
    producer.flush(30)
    return producer


def _produce(
    producer: Producer, users: list[str], rate: float | None, sent: dict[str, float]
) -> float:
    start = time.perf_counter()
    for n, user in enumerate(users):
        if rate:
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        sent[user] = time.monotonic()
        producer.produce(topics.EVENTS, key=user.encode(), value=_event(user, n))
        producer.poll(0)
    producer.flush(30)
    return len(users) / (time.perf_counter() - start)


async def _phase(
    settings: Settings, keys: Keys, users: list[str], rate: float | None, producer: Producer
) -> tuple[dict[str, float], dict[str, float], float]:
    seen: dict[str, float] = {}
    sent: dict[str, float] = {}
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch(settings, keys, seen, stop))
    await asyncio.sleep(0.3)  # subscribed before the first event
    # The bench's own full collections (50-130 ms on a busy machine) would hold up the
    # timestamps of the notifications that arrive meanwhile: the phase runs without them.
    gc.collect()
    gc.disable()
    try:
        achieved = await asyncio.to_thread(_produce, producer, users, rate, sent)
        deadline = time.monotonic() + 20
        while len(seen) < len(users) and time.monotonic() < deadline:  # noqa: ASYNC110 - a dict
            await asyncio.sleep(0.05)
    finally:
        gc.enable()
    stop.set()
    await watcher
    return sent, seen, achieved


def _start_worker(env: dict[str, str], changelog_batch_bytes: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tandem",
            "worker",
            "--app-id",
            "bench" + uuid.uuid4().hex[:6],
            *(
                ["--changelog-batch-bytes", str(changelog_batch_bytes)]
                if changelog_batch_bytes
                else []
            ),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _wait_ready(settings: Settings, keys: Keys) -> None:
    """Until the worker has applied an event from every partition of ``tandem.events``.

    One partition is not enough: the first records on a partition the worker never read from
    took it (and the bare hop, less so) about 100 ms more on a broker just started, and 500
    events/s measured from there counted that start-up in their p99.
    """
    redis = connect(settings)
    producer = make_producer(settings, bulk=False)
    tag = "ready" + uuid.uuid4().hex[:6]
    waiting = {f"{tag}-{p}": p for p in range(settings.events_partitions)}
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    try:
        while True:
            for user in list(waiting):
                if await redis.get(keys.epoch(user)) is not None:
                    del waiting[user]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not start; run `tandem worker` to see why")
            for user, partition in waiting.items():
                producer.produce(
                    topics.EVENTS, key=user.encode(), value=_event(user, 0), partition=partition
                )
            producer.flush(5)
            await asyncio.sleep(1)
    finally:
        await redis.aclose()


async def run(
    settings: Settings,
    env: dict[str, str],
    seconds: float,
    rates: tuple[int, ...],
    flood: int,
    changelog_batch_bytes: int,
    repeat: int = 3,
) -> FreshnessResult:
    """Start a worker, then measure each rate and a flood, ``repeat`` times."""
    keys = Keys(settings.key_prefix)
    worker = _start_worker(env, changelog_batch_bytes)
    hop = _Hop(settings, "b")
    producer = warm_producer(settings)
    try:
        await _wait_ready(settings, keys)
        hop.ready.wait(30)
        busy_before = machine_busy()
        points: list[RatePoint] = []
        floods: list[Flood] = []
        for _ in range(repeat):
            points += await _rates(settings, keys, seconds, rates, producer, hop, worker.pid)
            floods.append(await _flood(settings, keys, flood, producer, worker.pid))
        busy_after = machine_busy()
        busy = (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1])
        return FreshnessResult(points, floods, changelog_batch_bytes, broker_label(settings), busy)
    finally:
        hop.close()
        worker.terminate()
        worker.wait(30)


async def _flood(settings: Settings, keys: Keys, flood: int, producer: Producer, pid: int) -> Flood:
    flood_users = [f"bflood{uuid.uuid4().hex[:4]}-{n}" for n in range(flood)]
    cpu_before = cpu_s([pid])
    sent, seen, _ = await _phase(settings, keys, flood_users, None, producer)
    cpu = cpu_s([pid]) - cpu_before
    span = max(seen.values()) - min(sent.values()) if seen else float("inf")
    return Flood(len(seen), len(seen) / span, 1e6 * cpu / flood)


async def _rates(
    settings: Settings,
    keys: Keys,
    seconds: float,
    rates: tuple[int, ...],
    producer: Producer,
    hop: _Hop,
    pid: int,
) -> list[RatePoint]:
    points = []
    for rate in rates:
        tag = f"b{rate}x{uuid.uuid4().hex[:4]}-"
        users = [f"{tag}{n}" for n in range(int(rate * seconds))]
        cpu_before = cpu_s([pid])
        sent, seen, achieved = await _phase(settings, keys, users, rate, producer)
        cpu = cpu_s([pid]) - cpu_before
        lat = [(seen[u] - sent[u]) * 1000 for u in users if u in seen]
        hops = [(hop.seen[u] - sent[u]) * 1000 for u in users if u in hop.seen]
        points.append(
            RatePoint(
                rate,
                len(users),
                len(lat),
                percentile(lat, 50),
                percentile(lat, 95),
                percentile(lat, 99),
                percentile(hops, 50),
                percentile(hops, 99),
                achieved,
                kept_up=len(lat) == len(users) and _not_growing(lat),
                cpu_us=1e6 * cpu / len(users),
            )
        )
    return points
