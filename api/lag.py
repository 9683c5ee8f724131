"""Consumer lag of tandem's consumer groups: committed offsets against the partitions' ends,
read under bounded timeouts (for the console)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import admin as kafka_admin
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel

from tandem.contracts.kafka import admin, make_consumer
from tandem.contracts.settings import Settings

log = logging.getLogger(__name__)

# The default group ids of the materializer (consumers/materializer.py GROUP) and of the stream
# worker (streams/app.py WorkerOptions.app_id: Faust's group id). The api layer may not import
# those packages; tests/api/test_console.py checks that these stay equal to them.
MATERIALIZER_GROUP = "tandem-materializer"
WORKER_GROUP = "tandem-streams"
DEFAULT_GROUPS = {"materializer": MATERIALIZER_GROUP, "worker": WORKER_GROUP}
LAG_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """Where a group stands in one partition: its committed offset and the partition's end."""

    topic: str
    partition: int
    committed: int
    end: int


class TopicLag(BaseModel, frozen=True):
    """A group's lag summed over the partitions of one topic it has committed in."""

    topic: str
    partitions: int
    committed: int
    end: int
    lag: int


class GroupLag(BaseModel, frozen=True):
    """A group's lag: ``lag`` None (and ``error`` set) when it could not be read."""

    role: str
    group: str
    lag: int | None
    topics: list[TopicLag] = []
    error: str | None = None


def summarize(rows: Iterable[PartitionOffsets]) -> list[TopicLag]:
    """Per-topic sums of committed offsets, ends and lag (never negative), topics by name."""
    by_topic: dict[str, list[PartitionOffsets]] = {}
    for row in rows:
        by_topic.setdefault(row.topic, []).append(row)
    return [
        TopicLag(
            topic=topic,
            partitions=len(parts),
            committed=sum(p.committed for p in parts),
            end=sum(p.end for p in parts),
            lag=sum(max(0, p.end - p.committed) for p in parts),
        )
        for topic, parts in sorted(by_topic.items())
    ]


def partition_offsets(
    consumer: Consumer, client: AdminClient, timeout_s: float
) -> list[PartitionOffsets]:
    """The committed offset (in ``consumer``'s group) and the end of every partition the group
    has committed in. Partitions whose end cannot be read (a topic deleted meanwhile) are left
    out.

    The committed offsets are fetched by a consumer of the group, never by the AdminClient:
    librdkafka's admin ListConsumerGroupOffsets crashes the process when the group's coordinator
    answers NOT_COORDINATOR (librdkafka issue 5040), as a group seen for the first time does.
    """
    metadata = consumer.list_topics(timeout=timeout_s)
    asked = [
        TopicPartition(name, partition)
        for name, topic in metadata.topics.items()
        if not name.startswith("__") and topic.error is None
        for partition in topic.partitions
    ]
    if not asked:
        return []
    committed = [
        tp
        for tp in consumer.committed(asked, timeout=timeout_s)
        if tp.error is None and tp.offset >= 0
    ]
    if not committed:
        return []
    latest = kafka_admin.OffsetSpec.latest()  # type: ignore[attr-defined,no-untyped-call]
    specs = {TopicPartition(tp.topic, tp.partition): latest for tp in committed}
    ends = client.list_offsets(specs, request_timeout=timeout_s)
    rows = []
    for tp in committed:
        try:
            end = ends[TopicPartition(tp.topic, tp.partition)].result(timeout=timeout_s).offset
        except KafkaException as e:
            log.debug("no end offset for %s[%d]: %s", tp.topic, tp.partition, e)
            continue
        rows.append(PartitionOffsets(tp.topic, tp.partition, tp.offset, end))
    return rows


class LagReader:
    """Reads the lag of consumer groups: one idle consumer per group (it never subscribes, so
    it never joins the group or commits) and one AdminClient. Calls block: run them in a
    thread."""

    def __init__(self, settings: Settings, timeout_s: float = LAG_TIMEOUT_S) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        self._client = admin(settings)
        self._consumers: dict[str, Consumer] = {}
        self._lock = threading.Lock()

    def _consumer(self, group: str) -> Consumer:
        with self._lock:
            found = self._consumers.get(group)
            if found is None:
                found = self._consumers[group] = make_consumer(self._settings, group)
            return found

    def lag(self, role: str, group: str) -> GroupLag:
        """The lag of ``group``; a broker that does not answer in time is reported, not
        raised."""
        try:
            rows = partition_offsets(self._consumer(group), self._client, self._timeout_s)
        except (KafkaException, TimeoutError) as e:
            reason = e.args[0].str() if e.args and hasattr(e.args[0], "str") else repr(e)
            why = f"could not read the group's offsets: {reason}"
            return GroupLag(role=role, group=group, lag=None, error=why)
        topics = summarize(rows)
        return GroupLag(role=role, group=group, lag=sum(t.lag for t in topics), topics=topics)

    def close(self) -> None:
        """Close the consumers (they hold no assignment: nothing to commit or revoke)."""
        with self._lock:
            consumers, self._consumers = list(self._consumers.values()), {}
        for consumer in consumers:
            consumer.close()
