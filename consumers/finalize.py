"""Deciding a version once every partition has ended: verify, gate, go live, retire."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Producer
from redis.asyncio import Redis

from tandem.consumers.gates import Verification, VersionStats, evaluate, verify
from tandem.consumers.metrics import LIVE_VERSION, VERSIONS
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State, announce
from tandem.store.admin import VersionAdmin
from tandem.store.exceptions import PromoteConflict, StoreError
from tandem.store.keys import Keys
from tandem.store.registry import VersionInfo
from tandem.store.writer import VersionWriter

log = logging.getLogger(__name__)

UNDECIDED = (State.PUSHED, State.INGESTING)


def metrics_of(metadata: dict[str, Any]) -> dict[str, float]:
    """The numeric offline metrics a version's metadata carries under ``metrics``."""
    raw = metadata.get("metrics")
    if not isinstance(raw, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in raw.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _stats(result: Verification, info: VersionInfo) -> VersionStats:
    stats = result.stats
    return VersionStats(
        stats.count, stats.empty, stats.nonfinite, stats.dlq, metrics_of(info.metadata)
    )


class Finalizer:
    """Turns a fully written version into live, ingested or rejected."""

    def __init__(self, redis: Redis, settings: Settings, announcer: Producer) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        self._announcer = announcer
        self._admin = VersionAdmin(settings, redis, announcer)
        self.lifecycle = self._admin.lifecycle
        self.registry = self.lifecycle.registry

    async def pending(self) -> list[tuple[str, int]]:
        """Versions of configured stores still waiting for a decision."""
        found: list[tuple[str, int]] = []
        for store in self._settings.stores:
            found.extend(
                (store, info.version)
                for info in await self.registry.list(store)
                if info.state in UNDECIDED
            )
        return found

    async def check(self, store: str, version: int, *, cutover: bool) -> VersionInfo | None:
        """Decide the version if all its partitions ended; None while it is still incomplete."""
        info = await self.registry.get(store, version)
        if info is None or info.state not in UNDECIDED:
            return None
        writer = VersionWriter(self._redis, self._keys, store, version)
        progress = await writer.load_all()
        aborted = sorted({p.aborted for p in progress.values() if p.aborted is not None})
        if aborted:
            return await self._admin.abort(store, version, aborted)
        result = verify(progress, info.partitions)
        if not result.complete:
            return None
        if result.reasons:
            return await self._reject(
                store, version, result.reasons, result.stats.count, result.checksum
            )
        info = await self.registry.update(
            store, version, State.INGESTED, count=result.stats.count, checksum=result.checksum
        )
        self._announce(info)
        log.info(
            "%s v%s ingested: %d records, checksum %s",
            store,
            version,
            result.stats.count,
            result.checksum,
        )
        return await self.gate(info, _stats(result, info), cutover=cutover)

    async def resume(self, store: str, version: int, *, cutover: bool) -> VersionInfo | None:
        """Decide the version again after a :meth:`check` that Redis failed midway: the steps
        that went through stay, the rest is done now (each step is idempotent or a
        compare-and-set); None while the version is still incomplete."""
        info = await self.registry.get(store, version)
        if info is None or info.state in UNDECIDED:
            return await self.check(store, version, cutover=cutover)
        if info.state is State.ABORTED:
            return await self._admin.abort(store, version, list(info.reasons))
        if info.state is State.REJECTED:
            await self.lifecycle.leave_service(store, version)
        elif info.state is State.INGESTED:  # verified; gating or the cutover did not happen
            self._announce(info)
            writer = VersionWriter(self._redis, self._keys, store, version)
            result = verify(await writer.load_all(), info.partitions)
            return await self.gate(info, _stats(result, info), cutover=cutover)
        elif info.state is State.LIVE and await self.lifecycle.live(store) == version:
            return await self._after_promotion(store, version)
        self._announce(info)
        return info

    async def gate(self, info: VersionInfo, stats: VersionStats, *, cutover: bool) -> VersionInfo:
        """Run the quality gates against the live version and, if asked, cut over."""
        store, version = info.store, info.version
        for _ in range(3):
            live = await self.lifecycle.live(store)
            if live is not None and live > version:
                log.warning(
                    "%s v%s is ingested but v%s, newer, is live: not gating or promoting it",
                    store,
                    version,
                    live,
                )
                return info
            live_info = None if live is None else await self.registry.get(store, live)
            live_stats = (
                None
                if live_info is None
                else VersionStats(live_info.count, metrics=metrics_of(live_info.metadata))
            )
            reasons = evaluate(stats, live_stats, self._settings.policy(store))
            if reasons:
                return await self._reject(store, version, reasons, stats.count, info.checksum)
            if not cutover:
                return info
            try:
                await self.lifecycle.promote(store, version, expected=live)
            except PromoteConflict:
                continue  # another version went live meanwhile: gate against it
            return await self._after_promotion(store, version)
        return info

    async def _after_promotion(self, store: str, version: int) -> VersionInfo:
        LIVE_VERSION.labels(store).set(version)
        VERSIONS.labels(store, State.LIVE.value).inc()
        await self._admin.retire(store)
        info = await self.registry.get(store, version)
        if info is None:
            raise StoreError(f"{store} v{version} vanished from the registry after promotion")
        self._announce(info)
        return info

    async def _reject(
        self, store: str, version: int, reasons: list[str], count: int, checksum: str | None
    ) -> VersionInfo:
        info = await self.registry.update(
            store, version, State.REJECTED, reasons=reasons, count=count, checksum=checksum
        )
        VERSIONS.labels(store, State.REJECTED.value).inc()
        await self.lifecycle.leave_service(store, version)
        log.warning(
            "%s v%s rejected, the live version stays: %s", store, version, "; ".join(reasons)
        )
        self._announce(info)
        return info

    def _announce(self, info: VersionInfo) -> None:
        announce(
            self._announcer,
            info.store,
            info.version,
            info.state,
            count=info.count,
            checksum=info.checksum,
            reasons=list(info.reasons),
        )
        self._announcer.poll(0)
