"""Applying messages of version topics to Redis: records, control messages, dead letters.

Shared by the materializer and replay, so both verify a version the same way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import cast

from confluent_kafka import Producer
from redis.asyncio import Redis

from tandem.consumers.metrics import RECORDS_APPLIED, RECORDS_DEAD
from tandem.consumers.records import Record, gc_paused
from tandem.consumers.retry import REDIS_TRANSIENT, Letter, OutagePolicy, Outages
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
from tandem.contracts.ids import check_id, valid_ids
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State
from tandem.store.exceptions import ProgressConflict
from tandem.store.keys import Keys
from tandem.store.progress import (
    BatchStat,
    PartitionProgress,
    RecordStat,
    batch_stat,
    record_stat,
)
from tandem.store.registry import Registry, VersionInfo
from tandem.store.writer import VersionWriter

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 5
DLQ_TIMEOUT_S = 30.0  # how long dead letters may wait for the broker outside the materializer
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
    with gc_paused():
        return _plan(before, messages)


def _plan(before: PartitionProgress, messages: Sequence[Record]) -> Plan:
    data: list[Record] = []
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
            if kind is None:
                data.append(msg)  # checked below, all at once
            elif kind is Control.ABORT_PUSH:
                aborted = (msg.value or b"").decode(errors="replace") or "the push was aborted"
                sealed = True
            elif kind is Control.START_OF_PUSH:
                start = StartOfPush.decode(msg.value)
            elif kind is Control.END_OF_PUSH:
                end = EndOfPush.decode(msg.value)
                sealed = True
            else:
                attachments.append((attachment_name(msg.headers), msg.value or b""))
        except (ValidationError, CodecError) as e:
            dead.append((msg, str(e)))
    entries, stat, bad = _data_records(data)
    if bad:
        dead = sorted([*dead, *bad], key=lambda d: d[0].offset)
    after = before.with_batch(stat, messages[-1].offset)
    if start is not None:
        after = replace(after, started=True)
    if end is not None:
        after = replace(after, eop_count=end.count, eop_checksum=end.checksum)
    if aborted is not None:
        after = replace(after, aborted=aborted)
    return Plan(replace(after, dlq=before.dlq + len(dead)), entries, dead, start, attachments)


def _data_records(
    data: list[Record],
) -> tuple[list[tuple[str, bytes]], BatchStat, list[tuple[Record, str]]]:
    """``(entries, their stat, dead letters)`` of a batch's data records. The whole batch is
    checked at once (ids by one regex, lists by one pass, checksums summed as an array); only
    a batch holding a bad record is checked record by record, to say which and why."""
    keys = [m.key for m in data]
    values = [m.value for m in data]
    entities = valid_ids(keys)
    if entities is not None and None not in values:
        raw_keys = cast("list[bytes]", keys)
        checked = cast("list[bytes]", values)
        with contextlib.suppress(CodecError):
            return list(zip(entities, checked, strict=True)), batch_stat(raw_keys, checked), []
    entries: list[tuple[str, bytes]] = []
    stats: list[RecordStat] = []
    dead: list[tuple[Record, str]] = []
    for msg in data:
        try:
            entity, value = _record(msg)
            size, finite = summarize(value)
        except (ValidationError, CodecError) as e:
            dead.append((msg, str(e)))
            continue
        entries.append((entity, value))
        stats.append(record_stat(entity, value, size, finite))
    return entries, BatchStat.of(stats), dead


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
    """Writes batches of version-topic messages into Redis through ``store/``.

    What a batch writes before its progress compare-and-set is idempotent (the same values, the
    same registry record and attachments again), and is written only after a compare-and-set of
    the unchanged progress showed this sink holds the partition's current progress: a redelivered
    or stale batch writes nothing. Dead letters, which the broker would keep twice, are sent only
    for records whose compare-and-set this sink made.
    """

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        dlq: Producer,
        source: str,
        *,
        rebuild: bool = False,
        outages: Outages | None = None,
    ) -> None:
        self._rebuild = rebuild
        self._redis = redis
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        self._dlq = dlq
        self._source = source
        self._outages = outages or Outages(settings, OutagePolicy(broker_s=DLQ_TIMEOUT_S))
        self.registry = Registry(redis, self._keys)
        self._writers: dict[tuple[str, int], VersionWriter] = {}
        self._progress: dict[tuple[str, int, int], PartitionProgress] = {}
        # Plans whose compare-and-set may or may not have gone through (Redis went away while it
        # was sent): the next attempt reads the progress to tell.
        self._unsure: dict[tuple[str, int, int], Plan] = {}

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
        for key in [k for k in self._unsure if k[:2] == (store, version)]:
            del self._unsure[key]

    async def apply(
        self, store: str, version: int, partition: int, messages: Sequence[Record]
    ) -> PartitionProgress:
        """Apply ``messages`` (in offset order) of one partition; skip what was applied before.

        A Redis error leaves nothing half-counted: call again with the same messages (the
        materializer does, through an outage) and what went through is neither written nor
        dead-lettered twice.
        """
        writer = self.writer(store, version)
        cache_key = (store, version, partition)
        for _ in range(MAX_CONFLICT_RETRIES):
            before = self._progress.get(cache_key) or await writer.load(partition)
            unsure = self._unsure.pop(cache_key, None)
            if unsure is not None and before == unsure.after:
                # The last attempt's compare-and-set went through; only its answer was lost.
                await self._applied(cache_key, unsure)
            todo = [m for m in messages if m.offset > before.offset]
            if not todo:
                self._progress[cache_key] = before
                return before
            plan = plan_batch(before, todo)
            try:
                await self._write(writer, cache_key, before, plan)
            except ProgressConflict:
                log.info(
                    "%s v%s p%d: progress moved elsewhere; reloading", store, version, partition
                )
                self._progress.pop(cache_key, None)
                continue
            except REDIS_TRANSIENT:
                self._progress.pop(cache_key, None)
                self._unsure[cache_key] = plan
                raise
            await self._applied(cache_key, plan)
            return plan.after
        raise ServiceError(
            f"{store} v{version} p{partition}: progress kept moving; is another "
            "materializer writing the same partition?"
        )

    async def _write(
        self,
        writer: VersionWriter,
        cache_key: tuple[str, int, int],
        before: PartitionProgress,
        plan: Plan,
    ) -> None:
        """Write ``plan`` and move the progress from ``before`` to ``plan.after``, or raise
        :class:`ProgressConflict` having written nothing but (idempotent) values."""
        store, version, partition = cache_key
        if plan.start is not None or plan.attachments:
            # A compare-and-set that changes nothing: the registry record and attachments are
            # written only while this sink holds the partition's current progress. They go
            # before the progress moves past them, so a crash in between writes them again.
            await writer.apply(partition, before, before, [])
            if plan.start is not None:
                await self._register(store, version, plan.start)
            for name, value in plan.attachments:
                await writer.put_attachment(name, value)
        await writer.apply(partition, before, plan.after, plan.entries)

    async def _applied(self, cache_key: tuple[str, int, int], plan: Plan) -> None:
        """What follows a compare-and-set this sink made: its dead letters, sent once."""
        store, version, partition = cache_key
        self._progress[cache_key] = plan.after
        RECORDS_APPLIED.labels(store).inc(len(plan.entries))
        if plan.dead:
            await self._dead_letter(topics.version_topic(store, version), partition, plan.dead)

    async def _register(self, store: str, version: int, start: StartOfPush) -> None:
        info = await self.registry.get(store, version)
        if info is not None and info.state is State.INGESTING and _registered(info, start):
            return  # another partition's START_OF_PUSH said the same
        if info is None or info.state in (State.PUSHED, State.INGESTING):
            await self.registry.update(
                store,
                version,
                State.INGESTING,
                partitions=start.partitions,
                created_ms=start.created_ms,
                metadata=start.metadata,
            )

    async def _dead_letter(
        self, topic: str, partition: int, dead: list[tuple[Record, str]]
    ) -> None:
        store = topics.parse_version_topic(topic)
        letters = []
        for msg, reason in dead:
            log.warning("%s p%d offset %d dead-lettered: %s", topic, partition, msg.offset, reason)
            headers = [
                *msg.headers,
                *dlq_headers(reason, topic, partition, msg.offset, self._source),
            ]
            letters.append(Letter(topics.DLQ, msg.key, msg.value, headers))
        RECORDS_DEAD.labels(store[0] if store else "?").inc(len(dead))
        await self._outages.deliver(self._dlq, letters, f"{len(letters)} dead letter(s)")


def _registered(info: VersionInfo, start: StartOfPush) -> bool:
    return (info.partitions, info.created_ms, info.metadata) == (
        start.partitions,
        start.created_ms,
        start.metadata,
    )
