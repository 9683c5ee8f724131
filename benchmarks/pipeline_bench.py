"""``python -m benchmarks publish`` and ``python -m benchmarks materialize``: the version pipeline
against bare confluent-kafka and bare Redis, measured in the same run."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.cimpl import NewTopic

from benchmarks.common import machine
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
class MaterializeResult:
    """Materializer throughput and its two baselines."""

    records: int
    items: int
    materialize_per_s: float
    consume_per_s: float
    redis_per_s: float

    def markdown(self) -> str:
        """The RESULTS.md section."""
        slower = min(self.consume_per_s, self.redis_per_s)
        return "\n".join(
            [
                "## Materializing (`python -m benchmarks materialize`)",
                "",
                f"Machine: {machine()}. {self.records:,} records of {self.items} items, "
                f"{PARTITIONS} partitions, embedded broker, Redis on loopback.",
                "",
                "| figure | records/s |",
                "|---|---|",
                f"| (a) consume the version topic, no writes | {self.consume_per_s:,.0f} |",
                f"| (b) pipelined SET of the same values, no consuming | {self.redis_per_s:,.0f} |",
                f"| tandem materializer (decode, checksum, CAS batch, commit; group join excluded) "
                f"| {self.materialize_per_s:,.0f} |",
                "",
                f"Target: ≥ 0.50 of the slower of (a) and (b): "
                f"**{self.materialize_per_s / slower:.2f}**.",
            ]
        )


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


async def _redis_only(settings: Settings, rows: list[tuple[str, bytes]]) -> float:
    redis = connect(settings)
    prefix = "bench" + uuid.uuid4().hex[:6]
    start = time.perf_counter()
    for at in range(0, len(rows), 2000):
        pipe = redis.pipeline(transaction=False)
        for entity, value in rows[at : at + 2000]:
            pipe.set(f"{prefix}:{entity}", value, ex=600)
        await pipe.execute()
    elapsed = time.perf_counter() - start
    async for key in redis.scan_iter(match=f"{prefix}:*", count=2000):
        await redis.unlink(key)
    await redis.aclose()
    return len(rows) / elapsed


async def _materialize(settings: Settings, store: str, version: int) -> float:
    redis = connect(settings)
    registry = Registry(redis, Keys(settings.key_prefix))
    materializer = Materializer(settings, MaterializerOptions(group="b" + uuid.uuid4().hex[:6]))
    stop = asyncio.Event()
    task = asyncio.create_task(materializer.run(stop))
    while True:
        info = await registry.get(store, version)
        if info is not None and info.state in (State.LIVE, State.REJECTED):
            break
        await asyncio.sleep(0.01)
    done = time.monotonic()
    stop.set()
    await task
    await redis.aclose()
    assert materializer.first_record_at is not None
    return info.count / (done - materializer.first_record_at)


def run_materialize(settings: Settings, records: int, items: int) -> MaterializeResult:
    """Publish one version, then time the materializer and both baselines on it."""
    store = _store()
    settings = settings.model_copy(
        update={
            "stores": {store: StorePolicy(ttl_s=600)},
            "key_prefix": "bench" + uuid.uuid4().hex[:6],
        }
    )
    with Publisher(settings) as publisher:
        push = publisher.publish(
            store, synthetic_candidates(records, items, seed=6), partitions=PARTITIONS
        )
    consume_s, rows = _consume_all(settings, push.topic)
    redis_rate = asyncio.run(_redis_only(settings, rows))
    materialize_rate = asyncio.run(_materialize(settings, store, push.version))
    return MaterializeResult(records, items, materialize_rate, len(rows) / consume_s, redis_rate)
