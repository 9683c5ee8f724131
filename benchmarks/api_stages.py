"""``python -m benchmarks.api_stages``: a recommendation's CPU, stage by stage, in-process.

Starts a redis-server of its own, seeds it as ``python -m benchmarks api`` does (200 candidates a
user, the LightGBM model of the batch stage's size), and calls ``RecommendationService.recommend``
for ``--requests`` distinct users (no cached answer, no session, no impression log, no HTTP),
with each stage's CPU time (``time.process_time_ns``) added up. Beside it, the same process times
the bare handler's Redis work (one ``GET`` of a user's list) and the read's two scripts alone
(as ``round_trip`` sends them, and through redis-py's pipeline), so the stages can be set
against what the bare handler pays. The HTTP side is the same code in both servers (aiohttp and
uvloop); ``python -m benchmarks api`` measures the whole.
"""

from __future__ import annotations

import asyncio
import functools
import random
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import uvloop

from benchmarks.api_bench import _seed, tiny_model
from tandem.api import service
from tandem.contracts.domain import U2I
from tandem.contracts.settings import Settings
from tandem.shell import devservices
from tandem.store.connect import Command, connect, round_trip, script
from tandem.store.hidden import HiddenItems
from tandem.store.keys import Keys
from tandem.store.online import OnlineReader
from tandem.store.scripts import POINTERS, USER_READ

WARM_UP = 300

# (owner, attribute, label): what is timed; nested stages count inside their callers too.
STAGES = (
    (service.RecommendationService, "_read", "first round trip (pipeline + decoding)"),
    (service, "merge_columns", "merge of the candidate lists"),
    (service.RecommendationService, "_rank", "re-rank (features, model, order)"),
    (service, "feature_matrix", "  of which features"),
    (service.RecommendationService, "_sync_hidden", "hidden items check"),
    (service.RecommendationService, "_assets", "re-ranker lookup"),
    (service, "_session", "session decode"),
    (service, "_fields", "answer fields"),
    (service, "_with_variant", "answer variant"),
    (service, "_envelope", "answer envelope"),
    (service.RecommendationService, "_cache", "cache write (queued)"),
)


def _timed(spent: Counter[str], label: str, function: Callable[..., Any]) -> Callable[..., Any]:
    if asyncio.iscoroutinefunction(function):

        @functools.wraps(function)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time_ns()
            try:
                return await function(*args, **kwargs)
            finally:
                spent[label] += time.process_time_ns() - started

        return timed_async

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time_ns()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label] += time.process_time_ns() - started

    return timed


async def _cpu_us(calls: int, call: Callable[[int], Awaitable[Any]]) -> float:
    started = time.process_time_ns()
    for n in range(calls):
        await call(n)
    return (time.process_time_ns() - started) / calls / 1000


async def _measure(settings: Settings, users: int, requests: int) -> list[tuple[str, float]]:
    redis = connect(settings)
    keys = Keys(settings.key_prefix)
    reader = OnlineReader(redis, keys)
    rec = service.RecommendationService(
        reader,
        service.Budget(deadline_ms=1_000, redis_timeout_ms=1_000, cache_ttl_s=5),  # none degraded
        ThreadPoolExecutor(max_workers=2),
        hidden_items=HiddenItems(redis, keys),
    )
    ids = [f"u{n}" for n in random.Random(1).sample(range(users), WARM_UP + requests)]
    try:
        for user in ids[:WARM_UP]:  # loads and compiles the model, fills the shared lists
            await rec.recommend(user, 20, None)
        await rec.drain()  # the model compiled
        for user in ids[:WARM_UP]:
            await rec.recommend(user, 20, None)
        spent: Counter[str] = Counter()
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in STAGES]
        for owner, name, label in STAGES:
            setattr(owner, name, _timed(spent, label, getattr(owner, name)))
        try:
            total = await _cpu_us(requests, lambda n: rec.recommend(ids[WARM_UP + n], 20, None))
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)
        rows = [("recommend(), whole", total)]
        rows += [(label, spent[label] / requests / 1000) for _, _, label in STAGES]
        accounted = sum(spent[label] for _, _, label in STAGES if not label.startswith(" "))
        rest = total - accounted / requests / 1000
        rows.append(("the rest (items, timers, metrics, loop)", rest))
        template = keys.entity_unchecked(keys.version_root(U2I, 1), "%s")
        rows.append(
            ("bare handler's GET", await _cpu_us(requests, lambda n: redis.get(template % ids[n])))
        )

        def the_scripts(n: int) -> list[Command]:
            user = ids[n]
            user_keys = [keys.epoch(user), keys.cache(user, 20, "any"), keys.session(user)]
            user_keys += [template % user, keys.user_hidden(user)]
            return [
                script(POINTERS, [keys.live(U2I)] * 8),
                script(USER_READ, user_keys, ["0", "1"]),
            ]

        async def pipelined(n: int) -> None:
            pipe = redis.pipeline(transaction=False)
            for command in the_scripts(n):
                pipe.execute_command(*command)
            await pipe.execute()

        rows.append(
            (
                "the read's 2 scripts, round_trip",
                await _cpu_us(requests, lambda n: round_trip(redis, the_scripts(n))),
            )
        )
        rows.append(("the same, redis-py's pipeline", await _cpu_us(requests, pipelined)))
        return rows
    finally:
        await rec.drain()
        await redis.aclose()


@click.command()
@click.option("--users", default=5_000, show_default=True, type=click.IntRange(1_000, 10**6))
@click.option("--requests", default=3_000, show_default=True, type=click.IntRange(100, 10**6))
def main(users: int, requests: int) -> None:
    """Time each stage of a recommendation in one process (CPU µs per request)."""
    requests = min(requests, users - WARM_UP)
    with tempfile.TemporaryDirectory() as tmp:
        started = devservices.start_redis(devservices.free_port(), Path(tmp))
        try:
            url = f"redis://127.0.0.1:{started.port}/0"
            settings = Settings.load(redis_url=url).model_copy(
                update={"key_prefix": "stages" + uuid.uuid4().hex[:6]}
            )
            asyncio.run(_seed(settings, users, tiny_model()))
            rows = uvloop.run(_measure(settings, users, requests))
        finally:
            devservices.stop(started.pid)
    click.echo(f"{'stage':40s} CPU µs per request ({requests} requests)")
    for label, us in rows:
        click.echo(f"{label:40s} {us:8.1f}")


if __name__ == "__main__":
    main()
