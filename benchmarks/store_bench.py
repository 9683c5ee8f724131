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

from benchmarks.common import Spread, machine, percentile
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
    store_read_cpu_us: float  # this process's CPU per read, 32 in flight
    raw_read_cpu_us: float
    writer_cpu_us: float  # per record written
    bare_set_cpu_us: float
    packed_decode_us: float
    orjson_decode_us: float
    packed_bytes: int
    orjson_bytes: int


@dataclass(frozen=True)
class StoreBench:
    """Repeated runs of the store benchmark."""

    runs: list[StoreBenchResult]

    def _s(self, figure: str) -> Spread:
        return Spread.of([float(getattr(r, figure)) for r in self.runs])

    def _ratio(self, top: str, bottom: str) -> Spread:
        return Spread.of([getattr(r, top) / getattr(r, bottom) for r in self.runs])

    def _row(self, label: str, ours: str, base: str, fmt: str, target: str = "") -> str:
        return (
            f"| {label} | {self._s(ours).cell(fmt)} | {self._s(base).cell(fmt)} | "
            f"{self._ratio(ours, base).cell('.2f')} | {target} |"
        )

    def markdown(self) -> str:
        """The RESULTS.md section."""
        first = self.runs[0]
        return "\n".join(
            [
                "## Store (`python -m benchmarks store`)",
                "",
                f"Machine: {machine()}. {first.entities} entities of {ITEMS} items, "
                f"{first.reads} sequential reads each way, {len(self.runs)} repetitions; cells: "
                "median (lowest–highest). CPU: this process's own time (the client side; Redis "
                "is another process) per read or record. tandem reads with the API's read (one "
                "pipeline: pointers, the user script, popular, trending) and decodes; the "
                "baseline is a raw GET. tandem writes with the versioned writer (MSET pairs, "
                "progress compare-and-set); the baseline with bare MSETs of the same values.",
                "",
                "| figure | tandem | baseline | ratio | target |",
                "|---|---|---|---|---|",
                self._row("one-user read p50 (µs)", "store_p50_us", "raw_p50_us", ".0f", "≤ 1.3"),
                self._row("one-user read p99 (µs)", "store_p99_us", "raw_p99_us", ".0f"),
                self._row("reads/s, 32 in flight", "store_reads_per_s", "raw_reads_per_s", ",.0f"),
                self._row("CPU µs per read", "store_read_cpu_us", "raw_read_cpu_us", ".0f"),
                self._row("writes/s", "writer_per_s", "bare_set_per_s", ",.0f", "≥ 0.6"),
                self._row("CPU µs per record written", "writer_cpu_us", "bare_set_cpu_us", ".1f"),
                self._row(
                    f"decode of a {ITEMS}-item list (µs; packed {first.packed_bytes} B, orjson "
                    f"{first.orjson_bytes} B)",
                    "packed_decode_us",
                    "orjson_decode_us",
                    ".1f",
                    "< 1",
                ),
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


async def _throughput(
    call: object, entities: int, reads: int, in_flight: int = 32
) -> tuple[float, float]:
    """Reads per second and CPU µs per read of this process."""

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(reads // in_flight):
            await call(f"u{rng.randrange(entities)}")  # type: ignore[operator]

    done = (reads // in_flight) * in_flight
    cpu_before, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(in_flight)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_before
    return done / elapsed, 1e6 * cpu / done


async def _writes(
    redis: Redis, keys: Keys, rows: list[tuple[str, bytes]]
) -> tuple[float, float, float, float]:
    """Records per second and CPU µs per record: the versioned writer, then bare MSETs."""
    writer = VersionWriter(redis, keys, "u2i", 2)
    cpu, start = time.process_time(), time.perf_counter()
    for at in range(0, len(rows), BATCH):
        await writer.write(rows[at : at + BATCH])
    writer_s, writer_cpu = time.perf_counter() - start, time.process_time() - cpu
    cpu, start = time.process_time(), time.perf_counter()
    for at in range(0, len(rows), BATCH):
        args = [
            x
            for entity, value in rows[at : at + BATCH]
            for x in (f"{keys.prefix}:bare:{entity}", value)
        ]
        pipe = redis.pipeline(transaction=False)  # as the writer sends it
        pipe.execute_command("MSET", *args)
        await pipe.execute()
    bare_s, bare_cpu = time.perf_counter() - start, time.process_time() - cpu
    n = len(rows)
    return n / writer_s, n / bare_s, 1e6 * writer_cpu / n, 1e6 * bare_cpu / n


async def run(settings: Settings, entities: int = 20_000, reads: int = 5000) -> StoreBenchResult:
    """Write a version, promote it and measure reads and writes against bare Redis."""
    keys = Keys("bench" + uuid.uuid4().hex[:8])
    redis = connect(settings)
    try:
        rows = [(f"u{n}", encode(*_value(n))) for n in range(entities)]
        writer_per_s, bare_per_s, writer_cpu, bare_cpu = await _writes(redis, keys, rows)
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
        store_tput, store_cpu = await _throughput(store_read, entities, reads)
        raw_tput, raw_cpu = await _throughput(raw_get, entities, reads)
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
        store_cpu,
        raw_cpu,
        writer_cpu,
        bare_cpu,
        packed_us,
        json_us,
        packed_b,
        json_b,
    )
