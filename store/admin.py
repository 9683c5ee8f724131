"""Version administration, one implementation for the CLI, the API and the demo: list and show
versions, roll back (and announce it on ``tandem.versions``), retire (and delete topics)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaException, Producer
from redis.asyncio import Redis

from tandem.contracts import topics
from tandem.contracts.codec import decode
from tandem.contracts.kafka import admin
from tandem.contracts.settings import Settings
from tandem.contracts.versions import IN_SERVICE, State, announce
from tandem.store.exceptions import StoreError
from tandem.store.experiments import Canary, Experiments
from tandem.store.keys import Keys
from tandem.store.lifecycle import Lifecycle
from tandem.store.registry import VersionInfo, now_ms

log = logging.getLogger(__name__)

TOPIC_DELETE_TIMEOUT_S = 30.0


class VersionNotFound(StoreError):
    """The version is not in the registry."""


@dataclass(frozen=True, slots=True)
class StoreVersions:
    """One store's versions, with its live and backup pointers."""

    store: str
    live: int | None
    backup: int | None
    versions: tuple[VersionInfo, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """Plain form for JSON output (version ids as they are: see the API for strings)."""
        return {
            "store": self.store,
            "live": self.live,
            "backup": self.backup,
            "versions": [info.to_dict() for info in self.versions],
        }


@dataclass(frozen=True, slots=True)
class Served:
    """One entity's candidates in the live version of a store (``version`` None: none live)."""

    store: str
    version: int | None
    entity_id: str
    item_ids: list[str]
    scores: list[float]


class VersionAdmin:
    """What an operator does to versions. ``announcer`` receives lifecycle records."""

    def __init__(self, settings: Settings, redis: Redis, announcer: Producer) -> None:
        self._settings = settings
        self._announcer = announcer
        self._redis = redis
        self._keys = Keys(settings.key_prefix)
        ttls = {store: policy.ttl_s for store, policy in settings.stores.items()}
        self.lifecycle = Lifecycle(redis, self._keys, ttls)
        self.experiments = Experiments(redis, self._keys)

    async def pointers(self, store: str) -> StoreVersions:
        """The live and backup versions of a configured store."""
        self._settings.policy(store)
        return StoreVersions(
            store, await self.lifecycle.live(store), await self.lifecycle.backup(store)
        )

    async def overview(self) -> list[StoreVersions]:
        """The pointers of every configured store."""
        return [await self.pointers(store) for store in sorted(self._settings.stores)]

    async def versions(self, store: str) -> StoreVersions:
        """Every recorded version of a configured store, oldest first, with the pointers."""
        pointers = await self.pointers(store)
        found = await self.lifecycle.registry.list(store)
        return StoreVersions(store, pointers.live, pointers.backup, tuple(found))

    async def show(self, store: str, version: int) -> VersionInfo:
        """Everything recorded of one version."""
        self._settings.policy(store)
        info = await self.lifecycle.registry.get(store, version)
        if info is None:
            raise VersionNotFound(
                f"{store} v{version} is not in the registry; `tandem versions list {store}` "
                "shows the versions there are"
            )
        return info

    async def lookup(self, store: str, entity_id: str) -> Served:
        """What the live version of ``store`` serves for one entity (empty when it has none)."""
        self._settings.policy(store)
        live = await self.lifecycle.live(store)
        if live is None:
            return Served(store, None, entity_id, [], [])
        raw = await self._redis.get(self._keys.entity(store, live, entity_id))
        item_ids, scores = decode(raw) if isinstance(raw, bytes) else ([], [])
        return Served(store, live, entity_id, item_ids, scores)

    async def rollback(
        self, store: str, reasons: list[str] | None = None
    ) -> tuple[int | None, int]:
        """Flip back to the backup version and announce it (with why, when a guard did it);
        ``(rolled back, now live)``."""
        self._settings.policy(store)
        rolled_back, live = await self.lifecycle.rollback(store)
        if reasons and rolled_back is not None:
            await self.lifecycle.registry.update(
                store, rolled_back, State.ROLLED_BACK, reasons=reasons
            )
        why = {"reasons": reasons} if reasons else {}
        announce(self._announcer, store, live, State.LIVE, rolled_back_from=rolled_back, **why)
        self._announcer.poll(0)
        return rolled_back, live

    async def start_canary(
        self, store: str, version: int, share: float, *, shadow: bool = False
    ) -> Canary:
        """Serve a validated version to a share of users beside the live one; announce it."""
        self._settings.policy(store)
        canary = await self.experiments.start(store, version, share, shadow)
        announce(self._announcer, store, version, State.CANARY, share=canary.share, shadow=shadow)
        self._announcer.poll(0)
        return canary

    async def promote_canary(self, store: str, reason: str = "promoted by hand") -> int:
        """Make the store's canary live (the live version becomes the backup); announce it."""
        canary = await self._canary(store)
        await self.lifecycle.promote(store, canary.version, await self.lifecycle.live(store))
        info = await self.show(store, canary.version)
        ended = {**info.metadata.get("canary", {}), "ended_ms": now_ms(), "outcome": "promoted"}
        await self.lifecycle.registry.update(
            store, canary.version, State.LIVE, metadata={**info.metadata, "canary": ended}
        )
        announce(self._announcer, store, canary.version, State.LIVE, canary="promoted", why=reason)
        self._announcer.poll(0)
        return canary.version

    async def abort_canary(self, store: str, reasons: list[str]) -> VersionInfo:
        """End the store's canary without promoting it, recording why; announce it."""
        canary = await self._canary(store)
        info = await self.experiments.abort(store, canary.version, reasons)
        await self.lifecycle.leave_service(store, canary.version)
        announce(
            self._announcer,
            store,
            canary.version,
            State.REJECTED,
            canary="aborted",
            reasons=reasons,
        )
        self._announcer.poll(0)
        return info

    async def _canary(self, store: str) -> Canary:
        self._settings.policy(store)
        canary = await self.experiments.canary(store)
        if canary is None:
            raise StoreError(
                f"store {store} has no canary; start one with `tandem versions canary`"
            )
        return canary

    async def abort(self, store: str, version: int, reasons: list[str]) -> VersionInfo:
        """Mark a version whose push failed aborted, delete what Redis holds of it and announce
        it. A version in service is refused."""
        info = await self.show(store, version)
        if info.state is State.CANARY:  # aborting a canary ends the experiment
            return await self.abort_canary(store, reasons)
        if info.state in IN_SERVICE:
            raise StoreError(f"{store} v{version} is {info.state.value}: roll back first")
        dropped = await self.lifecycle.drop(store, version)
        info = await self.lifecycle.registry.update(store, version, State.ABORTED, reasons=reasons)
        announce(self._announcer, store, version, State.ABORTED, reasons=reasons)
        self._announcer.poll(0)
        log.warning("%s v%s aborted (%s); %d keys deleted", store, version, reasons, dropped)
        return info

    async def retire(
        self, store: str, keep: int | None = None, *, delete_topics: bool = False
    ) -> list[int]:
        """Delete old versions from Redis (and their topics, if asked); announce each."""
        kept = self._settings.policy(store).keep_versions if keep is None else keep
        retired = await self.lifecycle.retire(store, kept)
        for version in retired:
            announce(self._announcer, store, version, State.RETIRED)
        self._announcer.poll(0)
        if delete_topics and retired:
            self._delete_topics([topics.version_topic(store, v) for v in retired])
        return retired

    def _delete_topics(self, names: list[str]) -> None:
        client = admin(self._settings)
        futures = client.delete_topics(names, operation_timeout=TOPIC_DELETE_TIMEOUT_S)
        failed = []
        for name, future in futures.items():
            try:
                future.result(TOPIC_DELETE_TIMEOUT_S)
            except KafkaException as e:
                failed.append(f"{name}: {e}")
        if failed:
            raise StoreError(
                "retired in Redis, but topics could not be deleted (delete them with your "
                "Kafka tools, or run retire again): " + "; ".join(failed)
            )
