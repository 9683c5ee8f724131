"""Cutover, rollback and retirement of store versions: atomic flips of the live pointer."""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from store.exceptions import PromoteConflict, RollbackRefused, StoreError
from store.keys import Keys
from store.registry import Registry, State
from store.scripts import PROMOTE, ROLLBACK
from tandem.ids import check_version

log = logging.getLogger(__name__)

SCAN_COUNT = 1000


def _version_or_none(raw: bytes | str | None) -> int | None:
    if raw is None or raw in (b"", ""):
        return None
    return int(raw)


class Lifecycle:
    """Moves versions of stores through live, backup and retired."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self.registry = Registry(redis, keys)
        self._promote = redis.register_script(PROMOTE)
        self._rollback = redis.register_script(ROLLBACK)

    async def live(self, store: str) -> int | None:
        """The live version of ``store``, or None."""
        return _version_or_none(await self._redis.get(self._keys.live(store)))

    async def backup(self, store: str) -> int | None:
        """The rollback target of ``store``, or None."""
        return _version_or_none(await self._redis.get(self._keys.backup(store)))

    async def is_materialized(self, store: str, version: int) -> bool:
        """Whether the version's data is (still) in Redis."""
        return bool(await self._redis.exists(self._keys.progress(store, version)))

    async def promote(self, store: str, version: int, expected: int | None) -> int | None:
        """Make ``version`` live if the live version is ``expected``; returns the previous one.

        Compare-and-set: raises :class:`PromoteConflict` and changes nothing otherwise.
        """
        check_version(version)
        keys = [
            self._keys.live(store),
            self._keys.backup(store),
            self._keys.progress(store, version),
        ]
        expected_arg = "" if expected is None else str(expected)
        status, current = await self._promote(keys=keys, args=[expected_arg, str(version)])
        if status == -1:
            raise StoreError(f"{store} v{version} is not materialized in Redis; replay it first")
        previous = _version_or_none(current)
        if status == 0:
            raise PromoteConflict(store, expected, previous)
        await self._record_promotion(store, version, previous)
        log.info("store %s: v%s is live (previous %s)", store, version, previous)
        return previous

    async def _record_promotion(self, store: str, version: int, previous: int | None) -> None:
        for info in await self.registry.list(store):
            if info.state is State.BACKUP and info.version != previous:
                await self.registry.update(store, info.version, State.SUPERSEDED)
        if previous is not None and previous != version:
            await self.registry.update(store, previous, State.BACKUP)
        await self.registry.update(store, version, State.LIVE)

    async def rollback(self, store: str) -> tuple[int | None, int]:
        """Flip back to the backup version; returns ``(rolled back, now live)``."""
        backup = await self.backup(store)
        if backup is None:
            raise RollbackRefused(f"store {store}: there is no backup version to roll back to")
        keys = [
            self._keys.live(store),
            self._keys.backup(store),
            self._keys.progress(store, backup),
        ]
        status, current = await self._rollback(keys=keys, args=[str(backup)])
        if status == -1:
            raise RollbackRefused(
                f"store {store}: backup v{backup} is no longer materialized in Redis; "
                f"rebuild it with `tandem replay {store} --version {backup}` first"
            )
        if status == 0:
            raise RollbackRefused(f"store {store}: the backup changed during rollback; try again")
        rolled_back = _version_or_none(current)
        if rolled_back is not None:
            await self.registry.update(store, rolled_back, State.ROLLED_BACK)
        await self.registry.update(store, backup, State.LIVE)
        log.warning("store %s: rolled back from v%s to v%s", store, rolled_back, backup)
        return rolled_back, backup

    async def retire(self, store: str, keep: int) -> list[int]:
        """Delete from Redis the versions beyond the newest ``keep`` besides the live one.

        The live and backup versions, and versions still being written, are never retired.
        """
        live, backup = await self.live(store), await self.backup(store)
        busy = (State.PUSHED, State.INGESTING, State.RETIRED)
        others = [
            info.version
            for info in reversed(await self.registry.list(store))
            if info.version != live and info.state not in busy
        ]
        retired = []
        for version in others[keep:]:
            if version == backup:
                continue
            await self.drop(store, version)
            await self.registry.update(store, version, State.RETIRED)
            retired.append(version)
        if retired:
            log.info("store %s: retired versions %s", store, retired)
        return retired

    async def drop(self, store: str, version: int) -> int:
        """Unlink every key of one version, scanning in chunks so Redis never blocks."""
        deleted = 0
        pattern = self._keys.version_pattern(store, version)
        batch: list[bytes] = []
        async for key in self._redis.scan_iter(match=pattern, count=SCAN_COUNT):
            batch.append(key)
            if len(batch) >= SCAN_COUNT:
                deleted += await self._redis.unlink(*batch)
                batch = []
        if batch:
            deleted += await self._redis.unlink(*batch)
        return deleted
