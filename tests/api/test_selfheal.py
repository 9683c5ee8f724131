"""Event ingestion heals itself, against a real Apache Kafka node and redis-server of this
module's own (so the broker can be stopped, paused and started again without touching the
session's).

* The broker is restarted (stopped, then started again on the same port and data directory)
  while events are posted at a steady rate: every POST answers within its bound, ``/readyz``
  answers 503 during the outage and 200 after, POSTs are accepted again without restarting the
  API, and every accepted event is on ``tandem.events`` once.
* The producer is put into librdkafka's real fatal state (``rd_kafka_test_fatal_error``, the state
  an idempotence failure such as UNKNOWN_PRODUCER_ID leaves it in) while events wait for a paused
  broker: the waiting POST answers 503 at once, the producer is replaced, and events, ``/readyz``
  and lifecycle records (a rollback's announcement) work again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import KafkaError, Producer
from pydantic import SecretStr

from tandem.api.app import create_app
from tandem.api.handlers import EVENTS_ACK_TIMEOUT_S
from tandem.api.keys import PRODUCER
from tandem.api.metrics import REGISTRY
from tandem.contracts import topics
from tandem.contracts.settings import Settings
from tandem.contracts.waiting import wait_for
from tandem.shell import devservices, kafka_broker
from tandem.store.connect import connect
from tandem.store.keys import Keys
from tests.api.conftest import put_version
from tests.helpers import read_messages

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": "Bearer s3cret-token"}
BATCH_INTERVAL_S = 0.1
EVENTS_PER_BATCH = 5
ANSWER_SLACK_S = 1.5  # what a POST may take beyond EVENTS_ACK_TIMEOUT_S on a busy machine
LAST_BATCHES_OK = 10


@dataclass
class Broker:
    """This module's Kafka node (its pid changes when it is started again)."""

    services: devservices.PrivateServices
    node: kafka_broker.KafkaNode


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Apache Kafka node and a redis-server of this module's own."""
    problem = kafka_broker.java_problem()
    if problem is not None:
        pytest.skip(problem)
    state_dir = tmp_path_factory.mktemp("selfheal")
    with devservices.private_services(state_dir, broker="kafka") as started:
        assert started.kafka_cluster is not None
        yield Broker(started, started.kafka_cluster.nodes[0])


@pytest.fixture
def own(broker: Broker, tmp_path: Path) -> Settings:
    """Settings on this module's broker and Redis, with an admin token and a key prefix of the
    test's own."""
    return Settings.load(
        kafka=broker.services.kafka,
        redis_url=broker.services.redis_url,
        key_prefix="t" + uuid.uuid4().hex[:12],
        state_dir=tmp_path / "state",
        partitions=3,
        admin_token=SecretStr("s3cret-token"),
        api_deadline_ms=500,
        api_redis_timeout_ms=400,
    )


@pytest.fixture
async def client(own: Settings) -> AsyncIterator[Client]:
    """The API on this module's services, with live u2i versions 1 and 2 (ready to serve)."""
    redis = connect(own)
    keys = Keys(own.key_prefix)
    await put_version(redis, keys, "u2i", 1, {"a": [("i", 1.0)]})
    await put_version(redis, keys, "u2i", 2, {"a": [("j", 1.0)]})
    await redis.aclose()
    async with TestClient(TestServer(create_app(own))) as test_client:
        yield test_client


# --------------------------------------------------------------------------- probes


async def readyz(client: Client) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz")
    body = orjson.loads(await response.read())
    assert set(body) == {"ready", "checks"}
    assert set(body["checks"]) == {"redis", "live_version", "broker", "events"}
    return response.status, body["checks"]


async def ready(client: Client) -> bool:
    status, checks = await readyz(client)
    return status == 200 and all(checks.values())


async def not_ready_for_events(client: Client) -> bool:
    status, checks = await readyz(client)
    return status == 503 and checks["events"] is False and checks["redis"] is True


def event(user: str, event_id: str) -> dict[str, str]:
    return {
        "user_id": user,
        "item_id": "i1",
        "event_type": "click",
        "device": "mobile",
        "event_id": event_id,
    }


async def post(client: Client, ids: list[str]) -> tuple[int, dict[str, Any]]:
    body = orjson.dumps([event(f"u{n % 7}", i) for n, i in enumerate(ids)])
    response = await client.post("/v1/events", data=body)
    return response.status, orjson.loads(await response.read())


async def accepted(client: Client) -> bool:
    status, _ = await post(client, ["probe-" + uuid.uuid4().hex])
    return status == 202


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def errors() -> float:
    """Requests of any route counted as ``outcome="error"`` so far (this process)."""
    return sum(
        s.value
        for metric in REGISTRY.collect()
        for s in metric.samples
        if s.name == "tandem_api_request_seconds_count" and s.labels.get("outcome") == "error"
    )


# --------------------------------------------------------------------------- steady load


@dataclass
class Batch:
    """One POST /v1/events of the load and its answer."""

    number: int
    sent_at: float
    event_ids: list[str]
    status: int = 0
    took_s: float = 0.0


@dataclass
class Load:
    """Batches POSTed at a steady rate, each on its own task, until stopped."""

    client: Client
    run: str = field(default_factory=lambda: "r" + uuid.uuid4().hex[:8])
    batches: list[Batch] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def post(self, batch: Batch) -> None:
        status, body = await post(self.client, batch.event_ids)
        batch.status, batch.took_s = status, time.monotonic() - batch.sent_at
        if status == 202:
            assert body["event_ids"] == batch.event_ids
        else:
            assert body["unconfirmed_event_ids"], body

    async def run_steadily(self) -> None:
        posts = []
        while not self.stopping.is_set():
            number = len(self.batches)
            ids = [f"{self.run}-{number}-{k}" for k in range(EVENTS_PER_BATCH)]
            batch = Batch(number, time.monotonic(), ids)
            self.batches.append(batch)
            posts.append(asyncio.create_task(self.post(batch)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), BATCH_INTERVAL_S)
        await asyncio.gather(*posts)

    def answered_since(self, at: float, status: int) -> list[Batch]:
        return [b for b in self.batches if b.sent_at >= at and b.status == status]

    def ids(self, status: int) -> list[str]:
        return [i for b in self.batches if b.status == status for i in b.event_ids]


# --------------------------------------------------------------------------- the tests


async def test_events_recover_after_a_broker_restart_without_restarting_the_api(
    broker: Broker, own: Settings, client: Client
) -> None:
    await wait_for(lambda: accepted(client), 60, "the API to take events")
    await wait_for(lambda: ready(client), 30, "/readyz to answer 200")
    errors_before = errors()
    load = Load(client)
    running = asyncio.create_task(load.run_steadily())
    try:
        await wait_for(lambda: _some(load.answered_since(0, 202)), 30, "events before the fault")
        await asyncio.to_thread(kafka_broker.stop_node, broker.node)
        stopped_at = time.monotonic()
        assert not kafka_broker.node_alive(broker.node)
        await wait_for(lambda: not_ready_for_events(client), 30, "/readyz to answer 503")
        await wait_for(
            lambda: _some(load.answered_since(stopped_at, 503)), 30, "a 503 during the outage"
        )
        broker.node = await asyncio.to_thread(kafka_broker.start_node_again, broker.node)
        started_at = time.monotonic()
        await wait_for(lambda: ready(client), 60, "/readyz to answer 200 after the restart")
        await wait_for(
            lambda: _some(load.answered_since(started_at, 202)), 60, "202s after the restart"
        )
        resumed = len(load.batches)
        await wait_for(
            lambda: _truthy(len(load.batches) >= resumed + LAST_BATCHES_OK),
            30,
            "more batches after the recovery",
        )
    finally:
        load.stopping.set()
        await running
    statuses = Counter(b.status for b in load.batches)
    assert set(statuses) <= {202, 503}, statuses
    slowest = max(b.took_s for b in load.batches)
    assert slowest <= EVENTS_ACK_TIMEOUT_S + ANSWER_SLACK_S, f"a POST took {slowest:.1f} s"
    assert [b.status for b in load.batches[-LAST_BATCHES_OK:]] == [202] * LAST_BATCHES_OK
    assert errors() == errors_before
    written = Counter(
        orjson.loads(m.value() or b"{}").get("event_id", "")
        for m in await asyncio.to_thread(read_messages, own, topics.EVENTS)
    )
    acknowledged = load.ids(202)
    assert acknowledged
    assert [i for i in acknowledged if written[i] != 1] == []  # each 202 event is there once


async def test_a_fatal_producer_is_replaced_and_events_flow_again(
    broker: Broker, own: Settings, client: Client
) -> None:
    await wait_for(lambda: accepted(client), 60, "the API to take events")
    await wait_for(lambda: ready(client), 30, "/readyz to answer 200")
    errors_before = errors()
    producer = client.app[PRODUCER]
    failed = producer.producer
    recreations = sample("tandem_api_producer_recreations_total")
    ids = [f"f{n}-{uuid.uuid4().hex[:6]}" for n in range(3)]
    os.kill(broker.node.pid, signal.SIGSTOP)  # events wait for the broker...
    try:
        waiting = asyncio.create_task(post(client, ids))

        async def queued() -> bool:
            return len(failed) >= len(ids)

        await wait_for(queued, 5, "the events to be queued on the producer")
        injected_at = time.monotonic()
        inject_fatal(failed)  # ...when the producer fails fatally
        status, body = await waiting
        answered_s = time.monotonic() - injected_at
        assert status == 503
        assert answered_s < EVENTS_ACK_TIMEOUT_S / 2, f"answered {answered_s:.1f} s after"
        assert "failed" in body["detail"]
        assert "being replaced" in body["detail"]
        assert (body["accepted_event_ids"], body["unconfirmed_event_ids"]) == ([], ids)

        async def replaced() -> bool:
            return sample("tandem_api_producer_recreations_total") > recreations

        await wait_for(replaced, 30, "the producer to be replaced")
        assert producer.producer is not failed
        assert producer.problem() is None  # the ack thread survived the fatal error
        status, _ = await readyz(client)
        assert status == 503  # the broker is still paused
    finally:
        os.kill(broker.node.pid, signal.SIGCONT)
    await wait_for(lambda: accepted(client), 60, "202 from the new producer")
    await wait_for(lambda: ready(client), 30, "/readyz to answer 200")
    # lifecycle records go through the new producer too
    response = await client.post("/v1/stores/u2i/rollback", headers=AUTH)
    assert response.status == 200, await response.text()

    async def announced() -> bool:
        records = await asyncio.to_thread(read_messages, own, topics.VERSIONS)
        return any(
            orjson.loads(m.value() or b"{}").get("rolled_back_from") == 2 and m.key() == b"u2i"
            for m in records
        )

    await wait_for(announced, 30, "the rollback's lifecycle record")
    text = await (await client.get("/metrics")).text()
    assert "tandem_api_producer_recreations_total" in text
    assert errors() == errors_before


# --------------------------------------------------------------------------- helpers


async def _some(batches: list[Batch]) -> bool:
    return bool(batches)


async def _truthy(value: bool) -> bool:
    return value


def _librdkafka() -> ctypes.CDLL:
    """The librdkafka that confluent-kafka uses (the wheel's copy, else the system's)."""
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*")) if libs.is_dir() else []
    name = str(found[0]) if found else ctypes.util.find_library("rdkafka")
    if name is None:
        pytest.skip("librdkafka not found to inject a fatal error")
    lib = ctypes.CDLL(name)
    lib.rd_kafka_name.restype = ctypes.c_char_p
    lib.rd_kafka_name.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_test_fatal_error.restype = ctypes.c_int
    lib.rd_kafka_test_fatal_error.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    return lib


def inject_fatal(producer: Producer, code: int = KafkaError.UNKNOWN_PRODUCER_ID) -> None:
    """Put ``producer`` into librdkafka's fatal state, as a broker that lost the idempotent
    producer's state does (``rd_kafka_test_fatal_error``: librdkafka's own hook for this).

    confluent-kafka's handle object starts with the ``rd_kafka_t *`` right after the Python
    object header; the handle's name confirms it was found."""
    lib = _librdkafka()
    rk = ctypes.c_void_p.from_address(id(producer) + object.__basicsize__).value
    assert rk is not None
    name = lib.rd_kafka_name(rk)
    assert isinstance(name, bytes)
    assert name.startswith(b"rdkafka#producer-"), name
    assert lib.rd_kafka_test_fatal_error(rk, code, b"injected by test_selfheal") == 0
