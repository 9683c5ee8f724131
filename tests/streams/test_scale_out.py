"""Two `tandem worker` processes with one app id share tandem.events; killing one hands its
partitions (and, from the changelog, its users' sessions) to the other: every user's session
then holds each of the user's events exactly once.

Tansu's DescribeGroups reports no member's assignment (see ``tests.helpers.assignments``): there
the sharing is seen from the workers themselves, as events each one applied (its
``tandem_worker_events_total``), and the hand-over from the sessions the survivor completes."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tandem.contracts import topics
from tandem.contracts.kafka import admin, is_tansu
from tandem.contracts.schemas import Event
from tandem.contracts.session import SessionState
from tandem.contracts.settings import Settings
from tandem.shell import processes
from tandem.shell.devservices import free_port
from tandem.store.keys import Keys
from tandem.streams.produce import EventProducer
from tests.helpers import assignments, metric, wait_for

pytestmark = pytest.mark.integration

USERS = 60
PROBE_USERS = 8


def send(settings: Settings, events: list[Event]) -> None:
    producer = EventProducer(settings)
    for event in events:
        producer.send(event)
    producer.flush()


async def sessions_complete(
    redis: Redis, keys: Keys, users: list[str], items: int
) -> dict[str, SessionState] | None:
    found = {}
    for user in users:
        raw = await redis.get(keys.session(user))
        if not isinstance(raw, bytes):
            return None
        state = SessionState.decode(raw)
        if len(state.items) < items:
            return None
        found[user] = state
    return found


async def test_two_workers_share_and_hand_over(
    settings: Settings, redis: Redis, keys: Keys, tmp_path: Path
) -> None:
    app_id = "w" + uuid.uuid4().hex[:8]
    args = ["worker", "--app-id", app_id, "--session-gap-s", "600"]
    tansu = is_tansu(settings)
    ports = [free_port() for _ in range(2)]
    workers = [
        processes.start(
            f"worker-{n}",
            [*args, "--metrics-port", str(ports[n])] if tansu else args,
            settings,
            tmp_path,
        )
        for n in range(2)
    ]
    client = admin(settings)
    users = [f"s{uuid.uuid4().hex[:6]}{n}" for n in range(USERS)]
    t0 = time.time_ns() // 1_000_000
    with processes.running(workers):

        async def shared() -> dict[str, set[int]] | None:
            for worker in workers:
                worker.check()
            held = await asyncio.to_thread(assignments, client, app_id, topics.EVENTS)
            return held if len(held) == 2 and all(held.values()) else None

        async def both_applied() -> list[float] | None:
            """Each worker applied events (so held partitions of tandem.events); until then,
            events of a few more probe users, spread over the partitions, once a second."""
            for worker in workers:
                worker.check()
            applied = [
                await asyncio.to_thread(metric, port, "tandem_worker_events_total")
                for port in ports
            ]
            if all(applied):
                return applied
            probes = [f"p{uuid.uuid4().hex[:8]}" for _ in range(PROBE_USERS)]
            await asyncio.to_thread(
                send, settings, [Event(p, "i0", "view", t0, f"{p}-0") for p in probes]
            )
            await asyncio.sleep(1)
            return None

        if tansu:
            await wait_for(both_applied, 90, "both workers to apply events of tandem.events")
        else:
            await wait_for(shared, 90, "both workers to hold partitions of tandem.events")
        first = [
            Event(user, f"i{n}", "view", t0 + n, f"{user}-{n}") for user in users for n in range(3)
        ]
        send(settings, first)
        await wait_for(
            lambda: sessions_complete(redis, keys, users, 3), 60, "every user's first events"
        )
        workers[0].proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(workers[0].proc.wait, 10)

        async def handed_over() -> dict[str, set[int]] | None:
            workers[1].check()
            held = await asyncio.to_thread(assignments, client, app_id, topics.EVENTS)
            everything = set(range(settings.events_partitions))
            return held if len(held) == 1 and everything in held.values() else None

        if not tansu:  # on Tansu: seen below, as every user's fourth event reaches Redis
            await wait_for(handed_over, 90, "the survivor to hold every partition")
        # Re-send the first events too: re-deliveries must not count twice.
        send(settings, [*first, *(Event(u, "i3", "click", t0 + 3, f"{u}-3") for u in users)])
        sessions = await wait_for(
            lambda: sessions_complete(redis, keys, users, 4), 90, "every user's fourth event"
        )
    for state in sessions.values():
        assert [item for item, _, _ in state.items] == ["i0", "i1", "i2", "i3"]
        assert state.counts == {"view": 3, "click": 1}
