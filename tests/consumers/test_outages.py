"""The materializer through faults, against the real broker and Redis: Redis restarted mid-version,
Redis gone for longer than it waits, the broker restarted, SIGTERM, and batches delivered again.

Redis here is a redis-server of the test's own with an append-only file synced on every write, so
a SIGKILL loses nothing Redis acknowledged (a Redis without persistence loses the versions
themselves on a restart: `tandem replay` is the way back from that).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka.cimpl import NewTopic
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from tandem.batch.publish import allocate_version
from tandem.consumers.exceptions import BrokerUnavailable
from tandem.consumers.finalize import Finalizer
from tandem.consumers.gates import VersionStats
from tandem.consumers.materializer import Materializer, MaterializerOptions
from tandem.consumers.metrics import REGISTRY
from tandem.consumers.records import Record
from tandem.consumers.sink import VersionSink
from tandem.contracts import topics
from tandem.contracts.checksum import combine, record_digest, to_hex
from tandem.contracts.codec import encode
from tandem.contracts.control import (
    Control,
    EndOfPush,
    Headers,
    StartOfPush,
    attachment_headers,
    control_headers,
    record_headers,
)
from tandem.contracts.kafka import admin, create_topics, make_producer
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State
from tandem.shell import devservices, kafka_broker, processes
from tandem.store.connect import connect
from tandem.store.keys import Keys
from tandem.store.progress import PartitionProgress
from tandem.store.registry import Registry, VersionInfo
from tandem.store.writer import VersionWriter
from tests.conftest import Services
from tests.helpers import read_dlq, wait_for

pytestmark = pytest.mark.integration

SIGTERM_BOUND_S = 10.0
Message = tuple[bytes | None, bytes, Headers]  # key, value, headers


# --------------------------------------------------------------------------- helpers


@dataclass
class DurableRedis:
    """A redis-server of this test's own, with an append-only file fsynced on every write."""

    port: int
    data_dir: Path
    started: devservices.Started | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.started = await asyncio.to_thread(
            devservices.start_redis, self.port, self.data_dir, 20, durable=True
        )

    def kill(self) -> None:
        """SIGKILL: a crash, the append-only file keeps what Redis acknowledged."""
        if self.started is not None:
            os.kill(self.started.pid, signal.SIGKILL)
            devservices.stop(self.started.pid)  # reaps it
        self.started = None


@pytest.fixture
async def durable_redis(tmp_path: Path) -> AsyncIterator[DurableRedis]:
    redis = DurableRedis(devservices.free_port(), tmp_path / "redis")
    await redis.start()
    yield redis
    redis.kill()


def on_redis(settings: Settings, redis: DurableRedis) -> Settings:
    url = Settings.load(redis_url=redis.url).redis_url
    return settings.model_copy(update={"redis_url": url})


@dataclass
class SlowPush:
    """A one-partition push written in steps, so a fault can land between them."""

    settings: Settings
    store: str
    version: int = field(default_factory=allocate_version)
    count: int = 0
    checksum: int = 0

    @property
    def topic(self) -> str:
        return topics.version_topic(self.store, self.version)

    def start(self) -> SlowPush:
        create_topics(admin(self.settings), [NewTopic(self.topic, 1, 1)])
        start = StartOfPush(1, int(time.time() * 1000), {}).encode()
        self._send([(None, start, control_headers(Control.START_OF_PUSH, *self._id))])
        return self

    def records(self, tag: str, n: int) -> None:
        batch: list[Message] = []
        for e in range(n):
            key, value = f"{tag}{e}".encode(), encode([f"i{e}", "i0"], [0.9, 0.1])
            batch.append((key, value, record_headers(*self._id)))
            self.checksum = combine(self.checksum, record_digest(key, value))
        self.count += n
        self._send(batch)

    def end(self) -> None:
        eop = EndOfPush(self.count, self.checksum).encode()
        self._send([(None, eop, control_headers(Control.END_OF_PUSH, *self._id))])

    @property
    def _id(self) -> tuple[str, int]:
        return self.store, self.version

    def _send(self, messages: list[Message]) -> None:
        producer = make_producer(self.settings, bulk=True)
        for key, value, headers in messages:
            producer.produce(self.topic, key=key, value=value, partition=0, headers=headers)
        assert producer.flush(30) == 0


async def applied(redis: Redis, keys: Keys, store: str, version: int) -> int:
    """Records of the version the materializer has applied so far."""
    progress = await VersionWriter(redis, keys, store, version).load_all()
    return sum(p.count for p in progress.values())


async def applied_at_least(settings: Settings, push: SlowPush, n: int) -> None:
    redis = connect(settings)
    keys = Keys(settings.key_prefix)
    try:

        async def probe() -> bool:
            return await applied(redis, keys, push.store, push.version) >= n

        await wait_for(probe, 60, f"{n} records of v{push.version} to be applied")
    finally:
        await redis.aclose()


async def live(settings: Settings, push: SlowPush, timeout_s: float = 60) -> VersionInfo:
    """The version's record once it is live (a rejection fails at once)."""
    redis = connect(settings)
    registry = Registry(redis, Keys(settings.key_prefix))
    try:

        async def probe() -> VersionInfo | None:
            info = await registry.get(push.store, push.version)
            if info is not None and info.state is State.REJECTED:
                raise AssertionError(f"v{push.version} was rejected: {info.reasons}")
            return info if info is not None and info.state is State.LIVE else None

        return await wait_for(probe, timeout_s, f"{push.store} v{push.version} to go live")
    finally:
        await redis.aclose()


def assert_exact(info: VersionInfo, push: SlowPush) -> None:
    assert info.count == push.count
    assert info.checksum == to_hex(push.checksum)


def retries(service: str) -> float:
    """Operations the materializers of this process retried in outages of ``service``."""
    value = REGISTRY.get_sample_value(
        "tandem_materializer_outage_retries_total", {"service": service}
    )
    return value or 0.0


@contextlib.asynccontextmanager
async def materializer_task(
    settings: Settings, **options: object
) -> AsyncIterator[asyncio.Task[None]]:
    """A materializer running in this event loop; the block sees its task (to assert it kept
    running), and the run must end cleanly when asked to stop."""
    group = "g" + uuid.uuid4().hex[:8]
    materializer = Materializer(settings, MaterializerOptions(group=group, **options))  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(materializer.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def tandem_log(component: processes.Component) -> str:
    return component.log_path.read_text(errors="replace")


async def exit_code(component: processes.Component, timeout_s: float) -> int:
    """The process's exit code once it has exited (at most ``timeout_s`` from now)."""
    try:
        return await asyncio.to_thread(component.proc.wait, timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"`tandem {component.name}` still runs after {timeout_s:g} s:\n"
            + tandem_log(component)[-2000:]
        ) from None


# --------------------------------------------------------------------------- redelivery


def batch_with_a_bad_record(store: str, version: int) -> tuple[list[Record], int]:
    """START, an attachment, two records around an undecodable one, END: (messages, checksum)."""
    topic = topics.version_topic(store, version)
    good = [(b"u1", encode(["i1"], [0.5])), (b"u2", encode(["i2"], [0.5]))]
    checksum = combine(*(record_digest(k, v) for k, v in good))
    start = StartOfPush(1, 1, {}).encode()
    raw: list[Message] = [
        (None, start, control_headers(Control.START_OF_PUSH, store, version)),
        (None, b"model text", attachment_headers(store, version, "model")),
        (*good[0], record_headers(store, version)),
        (b"bad key!", b"", record_headers(store, version)),
        (*good[1], record_headers(store, version)),
        (
            None,
            EndOfPush(2, checksum).encode(),
            control_headers(Control.END_OF_PUSH, store, version),
        ),
    ]
    messages = [Record(topic, 0, n, key, value, h) for n, (key, value, h) in enumerate(raw)]
    return messages, checksum


async def test_a_redelivered_batch_sends_its_dead_letters_once(
    store_settings: Settings, store: str, redis: Redis, keys: Keys
) -> None:
    version = allocate_version()
    messages, checksum = batch_with_a_bad_record(store, version)
    producer = make_producer(store_settings, bulk=False)
    stale = VersionSink(redis, store_settings, producer, "materializer")
    # A zombie that read the partition's progress before anything was applied...
    assert (await stale.apply(store, version, 0, [])).offset == -1
    owner = VersionSink(redis, store_settings, producer, "materializer")
    done = await owner.apply(store, version, 0, messages)
    assert (done.count, done.checksum, done.dlq, done.ended) == (2, checksum, 1, True)
    model = keys.model(store, version)
    assert await redis.get(model) == b"model text"
    await redis.delete(model)  # so that writing it again would show
    # ...gets the same batch: its compare-and-set fails, so nothing is dead-lettered or written.
    assert await stale.apply(store, version, 0, messages) == done
    # A new owner after a rebalance gets it again from the last committed offset: all skipped.
    again = VersionSink(redis, store_settings, producer, "materializer")
    assert await again.apply(store, version, 0, messages) == done
    dead = await asyncio.to_thread(read_dlq, store_settings, messages[0].topic)
    assert [(key, offset) for key, _, offset in dead] == [(b"bad key!", b"3")]
    assert await redis.get(model) is None


async def test_a_write_whose_answer_redis_lost_still_sends_its_dead_letters_once(
    store_settings: Settings, store: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = allocate_version()
    messages, checksum = batch_with_a_bad_record(store, version)
    sink = VersionSink(redis, store_settings, make_producer(store_settings, bulk=False), "m")
    writer = sink.writer(store, version)
    write = writer.apply

    async def answer_lost(
        partition: int,
        before: PartitionProgress,
        after: PartitionProgress,
        entries: list[tuple[str, bytes]],
    ) -> None:
        await write(partition, before, after, entries)
        if after != before:  # the compare-and-set went through; its answer never arrives
            raise redis_errors.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(writer, "apply", answer_lost)
    with pytest.raises(redis_errors.ConnectionError):
        await sink.apply(store, version, 0, messages)
    monkeypatch.setattr(writer, "apply", write)
    done = await sink.apply(store, version, 0, messages)  # what the materializer's retry does
    assert (done.count, done.checksum, done.dlq) == (2, checksum, 1)
    assert await sink.apply(store, version, 0, messages) == done
    dead = await asyncio.to_thread(read_dlq, store_settings, messages[0].topic)
    assert [(key, offset) for key, _, offset in dead] == [(b"bad key!", b"3")]


# --------------------------------------------------------------------------- Redis outages


async def test_a_redis_restart_mid_version_is_ridden_out(
    store_settings: Settings, store: str, durable_redis: DurableRedis
) -> None:
    own = on_redis(store_settings, durable_redis)
    push = SlowPush(own, store).start()
    push.records("a", 400)
    before = retries("redis")
    async with materializer_task(own, batch_size=50, redis_outage_s=60) as task:
        await applied_at_least(own, push, 400)
        durable_redis.kill()
        push.records("b", 400)  # arrives while Redis is down
        push.end()

        async def retried() -> bool:
            return retries("redis") > before

        await wait_for(retried, 30, "the materializer to retry its Redis write")
        assert not task.done()
        await durable_redis.start()
        info = await live(own, push)
        assert not task.done(), "the materializer must not have needed a restart"
    assert_exact(info, push)


async def test_a_long_redis_outage_exits_non_zero_and_a_restart_resumes(
    store_settings: Settings, store: str, durable_redis: DurableRedis, tmp_path: Path
) -> None:
    own = on_redis(store_settings, durable_redis)
    push = SlowPush(own, store).start()
    push.records("a", 200)
    args = ["materialize", "--batch-size", "50", "--redis-outage-s", "3"]
    materializer = processes.start("materialize", args, own, tmp_path)
    try:
        await applied_at_least(own, push, 200)
        durable_redis.kill()
        push.records("b", 200)
        push.end()
        code = await exit_code(materializer, 60)
    finally:
        materializer.stop()
    assert code == 1, tandem_log(materializer)[-2000:]
    errors = [line for line in tandem_log(materializer).splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert f"Redis at {durable_redis.url} did not take" in errors[0]
    assert "for 3 s" in errors[0]
    assert "start `tandem materialize` again" in errors[0]
    await durable_redis.start()
    again = processes.start("resume", ["materialize", "--until-idle", "2"], own, tmp_path)
    try:
        assert await exit_code(again, 90) == 0, tandem_log(again)[-2000:]
    finally:
        again.stop()
    assert_exact(await live(own, push, 5), push)


async def test_a_decision_redis_interrupts_is_resumed_not_left_ingested(
    store_settings: Settings, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Finalizer.gate
    interrupted: list[int] = []

    async def gate_fails_once(
        self: Finalizer, info: VersionInfo, stats: VersionStats, *, cutover: bool
    ) -> VersionInfo:
        if not interrupted:  # ingested and announced, not yet gated: Redis goes away
            interrupted.append(info.version)
            raise redis_errors.ConnectionError("Connection closed by server.")
        return await gate(self, info, stats, cutover=cutover)

    monkeypatch.setattr(Finalizer, "gate", gate_fails_once)
    push = SlowPush(store_settings, store).start()
    push.records("a", 30)
    push.end()
    async with materializer_task(store_settings) as task:
        info = await live(store_settings, push)
        assert not task.done()
    assert interrupted == [push.version]
    assert_exact(info, push)


# --------------------------------------------------------------------------- SIGTERM


async def sigterm(component: processes.Component) -> tuple[int, float]:
    """SIGTERM the process: its exit code and how long it took to exit."""
    began = time.monotonic()
    component.proc.send_signal(signal.SIGTERM)
    code = await exit_code(component, SIGTERM_BOUND_S)
    took = time.monotonic() - began
    print(f"`tandem {component.name}` exited with {code} {took:.2f} s after SIGTERM")
    return code, took


async def test_sigterm_stops_the_materializer_within_10_s(
    store_settings: Settings, store: str, tmp_path: Path
) -> None:
    materializer = processes.start("materialize", ["materialize"], store_settings, tmp_path)
    try:
        push = SlowPush(store_settings, store).start()
        push.records("a", 50)
        push.end()
        await live(store_settings, push)  # it consumes, in its group
        code, took = await sigterm(materializer)
    finally:
        materializer.stop()
    assert code == 0, tandem_log(materializer)[-2000:]
    assert took < SIGTERM_BOUND_S


async def test_sigterm_during_a_redis_outage_stops_the_materializer_within_10_s(
    store_settings: Settings, store: str, durable_redis: DurableRedis, tmp_path: Path
) -> None:
    own = on_redis(store_settings, durable_redis)
    push = SlowPush(own, store).start()
    push.records("a", 100)
    args = ["materialize", "--redis-outage-s", "600"]
    materializer = processes.start("materialize", args, own, tmp_path)
    try:
        await applied_at_least(own, push, 100)
        durable_redis.kill()
        push.records("b", 100)

        async def retrying() -> bool:
            materializer.check()
            return "retrying in" in tandem_log(materializer)

        await wait_for(retrying, 30, "the materializer to retry its Redis write")
        code, took = await sigterm(materializer)
    finally:
        materializer.stop()
    assert code == 0, tandem_log(materializer)[-2000:]
    assert took < SIGTERM_BOUND_S


# --------------------------------------------------------------------------- broker outage


@pytest.fixture
def kafka_node(services: Services) -> Iterator[kafka_broker.KafkaNode]:
    """The session's Apache Kafka node (as last started), started again at the end if a test
    left it stopped."""
    cluster = services.started.kafka_cluster if services.started is not None else None
    if cluster is None or len(cluster.nodes) != 1:
        pytest.skip("needs the one-node Apache Kafka the tests start (not Tansu, not yours)")
    state_dir = cluster.nodes[0].data_dir.parent.parent

    def latest() -> kafka_broker.KafkaNode:
        found = kafka_broker.read_cluster(state_dir)
        return (found or cluster).nodes[0]

    yield latest()
    node = latest()
    if not kafka_broker.node_alive(node):
        kafka_broker.start_node_again(node, 90)


async def test_a_broker_restart_mid_version_is_ridden_out(
    store_settings: Settings, store: str, kafka_node: kafka_broker.KafkaNode
) -> None:
    push = SlowPush(store_settings, store).start()
    push.records("a", 400)
    before = retries("kafka")
    # Beside it, one that waits out a broker outage for 2 s only.
    options = MaterializerOptions(group="g" + uuid.uuid4().hex[:8], broker_outage_s=2)
    impatient = asyncio.create_task(Materializer(store_settings, options).run(asyncio.Event()))
    try:
        async with materializer_task(store_settings, batch_size=50) as task:
            await applied_at_least(store_settings, push, 400)
            await asyncio.to_thread(kafka_broker.stop_node, kafka_node)

            async def probed() -> bool:
                return retries("kafka") > before

            await wait_for(probed, 30, "the materializer to notice the broker gone")

            async def gave_up() -> bool:
                return impatient.done()

            await wait_for(gave_up, 30, "the 2 s materializer to give up")
            with pytest.raises(BrokerUnavailable, match=r"did not answer for 2 s"):
                await impatient
            assert not task.done()
            await asyncio.to_thread(kafka_broker.start_node_again, kafka_node, 90)
            push.records("b", 400)
            push.end()
            info = await live(store_settings, push, 90)
            assert not task.done(), "the materializer must not have needed a restart"
    finally:
        impatient.cancel()
    assert_exact(info, push)
