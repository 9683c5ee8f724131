"""``python -m benchmarks publish`` and ``python -m benchmarks materialize``: the version pipeline
against bare confluent-kafka and bare Redis, measured in the same run."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.cimpl import NewTopic

from benchmarks.common import Spread, broker_label, machine, machine_busy
from tandem.batch.candidates_io import synthetic_candidates
from tandem.batch.publish import Publisher, partition_of
from tandem.consumers.materializer import Materializer, MaterializerOptions
from tandem.contracts.codec import encode
from tandem.contracts.kafka import (
    admin,
    create_topics,
    make_consumer,
    make_producer,
)
from tandem.contracts.settings import Settings, StorePolicy
from tandem.contracts.versions import State
from tandem.store.connect import connect
from tandem.store.keys import Keys
from tandem.store.registry import Registry

PARTITIONS = 4


@dataclass(frozen=True)
class PublishResult:
    """Publisher throughput per compression codec, and the bare produce loop's."""

    records: int
    items: int
    publisher_per_s: dict[str, float]
    bare_per_s: float

    def markdown(self) -> str:
        """The RESULTS.md section."""
        best = self.publisher_per_s["lz4"]
        rows = [
            "## Publishing (`python -m benchmarks publish`)",
            "",
            f"Machine: {machine()}. {self.records:,} records of {self.items} items, "
            f"{PARTITIONS} partitions, embedded broker.",
            "",
            "| figure | records/s | ratio to bare loop |",
            "|---|---|---|",
            "| bare confluent-kafka produce loop (pre-encoded, lz4) | "
            f"{self.bare_per_s:,.0f} | 1.00 |",
        ]
        rows.extend(
            f"| tandem publisher, {codec} | {rate:,.0f} | {rate / self.bare_per_s:.2f} |"
            for codec, rate in self.publisher_per_s.items()
        )
        rows += [
            "",
            f"Target: publisher (lz4, the default) ≥ 0.70 of the bare loop: "
            f"**{best / self.bare_per_s:.2f}**.",
        ]
        return "\n".join(rows)


def _store() -> str:
    """A store of this run's own: earlier runs' version topics stay on the broker."""
    return "bench" + uuid.uuid4().hex[:8]


def _rows(records: int, items: int) -> list[tuple[str, bytes]]:
    return [
        (row.entity_id, encode(row.item_ids, row.scores))
        for row in synthetic_candidates(records, items, seed=5)
    ]


def _bare_produce(settings: Settings, rows: list[tuple[str, bytes]]) -> float:
    topic = f"bench.bare.{uuid.uuid4().hex[:8]}"
    create_topics(admin(settings), [NewTopic(topic, PARTITIONS, 1)])
    producer = make_producer(settings, bulk=True)
    start = time.perf_counter()
    for entity, value in rows:
        while True:
            try:
                producer.produce(
                    topic,
                    value=value,
                    key=entity.encode(),
                    partition=partition_of(entity, PARTITIONS),
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    return len(rows) / (time.perf_counter() - start)


def run_publish(settings: Settings, records: int, items: int) -> PublishResult:
    """Publisher (per codec) against the bare loop on the same records."""
    store = _store()
    settings = settings.model_copy(update={"stores": {store: StorePolicy()}})
    rows = _rows(records, items)
    bare = _bare_produce(settings, rows)
    rates = {}
    for codec in ("lz4", "zstd", "none"):
        source = list(synthetic_candidates(records, items, seed=5))
        with Publisher(settings, **{"compression.type": codec}) as publisher:
            start = time.perf_counter()
            publisher.publish(store, iter(source), partitions=PARTITIONS)
            rates[codec] = records / (time.perf_counter() - start)
    return PublishResult(records, items, rates, bare)


@dataclass(frozen=True)
class Phase:
    """One timed phase: its rate and the process's CPU (every thread) per record."""

    per_s: float
    cpu_us: float


@dataclass(frozen=True)
class MaterializeRun:
    """One repetition: the two baselines and the materializer on the same records."""

    consume: Phase
    redis: Phase
    materialize: Phase

    @property
    def rate_ratio(self) -> float:
        """The materializer's rate over the slower baseline's."""
        return self.materialize.per_s / min(self.consume.per_s, self.redis.per_s)

    @property
    def cpu_ratio(self) -> float:
        """The materializer's CPU per record over the two baselines' together."""
        return self.materialize.cpu_us / (self.consume.cpu_us + self.redis.cpu_us)


@dataclass(frozen=True)
class MaterializeResult:
    """Materializer throughput and CPU per record, and its two baselines', repeated."""

    records: int
    items: int
    broker: str
    runs: list[MaterializeRun]
    busy: float

    def _spread(self, phase: str, figure: str) -> Spread:
        return Spread.of([getattr(getattr(r, phase), figure) for r in self.runs])

    def markdown(self) -> str:
        """The RESULTS.md section."""
        rate_ratio = Spread.of([r.rate_ratio for r in self.runs])
        cpu_ratio = Spread.of([r.cpu_ratio for r in self.runs])
        rows = [
            "## Materializing (`python -m benchmarks materialize`)",
            "",
            f"Machine: {machine()}; the whole machine's CPU was **{100 * self.busy:.0f}% busy** "
            f"during the run (everyone's). {self.records:,} records of {self.items} items, "
            f"{PARTITIONS} partitions, {self.broker}, Redis on loopback, {len(self.runs)} "
            "repetitions (each a version of a store of its own). Cells: median "
            "(lowest–highest). CPU is this process's own user + system time, every thread "
            "(librdkafka's too), per record.",
            "",
            "| figure | records/s | CPU µs / record |",
            "|---|---|---|",
        ]
        for phase, label in (
            ("consume", "(a) consume the version topic, no writes"),
            (
                "redis",
                "(b) MSET of the same values (1,000 a command, 2,000 a round trip), no consuming",
            ),
            (
                "materialize",
                "tandem materializer (decode, checksum, CAS batch, commit; group join excluded "
                "from the rate)",
            ),
        ):
            rate, cpu = self._spread(phase, "per_s"), self._spread(phase, "cpu_us")
            rows.append(f"| {label} | {rate.cell(',.0f')} | {cpu.cell('.1f')} |")
        rows += [
            "",
            f"Materializer over the slower of (a) and (b), same repetition: "
            f"**{rate_ratio.cell('.2f')}** (target ≥ 0.80).",
            f"Materializer CPU per record over (a) + (b): **{cpu_ratio.cell('.2f')}**.",
        ]
        return "\n".join(rows)


def _consume_all(settings: Settings, topic: str) -> tuple[float, list[tuple[str, bytes]]]:
    consumer = make_consumer(
        settings, "bench" + uuid.uuid4().hex[:6], **{"enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    rows: list[tuple[bytes | None, bytes | None]] = []
    ended = 0
    start = time.perf_counter()
    while ended < PARTITIONS:
        for msg in consumer.consume(5000, 1.0):
            if msg.error() is None:
                rows.append((msg.key(), msg.value()))
            else:
                ended += 1  # only partition EOF is expected here
    elapsed = time.perf_counter() - start
    consumer.close()
    return elapsed, [(k.decode(), v) for k, v in rows if k is not None and v is not None]


async def _redis_only(settings: Settings, rows: list[tuple[str, bytes]]) -> Phase:
    redis = connect(settings)
    prefix = "bench" + uuid.uuid4().hex[:6]
    cpu_before = time.process_time()
    start = time.perf_counter()
    for at in range(0, len(rows), 2000):  # as the materializer writes: MSETs of 1,000 pairs
        pipe = redis.pipeline(transaction=False)
        for chunk in range(at, min(at + 2000, len(rows)), 1000):
            args = [
                x
                for entity, value in rows[chunk : chunk + 1000]
                for x in (f"{prefix}:{entity}", value)
            ]
            pipe.execute_command("MSET", *args)
        await pipe.execute()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_before
    async for key in redis.scan_iter(match=f"{prefix}:*", count=2000):
        await redis.unlink(key)
    await redis.aclose()
    return Phase(len(rows) / elapsed, 1e6 * cpu / len(rows))


async def _materialize(settings: Settings, store: str, version: int) -> Phase:
    redis = connect(settings)
    registry = Registry(redis, Keys(settings.key_prefix))
    materializer = Materializer(settings, MaterializerOptions(group="b" + uuid.uuid4().hex[:6]))
    stop = asyncio.Event()
    cpu_before = time.process_time()
    task = asyncio.create_task(materializer.run(stop))
    while True:
        info = await registry.get(store, version)
        if info is not None and info.state in (State.LIVE, State.REJECTED):
            break
        await asyncio.sleep(0.01)
    done = time.monotonic()
    cpu = time.process_time() - cpu_before
    stop.set()
    await task
    await redis.aclose()
    assert materializer.first_record_at is not None
    return Phase(info.count / (done - materializer.first_record_at), 1e6 * cpu / info.count)


def run_materialize(
    settings: Settings, records: int, items: int, repeat: int = 3
) -> MaterializeResult:
    """Publish a version per repetition, then time both baselines and the materializer on it.

    Each repetition's version is of a store of its own: a second version of one store would
    also make the materializer expire the first one's keys as it goes live, which is
    retirement, not ingestion."""
    base = settings.model_copy(update={"key_prefix": "bench" + uuid.uuid4().hex[:6]})
    runs = []
    busy_before = machine_busy()
    for rep in range(repeat):
        store = _store()
        settings = base.model_copy(update={"stores": {store: StorePolicy(ttl_s=600)}})
        with Publisher(settings) as publisher:
            push = publisher.publish(
                store, synthetic_candidates(records, items, seed=6 + rep), partitions=PARTITIONS
            )
        cpu_before = time.process_time()
        consume_s, rows = _consume_all(settings, push.topic)
        consume_cpu = time.process_time() - cpu_before
        consume = Phase(len(rows) / consume_s, 1e6 * consume_cpu / len(rows))
        redis = asyncio.run(_redis_only(settings, rows))
        materialize = asyncio.run(_materialize(settings, store, push.version))
        runs.append(MaterializeRun(consume, redis, materialize))
    busy_after = machine_busy()
    busy = (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1])
    return MaterializeResult(records, items, broker_label(base), runs, busy)
