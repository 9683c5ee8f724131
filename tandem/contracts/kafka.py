"""Kafka client settings and topic set-up shared by every tandem process.

The settings follow Kafka's documented behaviour; the values chosen also keep the embedded Tansu
broker fast (see KAFKA-NOTES: its group join takes about session.timeout.ms / 2 and its fetch
long-poll sleeps about fetch.wait.max.ms / 2).
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tandem.contracts import topics
from tandem.contracts.exceptions import ServiceError
from tandem.contracts.settings import Settings

log = logging.getLogger(__name__)

SESSION_TIMEOUT_MS = 6000
FETCH_WAIT_MAX_MS = 20


def producer_config(settings: Settings, *, bulk: bool, **extra: Any) -> dict[str, Any]:
    """An idempotent producer; ``bulk`` trades latency for throughput (version pushes)."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 50 if bulk else 2,
        "compression.type": "lz4",
        "batch.size": 1_000_000 if bulk else 131_072,
        "message.max.bytes": settings.max_record_bytes + 65_536,
        "queue.buffering.max.kbytes": 1_048_576,
        "queue.buffering.max.messages": 500_000,
    }
    config.update(settings.kafka_client_config())
    config.update(extra)
    return config


def consumer_config(settings: Settings, group: str, **extra: Any) -> dict[str, Any]:
    """A consumer in ``group`` that commits by hand, after its sink write."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka,
        "group.id": group,
        "group.protocol": "classic",
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": SESSION_TIMEOUT_MS // 3,
        "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
        "topic.metadata.refresh.interval.ms": 2000,
        "allow.auto.create.topics": False,
    }
    config.update(settings.kafka_client_config())
    config.update(extra)
    return config


# librdkafka's own log lines go through Python logging (and so to each process's log
# destination), never raw to stderr.
RDKAFKA_LOG = logging.getLogger("librdkafka")


def make_producer(settings: Settings, *, bulk: bool, **extra: Any) -> Producer:
    """A producer with :func:`producer_config` (every tandem producer is made here)."""
    return Producer({**producer_config(settings, bulk=bulk, **extra), "logger": RDKAFKA_LOG})


def make_consumer(settings: Settings, group: str, **extra: Any) -> Consumer:
    """A consumer with :func:`consumer_config` (every tandem consumer is made here)."""
    return Consumer({**consumer_config(settings, group, **extra), "logger": RDKAFKA_LOG})


def admin(settings: Settings) -> AdminClient:
    """An admin client for ``settings.kafka``."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka,
        **settings.kafka_client_config(),
        "logger": RDKAFKA_LOG,
    }
    return AdminClient(config)


TANSU_CLUSTER_ID = "tansu_cluster"


def is_tansu(settings: Settings, timeout_s: float = 10.0) -> bool:
    """Whether the broker is the embedded Tansu (it names its cluster so): workarounds for its
    bugs apply there only."""
    client = admin(settings)  # kept referenced until the answer is in
    try:
        found = client.describe_cluster(request_timeout=timeout_s).result(timeout_s)
    except KafkaException as e:
        raise ServiceError(f"Kafka at {settings.kafka} did not describe its cluster: {e}") from e
    return bool(found.cluster_id == TANSU_CLUSTER_ID)


METADATA_TIMEOUT_S = 5.0


def existing_topics(client: AdminClient, timeout_s: float = METADATA_TIMEOUT_S) -> set[str]:
    """Names of the topics the cluster has."""
    try:
        return set(client.list_topics(timeout=timeout_s).topics)
    except KafkaException as e:
        raise ServiceError(
            f"Kafka did not answer a metadata request within {timeout_s:g} s ({e.args[0].str()}): "
            "is it running? Start one with `tandem dev up`, or point TANDEM_KAFKA at yours"
        ) from e


def create_topics(client: AdminClient, wanted: list[NewTopic], timeout_s: float = 15.0) -> None:
    """Create the ``wanted`` topics that do not exist yet (explicit partitions, never auto)."""
    have = existing_topics(client)
    missing = [t for t in wanted if t.topic not in have]
    if not missing:
        return
    for name, future in client.create_topics(missing, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic %s", name)
        except KafkaException as e:
            if e.args and e.args[0].code() == 36:  # TOPIC_ALREADY_EXISTS: a racing creator won
                continue
            raise ServiceError(f"could not create topic {name}: {e}") from e


def ensure_base_topics(settings: Settings) -> None:
    """Create tandem's fixed topics: events, versions and hidden items (both compacted), the
    dead-letter topic and impressions."""
    create_topics(
        admin(settings),
        [
            NewTopic(topics.EVENTS, settings.events_partitions, settings.replication_factor),
            NewTopic(
                topics.VERSIONS,
                1,
                settings.replication_factor,
                config={"cleanup.policy": "compact"},
            ),
            NewTopic(topics.DLQ, 1, settings.replication_factor),
            NewTopic(topics.IMPRESSIONS, settings.events_partitions, settings.replication_factor),
            NewTopic(
                topics.HIDDEN, 1, settings.replication_factor, config={"cleanup.policy": "compact"}
            ),
        ],
    )
