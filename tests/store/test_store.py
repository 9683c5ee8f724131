"""The prediction store against the real Redis: writes, cutover, rollback, reads, retirement."""

from __future__ import annotations

import asyncio
import random

import pytest
from redis.asyncio import Redis

from tandem.contracts.codec import encode
from tandem.contracts.versions import State
from tandem.contracts.waiting import wait_for
from tandem.store import online
from tandem.store.exceptions import PromoteConflict, RollbackRefused, StoreError
from tandem.store.keys import Keys
from tandem.store.lifecycle import Lifecycle
from tandem.store.online import OnlineReader
from tandem.store.writer import VersionWriter
from tests.api.conftest import put_version

pytestmark = pytest.mark.integration

TTL_S = 3600


def entries(version: int, n: int, size: int = 20) -> list[tuple[str, bytes]]:
    """``n`` entities whose item ids name the version they belong to."""
    return [
        (
            f"u{e}",
            encode(
                [f"v{version}-i{k}" for k in range(size)], [1.0 - k / size for k in range(size)]
            ),
        )
        for e in range(n)
    ]


async def write_version(
    redis: Redis, keys: Keys, version: int, n: int = 50, store: str = "u2i"
) -> str:
    writer = VersionWriter(redis, keys, store, version)
    data = entries(version, n)
    for start in range(0, n, 16):
        await writer.write(data[start : start + 16])
    final = await writer.seal()
    return f"{final.checksum:016x}"


async def test_write_promote_read(redis: Redis, keys: Keys) -> None:
    lifecycle = Lifecycle(redis, keys)
    reader = OnlineReader(redis, keys)
    await write_version(redis, keys, 1)
    assert (await reader.read("u1", 10, "any", "global")).versions.u2i is None
    assert await lifecycle.promote("u2i", 1, expected=None) is None
    got = await reader.read("u3", 10, "any", "global")
    assert got.versions.u2i == 1
    assert got.u2i[0][0] == "v1-i0"
    assert got.u2i[1][0] == pytest.approx(1.0)
    missing = await reader.read("nobody", 10, "any", "global")
    assert (missing.versions.u2i, missing.u2i) == (1, ([], []))
    info = await lifecycle.registry.get("u2i", 1)
    assert info is not None
    assert info.state is State.LIVE


async def ttls_of(redis: Redis, keys: Keys, version: int) -> list[int]:
    found = [
        key
        for pattern in keys.version_patterns("u2i", version)
        async for key in redis.scan_iter(match=pattern)
    ]
    return [await redis.ttl(key) for key in found]


async def test_keys_expire_only_once_their_version_leaves_service(redis: Redis, keys: Keys) -> None:
    lifecycle = Lifecycle(redis, keys, {"u2i": TTL_S})
    for version in (1, 2, 3):
        await write_version(redis, keys, version, n=40)
    assert await ttls_of(redis, keys, 1) == [-1] * 41  # 40 entities and the progress hash
    await lifecycle.promote("u2i", 1, expected=None)
    await lifecycle.promote("u2i", 2, expected=1)  # 1 is the backup: still in service
    assert set(await ttls_of(redis, keys, 1)) == {-1}
    await lifecycle.promote("u2i", 3, expected=2)  # 1 is superseded: it expires
    assert all(0 < ttl <= TTL_S for ttl in await ttls_of(redis, keys, 1))
    assert set(await ttls_of(redis, keys, 2)) == {-1}
    await lifecycle.rollback("u2i")  # 3 is rolled back: it expires; 2 is live again
    assert all(0 < ttl <= TTL_S for ttl in await ttls_of(redis, keys, 3))
    assert set(await ttls_of(redis, keys, 2)) == {-1}
    await redis.set(keys.live("u2i"), b"")  # (a hand-made state: v1 comes back by promote)
    await lifecycle.promote("u2i", 1, expected=None)
    assert set(await ttls_of(redis, keys, 1)) == {-1}  # serving again: no expiry


async def test_checksum_independent_of_write_order(redis: Redis, keys: Keys) -> None:
    data = entries(3, 60)
    shuffled = data[:]
    random.Random(1).shuffle(shuffled)
    checksums = []
    for version, rows in ((3, data), (4, shuffled)):
        writer = VersionWriter(redis, keys, "u2i", version)
        for start in range(0, len(rows), 7):
            await writer.write(rows[start : start + 7])
        checksums.append((await writer.seal()).checksum)
    assert checksums[0] == checksums[1]


async def test_stale_promote_changes_nothing(redis: Redis, keys: Keys) -> None:
    lifecycle = Lifecycle(redis, keys)
    for version in (1, 2, 3):
        await write_version(redis, keys, version, n=5)
    await lifecycle.promote("u2i", 1, expected=None)
    await lifecycle.promote("u2i", 2, expected=1)
    with pytest.raises(PromoteConflict) as err:
        await lifecycle.promote("u2i", 3, expected=1)
    assert err.value.actual == 2
    assert await lifecycle.live("u2i") == 2
    assert await lifecycle.backup("u2i") == 1
    info = await lifecycle.registry.get("u2i", 3)
    assert info is None or info.state is not State.LIVE


async def test_promote_refuses_a_version_not_materialized(redis: Redis, keys: Keys) -> None:
    with pytest.raises(StoreError, match="not materialized"):
        await Lifecycle(redis, keys).promote("u2i", 99, expected=None)
    assert await Lifecycle(redis, keys).live("u2i") is None


async def test_rollback_and_its_refusals(redis: Redis, keys: Keys) -> None:
    lifecycle = Lifecycle(redis, keys)
    with pytest.raises(RollbackRefused, match="no backup"):
        await lifecycle.rollback("u2i")
    await write_version(redis, keys, 1, n=5)
    await write_version(redis, keys, 2, n=5)
    await lifecycle.promote("u2i", 1, expected=None)
    await lifecycle.promote("u2i", 2, expected=1)
    assert await lifecycle.rollback("u2i") == (2, 1)
    assert await lifecycle.live("u2i") == 1
    rolled = await lifecycle.registry.get("u2i", 2)
    assert rolled is not None
    assert rolled.state is State.ROLLED_BACK
    with pytest.raises(RollbackRefused, match="no backup"):
        await lifecycle.rollback("u2i")
    await lifecycle.promote("u2i", 2, expected=1)
    await lifecycle.drop("u2i", 1)
    with pytest.raises(RollbackRefused, match="no longer materialized"):
        await lifecycle.rollback("u2i")
    assert await lifecycle.live("u2i") == 2


async def test_reads_never_mix_versions_during_cutover(redis: Redis, keys: Keys) -> None:
    lifecycle = Lifecycle(redis, keys)
    reader = OnlineReader(redis, keys)
    await write_version(redis, keys, 1, n=30)
    await write_version(redis, keys, 2, n=30)
    await lifecycle.promote("u2i", 1, expected=None)
    stop = asyncio.Event()
    seen: set[int] = set()
    reads = 0

    async def read_forever() -> None:
        nonlocal reads
        while not stop.is_set():
            data = await reader.read(f"u{reads % 30}", 10, "any", "global")
            version = data.versions.u2i
            assert version is not None
            seen.add(version)
            assert {i.split("-")[0] for i in data.u2i[0]} == {f"v{version}"}
            reads += 1

    async def flip() -> None:
        for _ in range(40):
            await lifecycle.promote("u2i", 2, expected=1)
            await asyncio.sleep(0)
            await lifecycle.rollback("u2i")
            await asyncio.sleep(0)
        stop.set()

    await asyncio.gather(read_forever(), read_forever(), flip())
    assert seen == {1, 2}
    assert reads > 40


async def test_retire_keeps_live_backup_and_newest(redis: Redis, keys: Keys) -> None:
    lifecycle = Lifecycle(redis, keys)
    for version in range(1, 7):
        await write_version(redis, keys, version, n=3)
        await lifecycle.registry.update("u2i", version, State.INGESTED)
    await lifecycle.promote("u2i", 2, expected=None)
    await lifecycle.promote("u2i", 3, expected=2)
    await lifecycle.registry.update("u2i", 7, State.INGESTING)
    retired = await lifecycle.retire("u2i", keep=2)
    assert retired == [4, 1]  # newest two (6, 5) kept; live 3 and backup 2 never retired
    assert await lifecycle.is_materialized("u2i", 6)
    assert await lifecycle.is_materialized("u2i", 2)
    assert not await lifecycle.is_materialized("u2i", 1)
    for pattern in keys.version_patterns("u2i", 1):
        assert [k async for k in redis.scan_iter(match=pattern)] == []
    info = await lifecycle.registry.get("u2i", 1)
    assert info is not None
    assert info.state is State.RETIRED


async def test_retire_claims_a_version_only_as_it_was_chosen(redis: Redis, keys: Keys) -> None:
    lifecycle = Lifecycle(redis, keys)
    for version in (1, 2, 3):
        await write_version(redis, keys, version, n=3)
        await lifecycle.registry.update("u2i", version, State.INGESTED)
    await lifecycle.promote("u2i", 3, expected=None)
    chosen = await lifecycle.registry.get("u2i", 1)
    assert chosen is not None
    await lifecycle.registry.update("u2i", 1, State.INGESTED, reasons=["re-ingested"])
    assert not await lifecycle._claim(chosen)  # its record changed after it was chosen
    assert await lifecycle.is_materialized("u2i", 1)
    live = await lifecycle.registry.get("u2i", 3)
    assert live is not None
    assert not await lifecycle._claim(live)  # the live version, whatever its record says
    assert await lifecycle.retire("u2i", keep=0) == [2, 1]
    with pytest.raises(StoreError, match="not materialized"):
        await lifecycle.promote("u2i", 1, expected=3)  # a retired version cannot go live


async def test_cached_answers_ride_with_the_next_read_or_go_on_their_own(
    redis: Redis, keys: Keys
) -> None:
    await write_version(redis, keys, 1)
    await Lifecycle(redis, keys).promote("u2i", 1, expected=None)
    reader = OnlineReader(redis, keys)
    first = await reader.read("u1", 10, "any", "global")
    reader.store_answer(first, b'{"answer":1}', 60)
    assert len(reader._unsent) == 1  # not sent yet: it waits for a read
    await reader.read("u2", 10, "any", "global")  # a read of someone else carries it
    assert reader._unsent == []
    assert (await reader.read("u1", 10, "any", "global")).cached == b'{"answer":1}'

    other = await reader.read("u3", 10, "any", "global")
    reader.store_answer(other, b'{"answer":3}', 60)  # no read follows: the timer sends it

    async def stored() -> bool:
        return bool(await redis.exists(other.cache_key))

    await wait_for(stored, 5, "the cached answer to be sent on its own")
    assert await redis.ttl(other.cache_key) > 50
    reader.store_answer(first, b'{"answer":1}', 60)
    await reader.flush()  # at shutdown: nothing waits
    assert reader._unsent == []


async def test_a_cache_write_redis_refuses_costs_the_read_nothing(redis: Redis, keys: Keys) -> None:
    await write_version(redis, keys, 1)
    await Lifecycle(redis, keys).promote("u2i", 1, expected=None)
    reader = OnlineReader(redis, keys)
    data = await reader.read("u1", 10, "any", "global")
    reader.store_answer(data, b"{}", -5)  # Redis refuses a negative expiry
    got = await reader.read("u2", 10, "any", "global")
    assert (got.versions.u2i, got.u2i[0][0]) == (1, "v1-i0")
    assert await redis.exists(data.cache_key) == 0
    reader.store_answer(data, b"{}", 60)  # caching pauses after a refusal
    assert reader._unsent == []


async def test_popular_and_trending_are_kept_a_while_but_a_new_popular_version_is_read_at_once(
    redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every user shares them, so a reader reads them once per ``SHARED_TTL_S``; a popular list
    is kept by version, so a cutover shows in the next answer all the same."""
    monkeypatch.setattr(online, "SHARED_TTL_S", 3600.0)
    lists = {"global": [("g1", 1.0)], "device:tv": [("t1", 0.9), ("t2", 0.8)]}
    await put_version(redis, keys, "popular", 1, lists)
    await redis.zadd(keys.trending("device:tv"), {"hot": 3})
    reader = OnlineReader(redis, keys)
    first = await reader.read("u1", 10, "tv", "device:tv")
    assert (first.versions.popular, first.popular[0], first.trending) == (
        1,
        ["t1", "t2"],
        {"hot": 3.0},
    )
    await redis.zadd(keys.trending("device:tv"), {"hotter": 5})
    kept = await reader.read("u2", 10, "tv", "device:tv")
    assert (kept.popular[0], kept.trending) == (["t1", "t2"], {"hot": 3.0})  # not read again
    await put_version(redis, keys, "popular", 2, {"global": [("g2", 1.0)]})
    after = await reader.read("u3", 10, "tv", "device:tv")  # no tv list in v2: the global one
    assert (after.versions.popular, after.popular[0], after.trending) == (2, ["g2"], {"hot": 3.0})
    monkeypatch.setattr(online, "SHARED_TTL_S", 0.0)
    fresh = await reader.read("u4", 10, "tv", "device:tv")  # kept for no time now
    assert fresh.trending == {"hotter": 5.0, "hot": 3.0}
