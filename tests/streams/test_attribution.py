"""Attribution in the stream worker, against the real broker and Redis."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest
from click.testing import CliRunner
from redis.asyncio import Redis

from tandem.api.impressions import Impression, record
from tandem.contracts import topics
from tandem.contracts.kafka import make_producer
from tandem.contracts.schemas import Event
from tandem.contracts.settings import Settings
from tandem.shell.cli import main
from tandem.shell.processes import environment
from tandem.store.experiments import VariantStats, parse_counters
from tandem.store.keys import Keys
from tandem.store.online import Assignment
from tandem.streams import attribution
from tandem.streams.app import WorkerOptions
from tandem.streams.attribution import Attribution
from tandem.streams.produce import EventProducer
from tandem.streams.runner import running
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

LIVE, CANARY = 30_000_000_000_000_001, 30_000_000_000_000_002


def impression(
    user: str, request_id: str, items: list[str], canary: bool, age_s: float = 0.0
) -> bytes:
    """A record as the API logs it (``age_s`` ago): u2i live or canary, in the experiment of
    CANARY."""
    body = {
        "user_id": user,
        "items": [{"item_id": i, "score": 1.0, "sources": ["u2i"]} for i in items],
        "versions": {"u2i": str(CANARY if canary else LIVE), "i2i": None, "popular": None},
        "degraded": False,
    }
    assignment = Assignment(("u2i",) if canary else (), (("u2i", CANARY, 0.5),))
    found = Impression(
        request_id, int((time.time() - age_s) * 1000), 3.0, False, orjson.dumps(body), assignment
    )
    return orjson.dumps(record(found))


def event(user: str, item: str, kind: str, request_id: str | None = None) -> Event:
    return Event(user, item, kind, int(time.time() * 1000), uuid.uuid4().hex, request_id=request_id)


async def test_events_are_attributed_to_their_impressions(
    settings: Settings, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A click naming no impression, read before the answer it came from, waits for it (as
    # long as one naming it does here, so the test does not depend on how soon it is read).
    monkeypatch.setattr(
        attribution, "WAIT_FOR_LAST_IMPRESSION_S", attribution.WAIT_FOR_IMPRESSION_S
    )
    user1, user2, user3, user4 = ("u" + uuid.uuid4().hex[:10] for _ in range(4))
    options = WorkerOptions(app_id="w" + uuid.uuid4().hex[:8])
    producer = make_producer(settings, bulk=False)
    events = EventProducer(settings)

    def log(*records: tuple[str, bytes]) -> None:
        for user, value in records:
            producer.produce(topics.IMPRESSIONS, key=user.encode(), value=value)
        producer.flush(10)

    def send(*found: Event) -> None:
        for e in found:
            events.send(e)
        events.flush()

    async with running(settings, options) as worker:
        log(
            (user1, impression(user1, "r1", ["a0", "a1"], canary=False)),
            (user2, impression(user2, "r2", ["b0"], canary=True)),
        )

        async def written() -> bool:  # the new group has read the shared topic up to them
            found = [await redis.exists(keys.last_impression(u)) for u in (user1, user2)]
            return all(found)

        # Events without a request id count against the last impression the worker has seen;
        # the two topics are consumed independently, so the test waits for the impressions.
        await wait_for(written, 60, "the worker to write the impressions")
        # user3 clicks before the worker sees the impression it names: the click waits for it;
        # user4's click names none, and waits for the user's last impression to show its item.
        send(event(user3, "b1", "click", "r3"), event(user4, "c1", "click"))

        async def waiting() -> bool:  # kept through more than one attribution pass
            since = {e.user_id: t for e, t in worker.attribution.events}
            return all(time.monotonic() - since.get(u, 1e18) > 0.5 for u in (user3, user4))

        await wait_for(waiting, 30, "the two clicks to wait for their impressions")
        send(
            event(user1, "a1", "click", "r1"),
            event(user1, "a1", "click", "r1"),  # one impression counts one click
            event(user1, "a0", "purchase"),  # no request id: the user's last impression
            event(user2, "b0", "click"),
            event(user2, "zz", "click"),  # not shown: not attributed
            event(user2, "b0", "view"),  # views are not attributed
        )
        log(
            (user3, impression(user3, "r3", ["b1"], canary=True)),
            (user4, impression(user4, "r4", ["c1"], canary=True)),
        )

        async def counted() -> tuple[VariantStats, VariantStats] | None:
            stats = parse_counters(await redis.hgetall(keys.experiment("u2i", CANARY)))
            control, canary = stats["control"], stats["canary"]
            return (control, canary) if control.purchase == 1 and canary.click == 3 else None

        control, canary = await wait_for(counted, timeout_s=30, what="attributed events")
    assert (control.impressions, control.click, control.purchase) == (1, 1, 1)
    assert (canary.impressions, canary.click, canary.purchase) == (3, 3, 0)
    online = await redis.hgetall(keys.online("u2i"))
    assert online[f"{LIVE}:control:click".encode()] == b"1"
    assert online[f"{CANARY}:canary:impressions".encode()] == b"3"

    shown = await asyncio.to_thread(  # the command runs its own event loop
        CliRunner().invoke,
        main,
        ["experiments", "show", "u2i", "--json"],
        env=environment(settings),
    )
    assert shown.exit_code == 0, shown.output
    rows = orjson.loads(shown.output)[0]["online"]
    (row,) = [r for r in rows if r["version"] == str(LIVE) and r["variant"] == "control"]
    assert (row["impressions"], row["clicks"], row["purchases"], row["ctr"]) == (1, 1, 1, 1.0)


async def test_an_impression_counts_once_and_a_replayed_old_one_not_again(
    redis: Redis, keys: Keys
) -> None:
    """A redelivered record, a retried flush, and a new consumer group replaying the topic from
    its start must not count the same answer twice."""
    attribution = Attribution(redis, keys, window_s=60)
    field = f"{LIVE}:control:impressions"

    async def count() -> int:
        return int(await redis.hget(keys.online("u2i"), field) or 0)

    before = await count()
    user = "u" + uuid.uuid4().hex[:10]
    fresh = impression(user, "r" + uuid.uuid4().hex[:10], ["a"], canary=False)
    attribution.add_impression(fresh)
    attribution.add_impression(fresh)  # redelivered within one batch
    await attribution.flush()
    attribution.add_impression(fresh)  # redelivered later (or the batch retried)
    await attribution.flush()
    assert await count() == before + 1
    old = impression(user, "r" + uuid.uuid4().hex[:10], ["b"], canary=False, age_s=120)
    attribution.add_impression(old)  # older than the window: counted when it was new
    await attribution.flush()
    assert await count() == before + 1
    other = impression(user, "r" + uuid.uuid4().hex[:10], ["c"], canary=False, age_s=30)
    attribution.add_impression(other)
    await attribution.flush()
    assert await count() == before + 2
