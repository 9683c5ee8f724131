"""Helpers shared by integration tests: waiting with a bound, reading the DLQ, child processes."""

from __future__ import annotations

import os
import uuid

import orjson
from confluent_kafka import Consumer, TopicPartition

from tandem import topics
from tandem.control import DLQ_OFFSET, DLQ_REASON, DLQ_TOPIC
from tandem.kafka import consumer_config
from tandem.settings import Settings
from tandem.waiting import wait_for

__all__ = ["env_of", "read_dlq", "wait_for"]


def read_dlq(settings: Settings, source_topic: str) -> list[tuple[bytes, bytes, bytes]]:
    """(key, reason, offset) of every dead letter that came from ``source_topic``."""
    consumer = Consumer(
        consumer_config(settings, "dlq" + uuid.uuid4().hex[:6], **{"enable.partition.eof": True})
    )
    consumer.assign([TopicPartition(topics.DLQ, 0, 0)])
    found = []
    try:
        while True:
            msg = consumer.poll(5)
            assert msg is not None, "tandem.dlq did not reach its end"
            if msg.error():
                break
            headers = dict(msg.headers() or [])
            if headers.get(DLQ_TOPIC) == source_topic.encode():
                reason, offset = headers[DLQ_REASON], headers[DLQ_OFFSET]
                assert isinstance(reason, bytes)
                assert isinstance(offset, bytes)
                found.append((msg.key() or b"", reason, offset))
    finally:
        consumer.close()
    return found


def env_of(settings: Settings) -> dict[str, str]:
    """The environment that gives a child ``tandem`` process these settings."""
    stores = {name: policy.model_dump() for name, policy in settings.stores.items()}
    return {
        **os.environ,
        "TANDEM_KAFKA": settings.kafka,
        "TANDEM_REDIS_URL": settings.redis_url.get_secret_value(),
        "TANDEM_KEY_PREFIX": settings.key_prefix,
        "TANDEM_STORES": orjson.dumps(stores).decode(),
        "TANDEM_EVENTS_PARTITIONS": str(settings.events_partitions),
    }
