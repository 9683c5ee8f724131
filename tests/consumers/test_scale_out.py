"""Two `tandem materialize` processes in one group share a version's partitions; killing one
hands its partitions to the other, and the version still goes live with the exact count and
checksum (nothing lost, nothing counted twice).

Tansu's DescribeGroups reports no member's assignment (see ``tests.helpers.assignments``): there
the sharing is seen from the materializers themselves, as records each one applied (its
``tandem_materializer_records_applied_total``), and the hand-over from the version going live."""

from __future__ import annotations

import asyncio
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from redis.asyncio import Redis

from tandem.batch.candidates_io import synthetic_candidates
from tandem.batch.publish import Publisher, PushResult
from tandem.contracts import topics
from tandem.contracts.kafka import admin, is_tansu
from tandem.contracts.schemas import CandidateList
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State
from tandem.shell import processes
from tandem.shell.devservices import free_port
from tandem.store.keys import Keys
from tandem.store.registry import Registry
from tandem.store.writer import VersionWriter
from tests.helpers import assignments, metric, wait_for

pytestmark = pytest.mark.integration

TOTAL = 30_000
PARTITIONS = 6


async def wait_until_shared(
    workers: list[processes.Component],
    client: AdminClient,
    group: str,
    topic: str,
    store: str,
    metrics_ports: list[int] | None,
) -> None:
    """Until both materializers hold partitions of ``topic``: as DescribeGroups reports, or (with
    ``metrics_ports``, on Tansu) as each one's count of applied records of ``store`` shows."""

    async def shared() -> dict[str, set[int]] | None:
        for worker in workers:
            worker.check()
        held = await asyncio.to_thread(assignments, client, group, topic)
        both = len(held) == 2 and all(held.values())
        return held if both and set().union(*held.values()) == set(range(PARTITIONS)) else None

    async def both_applied(ports: list[int]) -> list[float] | None:
        for worker in workers:
            worker.check()
        name = "tandem_materializer_records_applied_total"
        applied = [await asyncio.to_thread(metric, port, name, store=store) for port in ports]
        return applied if all(applied) else None

    what = "both materializers to hold partitions of the version"
    if metrics_ports is not None:
        await wait_for(lambda: both_applied(metrics_ports), 60, what)
        return
    held = await wait_for(shared, 60, what)
    assert sum(len(parts) for parts in held.values()) == PARTITIONS


async def test_two_materializers_share_and_hand_over(
    store_settings: Settings, store: str, redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    group = "m" + uuid.uuid4().hex[:8]
    args = ["materialize", "--group", group, "--batch-size", "50"]
    tansu = is_tansu(store_settings)
    ports = [free_port() for _ in range(2)]
    workers = [
        processes.start(
            f"materialize-{n}",
            [*args, "--metrics-port", str(ports[n])] if tansu else args,
            store_settings,
            tmp_path,
        )
        for n in range(2)
    ]
    client = admin(store_settings)
    rows = list(synthetic_candidates(TOTAL, 20, seed=5))
    half = threading.Event()
    resume = threading.Event()

    def paused() -> Iterator[CandidateList]:
        """The rows, with a pause halfway: the kill lands before END_OF_PUSH on any partition."""
        yield from rows[: TOTAL // 2]
        half.set()
        assert resume.wait(120), "the test never resumed the push"
        yield from rows[TOTAL // 2 :]

    def publish() -> PushResult:
        with Publisher(store_settings) as publisher:
            return publisher.publish(store, paused(), partitions=PARTITIONS)

    with processes.running(workers):
        pushing = asyncio.create_task(asyncio.to_thread(publish))
        await wait_for(lambda: asyncio.to_thread(half.wait, 0), 60, "half of the push")
        listed = await asyncio.to_thread(lambda: client.list_topics(timeout=10).topics)
        (_, version), topic = next(
            (parsed, name)
            for name in listed
            if (parsed := topics.parse_version_topic(name)) is not None and parsed[0] == store
        )
        await wait_until_shared(workers, client, group, topic, store, ports if tansu else None)
        writer = VersionWriter(redis, keys, store, version)

        async def some_applied() -> int | None:
            done = sum(p.count for p in (await writer.load_all()).values())
            return done if done > 0 else None

        await wait_for(some_applied, 60, "the first records to be applied")
        workers[0].proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(workers[0].proc.wait, 10)
        applied_at_kill = sum(p.count for p in (await writer.load_all()).values())
        resume.set()
        push = await pushing

        async def handed_over() -> dict[str, set[int]] | None:
            workers[1].check()
            held = await asyncio.to_thread(assignments, client, group, topic)
            return held if list(held.values()) == [set(range(PARTITIONS))] else None

        if not tansu:  # on Tansu: seen below, as the survivor alone completes the version
            await wait_for(handed_over, 60, "the survivor to hold every partition")

        async def decided() -> bool:
            workers[1].check()
            info = await Registry(redis, keys).get(store, push.version)
            return info is not None and info.state in (State.LIVE, State.REJECTED)

        await wait_for(decided, 120, "the surviving materializer to finish the version")
    info = await Registry(redis, keys).get(store, push.version)
    assert info is not None
    assert info.state is State.LIVE, info.reasons
    assert applied_at_kill <= TOTAL // 2  # no partition had ended when the victim died
    assert info.count == push.count == TOTAL
    assert info.checksum == push.checksum
