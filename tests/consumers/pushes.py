"""Hand-made pushes for tests: what a broken or foreign producer could leave on a version topic."""

from __future__ import annotations

from confluent_kafka.cimpl import NewTopic

from tandem.batch.publish import allocate_version
from tandem.contracts import topics
from tandem.contracts.checksum import combine, record_digest
from tandem.contracts.codec import encode
from tandem.contracts.control import (
    Control,
    EndOfPush,
    StartOfPush,
    control_headers,
    record_headers,
)
from tandem.contracts.kafka import admin, create_topics, make_producer
from tandem.contracts.settings import Settings


def raw_push(
    settings: Settings,
    store: str,
    records: list[tuple[bytes, bytes]],
    *,
    end: bool = True,
    count_delta: int = 0,
) -> int:
    """Push ``records`` (key, value bytes) to one partition; returns the version.

    ``end=False`` leaves out END_OF_PUSH; ``count_delta`` makes END_OF_PUSH lie about the count.
    """
    version = allocate_version()
    topic = topics.version_topic(store, version)
    create_topics(admin(settings), [NewTopic(topic, 1, 1)])
    producer = make_producer(settings, bulk=True)
    start = StartOfPush(1, 0, {}).encode()
    producer.produce(
        topic,
        value=start,
        partition=0,
        headers=control_headers(Control.START_OF_PUSH, store, version),
    )
    checksum = 0
    for key, value in records:
        producer.produce(
            topic, key=key, value=value, partition=0, headers=record_headers(store, version)
        )
        checksum = combine(checksum, record_digest(key, value))
    if end:
        eop = EndOfPush(len(records) + count_delta, checksum).encode()
        producer.produce(
            topic,
            value=eop,
            partition=0,
            headers=control_headers(Control.END_OF_PUSH, store, version),
        )
    assert producer.flush(10) == 0
    return version


def good_records(n: int, tag: str = "x") -> list[tuple[bytes, bytes]]:
    """``n`` valid records."""
    return [(f"u{e}".encode(), encode([f"{tag}{e}", "i2"], [0.9, 0.1])) for e in range(n)]
