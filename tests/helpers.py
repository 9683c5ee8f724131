"""Helpers shared by integration tests: waiting with a bound, reading the DLQ, child processes."""

from __future__ import annotations

import urllib.request
import uuid

from confluent_kafka import (
    OFFSET_BEGINNING,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from tandem.contracts import topics
from tandem.contracts.control import DLQ_OFFSET, DLQ_REASON, DLQ_TOPIC
from tandem.contracts.kafka import make_consumer, make_producer
from tandem.contracts.settings import Settings
from tandem.contracts.waiting import wait_for
from tandem.store.admin import Served, VersionAdmin
from tandem.store.connect import connect

__all__ = ["assignments", "metric", "read_dlq", "read_messages", "read_topic", "served", "wait_for"]


def read_messages(settings: Settings, topic: str) -> list[Message]:
    """Every message of every partition of ``topic``, read to its end (bounded)."""
    consumer = make_consumer(
        settings, "read" + uuid.uuid4().hex[:6], **{"enable.partition.eof": True}
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    found: list[Message] = []
    ended: set[int] = set()
    try:
        while len(ended) < len(partitions):
            msg = consumer.poll(5)
            assert msg is not None, f"{topic} did not reach its end"
            error = msg.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                ended.add(msg.partition() or 0)
                continue
            found.append(msg)
    finally:
        consumer.close()
    return found


COORDINATOR_MOVING = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
)


def assignments(client: AdminClient, group: str, topic: str) -> dict[str, set[int]]:
    """Member id → the partitions of ``topic`` it holds in ``group`` (empty while the group's
    coordinator is not known yet).

    Not on Tansu: its DescribeGroups answers a stable group with no members (or members with empty
    assignments), so there the tests watch the members' own metrics instead (:func:`metric`)."""
    try:
        described = client.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    except KafkaException as e:
        if e.args and (e.args[0].retriable() or e.args[0].code() in COORDINATOR_MOVING):
            return {}
        raise
    return {
        member.member_id: {
            tp.partition for tp in member.assignment.topic_partitions if tp.topic == topic
        }
        for member in described.members
    }


def metric(port: int, name: str, **labels: str) -> float:
    """The value of sample ``name`` (with ``labels``) that the process serving Prometheus metrics
    at 127.0.0.1:``port`` reports; 0 while it does not answer or has no such sample yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def read_topic(settings: Settings, topic: str) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record of ``topic``."""
    return [(m.key() or b"", m.value() or b"") for m in read_messages(settings, topic)]


def read_dlq(settings: Settings, source_topic: str) -> list[tuple[bytes, bytes, bytes]]:
    """(key, reason, offset) of every dead letter that came from ``source_topic``."""
    found = []
    for msg in read_messages(settings, topics.DLQ):
        headers = dict(msg.headers() or [])
        if headers.get(DLQ_TOPIC) == source_topic.encode():
            reason, offset = headers[DLQ_REASON], headers[DLQ_OFFSET]
            assert isinstance(reason, bytes)
            assert isinstance(offset, bytes)
            found.append((msg.key() or b"", reason, offset))
    return found


async def served(settings: Settings, store: str, entity_id: str) -> Served:
    """What the live version of ``store`` serves for ``entity_id`` (the operator's lookup)."""
    redis = connect(settings)
    try:
        admin = VersionAdmin(settings, redis, make_producer(settings, bulk=False))
        return await admin.lookup(store, entity_id)
    finally:
        await redis.aclose()
