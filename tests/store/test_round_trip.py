"""``round_trip``, the hot path's commands sent together (on one Redis, straight to a pooled
connection): every reply in order, error replies, a Redis restarted under the pool, a read
abandoned halfway (real redis-server; on a cluster, the pipeline)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tandem.contracts.settings import Settings
from tandem.shell import devservices
from tandem.store.connect import connect, round_trip, script
from tandem.store.keys import Keys
from tandem.store.online import _Shared

pytestmark = pytest.mark.integration


async def test_replies_come_in_order_and_an_error_reply_leaves_the_connection_usable(
    redis: Redis, keys: Keys
) -> None:
    key, other = keys.session("rt1"), keys.session("rt2")
    await redis.set(key, b"value")
    replies = await round_trip(
        redis,
        [("GET", key), script("return {KEYS[1], ARGV[1]}", [other], ["x"]), ("GET", other)],
    )
    assert replies == [b"value", [other.encode(), b"x"], None]
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await round_trip(redis, [("SET", other, b"1"), ("SADD", key, b"m"), ("GET", other)])
    # Every reply of the refused batch was read: the next one gets its own replies.
    assert await round_trip(redis, [("GET", other), ("GET", key)]) == [b"1", b"value"]


BUSY_100_MS = """
local t = redis.call('TIME')
repeat
  local n = redis.call('TIME')
until (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 100000
return 'slow'
"""


async def test_a_read_abandoned_halfway_does_not_leak_into_the_next(
    redis: Redis, keys: Keys
) -> None:
    """A request's deadline abandons a round trip whose replies are still coming: they must not
    be read as the answers of the next one on the same connection."""
    key = keys.session("rt3")
    await redis.set(key, b"mine")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await round_trip(redis, [script(BUSY_100_MS, [key]), ("GET", key)])
    unset = keys.session("rt4")
    assert await round_trip(redis, [("GET", unset), ("GET", key)]) == [None, b"mine"]


async def test_a_restarted_redis_is_read_again_on_a_fresh_connection(tmp_path: Path) -> None:
    own = devservices.start_redis(devservices.free_port(), tmp_path)
    url = f"redis://127.0.0.1:{own.port}/0"
    redis = connect(Settings.load(redis_url=url))
    try:
        await redis.set("k", b"1")
        assert await round_trip(redis, [("GET", "k")]) == [b"1"]  # pooled now
        devservices.stop(own.pid)
        again = devservices.start_redis(own.port, tmp_path)
        try:
            # The pooled connection is stale: dropped, and the command sent on a fresh one.
            assert await round_trip(redis, [("SET", "k", b"2"), ("GET", "k")]) == [b"OK", b"2"]
        finally:
            devservices.stop(again.pid)
    finally:
        await redis.aclose()


def test_trending_reads_under_resp2_and_resp3() -> None:
    shared = _Shared()
    pairs = [[b"hot", 3.0], [b"cold", 1.0]]  # RESP3
    flat = [b"hot", b"3", b"cold", b"1"]  # RESP2
    assert shared.keep_trending("a", pairs, 0.0) == {"hot": 3.0, "cold": 1.0}
    assert shared.keep_trending("b", flat, 0.0) == {"hot": 3.0, "cold": 1.0}
    assert shared.keep_trending("c", [], 0.0) == {}
