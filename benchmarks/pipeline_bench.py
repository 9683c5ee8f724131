"""``python -m benchmarks publish`` and ``python -m benchmarks materialize``: the version pipeline
against bare confluent-kafka and bare Redis, measured in the same run."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
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


CODECS = ("lz4", "zstd", "none")


@dataclass(frozen=True)
class PublishRun:
    """One repetition: the bare produce loop and the publisher per compression codec."""

    bare: Phase
    publisher: dict[str, Phase]


@dataclass(frozen=True)
class PublishResult:
    """Publisher throughput and CPU per record per codec, and the bare loop's, repeated."""

    records: int
    items: int
    broker: str
    runs: list[PublishRun]
    busy: float

    def _spread(self, pick: Callable[[PublishRun], float]) -> Spread:
        return Spread.of([pick(r) for r in self.runs])

    def markdown(self) -> str:
        """The RESULTS.md section."""
        rows = [
            "## Publishing (`python -m benchmarks publish`)",
            "",
            f"Machine: {machine()}; the whole machine's CPU was **{100 * self.busy:.0f}% busy** "
            f"during the run (everyone's). {self.records:,} records of {self.items} items, "
            f"{PARTITIONS} partitions, {self.broker}, {len(self.runs)} repetitions. Cells: median "
            "(lowest–highest). CPU is this process's own user + system time, every thread "
            "(librdkafka's too), per record; ratios are taken within each repetition.",
            "",
            "| figure | records/s | CPU µs / record | rate over bare | CPU over bare |",
            "|---|---|---|---|---|",
            "| bare confluent-kafka produce loop (pre-encoded, lz4) | "
            f"{self._spread(lambda r: r.bare.per_s).cell(',.0f')} | "
            f"{self._spread(lambda r: r.bare.cpu_us).cell('.1f')} | 1.00 | 1.00 |",
        ]
        rows.extend(self._codec_row(codec) for codec in CODECS)
        rows += [
            "",
            "Target: publisher (lz4, the default) ≥ 0.70 of the bare loop's rate: "
            f"**{self._rate_ratio('lz4').cell('.2f')}**; its CPU per record over the bare "
            f"loop's: **{self._cpu_ratio('lz4').cell('.2f')}**.",
        ]
        return "\n".join(rows)

    def _codec_row(self, codec: str) -> str:
        rate = self._spread(lambda r: r.publisher[codec].per_s)
        cpu = self._spread(lambda r: r.publisher[codec].cpu_us)
        return (
            f"| tandem publisher (encode, checksum, produce), {codec} | {rate.cell(',.0f')} | "
            f"{cpu.cell('.1f')} | {self._rate_ratio(codec).cell('.2f')} | "
            f"{self._cpu_ratio(codec).cell('.2f')} |"
        )

    def _rate_ratio(self, codec: str) -> Spread:
        return self._spread(lambda r: r.publisher[codec].per_s / r.bare.per_s)

    def _cpu_ratio(self, codec: str) -> Spread:
        return self._spread(lambda r: r.publisher[codec].cpu_us / r.bare.cpu_us)


def _store() -> str:
    """A store of this run's own: earlier runs' version topics stay on the broker."""
    return "bench" + uuid.uuid4().hex[:8]


def _rows(records: int, items: int) -> list[tuple[str, bytes]]:
    return [
        (row.entity_id, encode(row.item_ids, row.scores))
        for row in synthetic_candidates(records, items, seed=5)
    ]


def _bare_produce(settings: Settings, rows: list[tuple[str, bytes]]) -> Phase:
    topic = f"bench.bare.{uuid.uuid4().hex[:8]}"
    create_topics(admin(settings), [NewTopic(topic, PARTITIONS, 1)])
    producer = make_producer(settings, bulk=True)
    cpu_before = time.process_time()
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
    return _phase(len(rows), start, cpu_before)


def _phase(records: int, start: float, cpu_before: float) -> Phase:
    """The rate and CPU per record since ``start`` (perf_counter) and ``cpu_before``."""
    cpu = time.process_time() - cpu_before
    return Phase(records / (time.perf_counter() - start), 1e6 * cpu / records)


def _publish(settings: Settings, store: str, records: int, items: int, codec: str) -> Phase:
    source = list(synthetic_candidates(records, items, seed=5))
    with Publisher(settings, **{"compression.type": codec}) as publisher:
        cpu_before = time.process_time()
        start = time.perf_counter()
        publisher.publish(store, iter(source), partitions=PARTITIONS)
        return _phase(records, start, cpu_before)


def run_publish(settings: Settings, records: int, items: int, repeat: int = 3) -> PublishResult:
    """Publisher (per codec) against the bare loop on the same records, ``repeat`` times."""
    store = _store()
    settings = settings.model_copy(update={"stores": {store: StorePolicy()}})
    rows = _rows(records, items)
    busy_before = machine_busy()
    runs = [
        PublishRun(
            _bare_produce(settings, rows),
            {codec: _publish(settings, store, records, items, codec) for codec in CODECS},
        )
        for _ in range(repeat)
    ]
    return PublishResult(records, items, broker_label(settings), runs, _busy_since(busy_before))


def _busy_since(before: tuple[float, float]) -> float:
    """How busy the whole machine was since ``before`` (a :func:`machine_busy` reading)."""
    after = machine_busy()
    return (after[0] - before[0]) / (after[1] - before[1])


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
    return MaterializeResult(records, items, broker_label(base), runs, _busy_since(busy_before))
