"""Applying messages of version topics to Redis: records, control messages, dead letters.

Shared by the materializer and replay, so both verify a version the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from confluent_kafka import Producer
from redis.asyncio import Redis

from tandem.consumers.metrics import RECORDS_APPLIED, RECORDS_DEAD
from tandem.consumers.records import Record
from tandem.contracts import topics
from tandem.contracts.codec import summarize
from tandem.contracts.control import (
    Control,
    EndOfPush,
    StartOfPush,
    attachment_name,
    control_kind,
    dlq_headers,
)
from tandem.contracts.exceptions import CodecError, ServiceError, ValidationError
from tandem.contracts.ids import check_id
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State
from tandem.store.exceptions import ProgressConflict
from tandem.store.keys import Keys
from tandem.store.progress import PartitionProgress, RecordStat, record_stat
from tandem.store.registry import Registry
from tandem.store.writer import VersionWriter

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 5
SEALED = "sealed"  # the field a dead letter names for a message after END_OF_PUSH


@dataclass
class Plan:
    """What one batch of one partition turns into."""

    after: PartitionProgress
    entries: list[tuple[str, bytes]]
    dead: list[tuple[Record, str]]
    start: StartOfPush | None
    attachments: list[tuple[str, bytes]] = field(default_factory=list)


def plan_batch(before: PartitionProgress, messages: Sequence[Record]) -> Plan:
    """Sort a batch (all newer than ``before``) into entries, dead letters and control data.

    After a partition's END_OF_PUSH the partition is sealed: whatever follows on it is
    dead-lettered with the reason and never applied, so what is served always equals the count
    and checksum the registry shows.
    """
    entries: list[tuple[str, bytes]] = []
    stats: list[RecordStat] = []
    dead: list[tuple[Record, str]] = []
    start: StartOfPush | None = None
    end: EndOfPush | None = None
    attachments: list[tuple[str, bytes]] = []
    aborted: str | None = None
    sealed = before.closed
    for msg in messages:
        try:
            kind = control_kind(msg.headers)
            if sealed:
                raise ValidationError(SEALED, "the partition's END_OF_PUSH (or abort) came first")
            if kind is Control.ABORT_PUSH:
                aborted = (msg.value or b"").decode(errors="replace") or "the push was aborted"
                sealed = True
                continue
            if kind is Control.START_OF_PUSH:
                start = StartOfPush.decode(msg.value)
            elif kind is Control.END_OF_PUSH:
                end = EndOfPush.decode(msg.value)
                sealed = True
            elif kind is Control.ATTACHMENT:
                attachments.append((attachment_name(msg.headers), msg.value or b""))
            else:
                entity, value = _record(msg)
                size, finite = summarize(value)
                entries.append((entity, value))
                stats.append(record_stat(entity, value, size, finite))
        except (ValidationError, CodecError) as e:
            dead.append((msg, str(e)))
    after = before.with_records(stats, messages[-1].offset)
    if start is not None:
        after = replace(after, started=True)
    if end is not None:
        after = replace(after, eop_count=end.count, eop_checksum=end.checksum)
    if aborted is not None:
        after = replace(after, aborted=aborted)
    return Plan(replace(after, dlq=before.dlq + len(dead)), entries, dead, start, attachments)


def _record(msg: Record) -> tuple[str, bytes]:
    key, value = msg.key, msg.value
    if key is None:
        raise ValidationError("key", "a data record needs the entity id as its key")
    try:
        entity = check_id(key.decode(), "key")
    except UnicodeDecodeError:
        raise ValidationError("key", "not UTF-8") from None
    if value is None:
        raise ValidationError("value", "a data record needs a value")
    return entity, value


class VersionSink:
    """Writes batches of version-topic messages into Redis through ``store/``."""

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        dlq: Producer,
        source: str,
        *,
        rebuild: bool = False,
    ) -> None:
        self._rebuild = rebuild
        self._redis = redis
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        self._dlq = dlq
        self._source = source
        self.registry = Registry(redis, self._keys)
        self._writers: dict[tuple[str, int], VersionWriter] = {}
        self._progress: dict[tuple[str, int, int], PartitionProgress] = {}

    def writer(self, store: str, version: int) -> VersionWriter:
        """The (cached) writer of one version."""
        found = self._writers.get((store, version))
        if found is None:
            self._settings.policy(store)
            found = VersionWriter(self._redis, self._keys, store, version, rebuild=self._rebuild)
            self._writers[(store, version)] = found
        return found

    def forget(self, store: str, version: int) -> None:
        """Drop cached state of a version (after it was decided or dropped)."""
        self._writers.pop((store, version), None)
        for key in [k for k in self._progress if k[:2] == (store, version)]:
            del self._progress[key]

    async def apply(
        self, store: str, version: int, partition: int, messages: Sequence[Record]
    ) -> PartitionProgress:
        """Apply ``messages`` (in offset order) of one partition; skip what was applied before."""
        writer = self.writer(store, version)
        cache_key = (store, version, partition)
        for _ in range(MAX_CONFLICT_RETRIES):
            before = self._progress.get(cache_key) or await writer.load(partition)
            todo = [m for m in messages if m.offset > before.offset]
            if not todo:
                self._progress[cache_key] = before
                return before
            plan = plan_batch(before, todo)
            if plan.dead:
                self._dead_letter(topics.version_topic(store, version), partition, plan.dead)
            if plan.start is not None:
                await self._register(store, version, plan.start)
            for name, value in plan.attachments:
                await writer.put_attachment(name, value)
            try:
                await writer.apply(partition, before, plan.after, plan.entries)
            except ProgressConflict:
                log.info(
                    "%s v%s p%d: progress moved elsewhere; reloading", store, version, partition
                )
                self._progress.pop(cache_key, None)
                continue
            self._progress[cache_key] = plan.after
            RECORDS_APPLIED.labels(store).inc(len(plan.entries))
            return plan.after
        raise ServiceError(
            f"{store} v{version} p{partition}: progress kept moving; is another "
            "materializer writing the same partition?"
        )

    async def _register(self, store: str, version: int, start: StartOfPush) -> None:
        info = await self.registry.get(store, version)
        if info is None or info.state in (State.PUSHED, State.INGESTING):
            await self.registry.update(
                store,
                version,
                State.INGESTING,
                partitions=start.partitions,
                created_ms=start.created_ms,
                metadata=start.metadata,
            )

    def _dead_letter(self, topic: str, partition: int, dead: list[tuple[Record, str]]) -> None:
        store = topics.parse_version_topic(topic)
        for msg, reason in dead:
            log.warning("%s p%d offset %d dead-lettered: %s", topic, partition, msg.offset, reason)
            headers = [
                *msg.headers,
                *dlq_headers(reason, topic, partition, msg.offset, self._source),
            ]
            self._dlq.produce(topics.DLQ, key=msg.key, value=msg.value, headers=headers)
        if self._dlq.flush(30) > 0:
            raise ServiceError("could not deliver dead letters to tandem.dlq")
        RECORDS_DEAD.labels(store[0] if store else "?").inc(len(dead))
