"""``python -m benchmarks store``: the store's read and write paths against bare Redis, measured
in the same run."""

from __future__ import annotations

import asyncio
import random
import time
import timeit
import uuid
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

from benchmarks.common import machine, percentile
from tandem.contracts.codec import decode, encode
from tandem.contracts.settings import Settings
from tandem.store.connect import connect
from tandem.store.keys import Keys
from tandem.store.lifecycle import Lifecycle
from tandem.store.online import OnlineReader
from tandem.store.writer import VersionWriter

ITEMS = 200
BATCH = 500


@dataclass(frozen=True)
class StoreBenchResult:
    """Figures of one run; each tandem figure has its bare-Redis baseline beside it."""

    entities: int
    reads: int
    store_p50_us: float
    store_p99_us: float
    raw_p50_us: float
    raw_p99_us: float
    store_reads_per_s: float
    raw_reads_per_s: float
    writer_per_s: float
    bare_set_per_s: float
    packed_decode_us: float
    orjson_decode_us: float
    packed_bytes: int
    orjson_bytes: int

    @property
    def read_ratio(self) -> float:
        """Store read p50 over raw GET p50 (target: at most 1.3)."""
        return self.store_p50_us / self.raw_p50_us

    @property
    def write_ratio(self) -> float:
        """Versioned writer throughput over bare pipelined SET (target: at least 0.6)."""
        return self.writer_per_s / self.bare_set_per_s

    def markdown(self) -> str:
        """The RESULTS.md section."""
        return "\n".join(
            [
                "## Store (`python -m benchmarks store`)",
                "",
                f"Machine: {machine()}. {self.entities} entities of {ITEMS} items, "
                f"{self.reads} sequential reads each way.",
                "",
                "| figure | tandem | baseline | ratio | target |",
                "|---|---|---|---|---|",
                f"| one-user read p50 (µs) | {self.store_p50_us:.0f} (the API's read, decoded) | "
                f"{self.raw_p50_us:.0f} (raw GET) | {self.read_ratio:.2f} | ≤ 1.3 |",
                f"| one-entity read p99 (µs) | {self.store_p99_us:.0f} | {self.raw_p99_us:.0f} | "
                f"{self.store_p99_us / self.raw_p99_us:.2f} | |",
                f"| reads/s, 32 in flight | {self.store_reads_per_s:,.0f} | "
                f"{self.raw_reads_per_s:,.0f} | "
                f"{self.store_reads_per_s / self.raw_reads_per_s:.2f} | |",
                f"| writes/s | {self.writer_per_s:,.0f} (versioned writer) | "
                f"{self.bare_set_per_s:,.0f} (bare pipelined SET) | "
                f"{self.write_ratio:.2f} | ≥ 0.6 |",
                f"| decode of a {ITEMS}-item list (µs) | {self.packed_decode_us:.1f} (packed, "
                f"{self.packed_bytes} B) | {self.orjson_decode_us:.1f} "
                f"(orjson, {self.orjson_bytes} B) | "
                f"{self.packed_decode_us / self.orjson_decode_us:.2f} | < 1 |",
            ]
        )


def _value(entity: int) -> tuple[list[str], list[float]]:
    rng = random.Random(entity)
    ids = [f"i{rng.randrange(1_000_000)}" for _ in range(ITEMS)]
    return ids, sorted((rng.random() for _ in range(ITEMS)), reverse=True)


def _codec_figures() -> tuple[float, float, int, int]:
    ids, scores = _value(1)
    packed = encode(ids, scores)
    as_json = orjson.dumps({"i": ids, "s": scores})
    loops = 5000
    packed_s = min(timeit.repeat(lambda: decode(packed), number=loops, repeat=5))
    json_s = min(timeit.repeat(lambda: orjson.loads(as_json), number=loops, repeat=5))
    return packed_s / loops * 1e6, json_s / loops * 1e6, len(packed), len(as_json)


async def _latencies(
    calls: tuple[object, object], entities: int, reads: int
) -> tuple[list[float], list[float]]:
    """Per-call latency of two paths, interleaved so that machine noise hits both alike."""
    samples: tuple[list[float], list[float]] = ([], [])
    rng = random.Random(3)
    for _ in range(reads):
        entity = f"u{rng.randrange(entities)}"
        for call, out in zip(calls, samples, strict=True):
            start = time.perf_counter()
            await call(entity)  # type: ignore[operator]
            out.append((time.perf_counter() - start) * 1e6)
    return samples


async def _throughput(call: object, entities: int, reads: int, in_flight: int = 32) -> float:
    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(reads // in_flight):
            await call(f"u{rng.randrange(entities)}")  # type: ignore[operator]

    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(in_flight)))
    return (reads // in_flight) * in_flight / (time.perf_counter() - start)


async def _writes(redis: Redis, keys: Keys, rows: list[tuple[str, bytes]]) -> tuple[float, float]:
    writer = VersionWriter(redis, keys, "u2i", 2)
    start = time.perf_counter()
    for at in range(0, len(rows), BATCH):
        await writer.write(rows[at : at + BATCH])
    writer_s = time.perf_counter() - start
    start = time.perf_counter()
    for at in range(0, len(rows), BATCH):
        pipe = redis.pipeline(transaction=False)
        for entity, value in rows[at : at + BATCH]:
            pipe.set(f"{keys.prefix}:bare:{entity}", value, ex=3600)
        await pipe.execute()
    bare_s = time.perf_counter() - start
    return len(rows) / writer_s, len(rows) / bare_s


async def run(settings: Settings, entities: int = 20_000, reads: int = 5000) -> StoreBenchResult:
    """Write a version, promote it and measure reads and writes against bare Redis."""
    keys = Keys("bench" + uuid.uuid4().hex[:8])
    redis = connect(settings)
    try:
        rows = [(f"u{n}", encode(*_value(n))) for n in range(entities)]
        writer_per_s, bare_per_s = await _writes(redis, keys, rows)
        await VersionWriter(redis, keys, "u2i", 2).seal()
        await Lifecycle(redis, keys).promote("u2i", 2, expected=None)
        reader = OnlineReader(redis, keys)
        base = keys.version_root("u2i", 2)

        async def raw_get(entity: str) -> bytes | str | None:
            value: bytes | str | None = await redis.get(keys.entity_unchecked(base, entity))
            return value

        async def store_read(entity: str) -> object:
            return await reader.read(entity, 20, "any", "global")

        await _latencies((store_read, raw_get), entities, 500)  # warm up both paths
        store_lat, raw_lat = await _latencies((store_read, raw_get), entities, reads)
        store_tput = await _throughput(store_read, entities, reads)
        raw_tput = await _throughput(raw_get, entities, reads)
        await Lifecycle(redis, keys).drop("u2i", 2)
        async for key in redis.scan_iter(match=f"{keys.prefix}:*", count=1000):
            await redis.unlink(key)
    finally:
        await redis.aclose()
    packed_us, json_us, packed_b, json_b = _codec_figures()
    return StoreBenchResult(
        entities,
        reads,
        percentile(store_lat, 50),
        percentile(store_lat, 99),
        percentile(raw_lat, 50),
        percentile(raw_lat, 99),
        store_tput,
        raw_tput,
        writer_per_s,
        bare_per_s,
        packed_us,
        json_us,
        packed_b,
        json_b,
    )
