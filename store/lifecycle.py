"""Cutover, rollback and retirement of store versions: atomic flips of the live pointer."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from redis.asyncio import Redis

from tandem.contracts.ids import check_version
from tandem.contracts.versions import IN_FLIGHT, State
from tandem.store.exceptions import PromoteConflict, RollbackRefused, StoreError
from tandem.store.keys import Keys
from tandem.store.registry import Registry, VersionInfo, now_ms
from tandem.store.scripts import PROMOTE, RETIRE, ROLLBACK

log = logging.getLogger(__name__)

SCAN_COUNT = 1000


def _version_or_none(raw: bytes | str | None) -> int | None:
    if raw is None or raw in (b"", ""):
        return None
    return int(raw)


class Lifecycle:
    """Moves versions of stores through live, backup and retired.

    A version's keys have no TTL while it may serve (written, ingested, live, backup); when it
    leaves service (superseded, rolled back, rejected) its keys get the store's TTL from
    ``ttls`` (none when a store is not in it), and a version that comes back loses it again.
    """

    def __init__(self, redis: Redis, keys: Keys, ttls: Mapping[str, int] | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._ttls = dict(ttls or {})
        self.registry = Registry(redis, keys)
        self._promote = redis.register_script(PROMOTE)
        self._rollback = redis.register_script(ROLLBACK)
        self._retire = redis.register_script(RETIRE)

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
            self._keys.registry(store),
            self._keys.canary(store),
        ]
        states = {
            info.version: State.SUPERSEDED
            for info in await self.registry.list(store)
            if info.state is State.BACKUP and info.version not in (expected, version)
        }
        if expected is not None and expected != version:
            states[expected] = State.BACKUP
        states[version] = State.LIVE
        records = await self.registry.transition(store, states)
        expected_arg = "" if expected is None else str(expected)
        status, current = await self._promote(
            keys=keys, args=[expected_arg, str(version), *records]
        )
        if status == -1:
            raise StoreError(f"{store} v{version} is not materialized in Redis; replay it first")
        previous = _version_or_none(current)
        if status == 0:
            raise PromoteConflict(store, expected, previous)
        await self._keep(store, version)
        for superseded in (v for v, s in states.items() if s is State.SUPERSEDED):
            await self.leave_service(store, superseded)
        log.info("store %s: v%s is live (previous %s)", store, version, previous)
        return previous

    async def rollback(self, store: str) -> tuple[int | None, int]:
        """Flip back to the backup version; returns ``(rolled back, now live)``."""
        backup = await self.backup(store)
        if backup is None:
            raise RollbackRefused(f"store {store}: there is no backup version to roll back to")
        live = await self.live(store)
        keys = [
            self._keys.live(store),
            self._keys.backup(store),
            self._keys.progress(store, backup),
            self._keys.registry(store),
        ]
        states = {backup: State.LIVE}
        if live is not None and live != backup:
            states = {live: State.ROLLED_BACK, backup: State.LIVE}
        records = await self.registry.transition(store, states)
        live_arg = "" if live is None else str(live)
        status, current = await self._rollback(keys=keys, args=[str(backup), live_arg, *records])
        if status == -1:
            raise RollbackRefused(
                f"store {store}: backup v{backup} is no longer materialized in Redis; "
                f"rebuild it with `tandem replay {store} --version {backup}` first"
            )
        if status == 0:
            raise RollbackRefused(
                f"store {store}: the live or backup version changed during rollback; try again"
            )
        rolled_back = _version_or_none(current)
        await self._keep(store, backup)
        if rolled_back is not None:
            await self.leave_service(store, rolled_back)
        log.warning("store %s: rolled back from v%s to v%s", store, rolled_back, backup)
        return rolled_back, backup

    async def retire(self, store: str, keep: int) -> list[int]:
        """Delete from Redis the versions beyond the newest ``keep`` besides the live one.

        The live and backup versions, and versions still being written, are never retired: each
        is claimed by a script that checks the pointers and that its record did not change since
        it was chosen, in one step, before anything of it is deleted.
        """
        live = await self.live(store)
        busy = {*IN_FLIGHT, State.RETIRED, State.ABORTED, State.CANARY}
        others = [
            info
            for info in reversed(await self.registry.list(store))
            if info.version != live and info.state not in busy
        ]
        retired = []
        for info in others[keep:]:
            if await self._claim(info):
                await self.drop(store, info.version)
                retired.append(info.version)
        if retired:
            log.info("store %s: retired versions %s", store, retired)
        return retired

    async def _claim(self, info: VersionInfo) -> bool:
        """Mark ``info``'s version retired if it still is exactly ``info`` and serves nowhere."""
        store, version = info.store, info.version
        keys = [
            self._keys.live(store),
            self._keys.backup(store),
            self._keys.progress(store, version),
            self._keys.registry(store),
        ]
        retired = replace(info, state=State.RETIRED, updated_ms=now_ms())
        args: list[str | bytes] = [str(version), info.to_json(), retired.to_json()]
        return bool(await self._retire(keys=keys, args=args))

    async def leave_service(self, store: str, version: int) -> None:
        """Give a version that no longer serves the store's TTL (nothing when none is known)."""
        ttl_s = self._ttls.get(store)
        if ttl_s is not None:
            touched = await self._each_key(store, version, "EXPIRE", ttl_s)
            log.info(
                "store %s: v%s left service; %d keys expire in %d s", store, version, touched, ttl_s
            )

    async def _keep(self, store: str, version: int) -> None:
        """Remove the TTL of a version that serves again (its progress says whether it has one)."""
        if await self._redis.ttl(self._keys.progress(store, version)) >= 0:
            await self._each_key(store, version, "PERSIST")

    async def _each_key(self, store: str, version: int, command: str, *args: object) -> int:
        touched = 0
        for pattern in self._keys.version_patterns(store, version):
            batch: list[bytes] = []
            async for key in self._redis.scan_iter(match=pattern, count=SCAN_COUNT):
                batch.append(key)
                if len(batch) >= SCAN_COUNT:
                    touched += await self._per_key(command, batch, args)
                    batch = []
            touched += await self._per_key(command, batch, args)
        return touched

    async def _per_key(self, command: str, keys: list[bytes], args: tuple[object, ...]) -> int:
        if not keys:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:  # one command each: the keys lie in different slots
            pipe.execute_command(command, key, *args)
        return sum(1 for done in await pipe.execute() if done)

    async def drop(self, store: str, version: int) -> int:
        """Unlink every key of one version, scanning in chunks so Redis never blocks (on a
        cluster the scan visits every master)."""
        return await self._each_key(store, version, "UNLINK")
