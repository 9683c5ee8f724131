"""The re-ranker trained from the impression log: exactly the features served, labelled by what
users did next (log-and-wait, point-in-time correct).

An impression is labelled once it is older than the wait: an item shown gets the gain of the
strongest attributed event on it (click 1, add-to-cart 2, purchase 3), from events that name the
impression's request id, or that name none and came within the wait after it. Events before the
impression never label it; impressions younger than the wait are left for a later run. The
held-out comparison replays logged impressions: NDCG@10 of the order served against the order
the candidate model gives the same logged features.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from tandem.batch.rerank_train import RerankerResult, fit
from tandem.contracts import topics
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.features import FEATURES
from tandem.contracts.kafka import make_consumer
from tandem.contracts.schemas import Event, decode_event
from tandem.contracts.settings import Settings

log = logging.getLogger(__name__)

GAINS = {"click": 1.0, "add_to_cart": 2.0, "purchase": 3.0}
READ_TIMEOUT_S = 10.0

Group = tuple[np.ndarray, np.ndarray]


def label(
    impressions: Iterable[dict[str, Any]], events: Iterable[Event], wait_ms: int, now_ms: int
) -> list[Group]:
    """Features and labels of every matured impression with at least one positive item."""
    by_request: dict[str, list[Event]] = defaultdict(list)
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        if event.event_type in GAINS:
            if event.request_id is not None:
                by_request[event.request_id].append(event)
            else:
                by_user[event.user_id].append(event)
    groups = []
    for record in impressions:
        if record["ts_ms"] > now_ms - wait_ms or record.get("feature_names") != list(FEATURES):
            continue  # not matured yet, or logged without features (cached, or another schema)
        start, end = record["ts_ms"], record["ts_ms"] + wait_ms
        later = [e for e in by_user.get(record["user_id"], []) if start < e.ts_ms <= end]
        outcome = by_request.get(record["request_id"], []) + later
        gains: dict[str, float] = {}
        for event in outcome:
            gains[event.item_id] = max(gains.get(event.item_id, 0.0), GAINS[event.event_type])
        items = record["items"]
        labels = np.array([gains.get(i["item_id"], 0.0) for i in items], np.float32)
        if labels.any() and all("features" in i for i in items):
            groups.append((np.array([i["features"] for i in items], np.float32), labels))
    return groups


def train_from_logs(
    impressions: Iterable[dict[str, Any]],
    events: Iterable[Event],
    wait_ms: int,
    now_ms: int,
    seed: int = 0,
) -> RerankerResult:
    """A re-ranker from labelled impressions, compared with the order served."""
    return fit(label(impressions, events, wait_ms, now_ms), seed)


def read_logs(settings: Settings) -> tuple[list[dict[str, Any]], list[Event]]:
    """Every impression and event on the broker now (bounded by ``READ_TIMEOUT_S`` without
    progress)."""
    impressions = [orjson.loads(v) for v in _read(settings, topics.IMPRESSIONS)]
    events = []
    for raw in _read(settings, topics.EVENTS):
        try:
            events.append(decode_event(raw, 2**62))
        except ValidationError:
            continue  # the worker dead-letters it; training skips it
    return impressions, events


def _read(settings: Settings, topic: str) -> list[bytes]:
    consumer = make_consumer(
        settings, "tandem-logs-" + uuid.uuid4().hex[:8], **{"enable.partition.eof": True}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=READ_TIMEOUT_S).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        found: list[bytes] = []
        ended: set[int] = set()
        while len(ended) < len(partitions):
            msg = consumer.poll(READ_TIMEOUT_S)
            if msg is None:
                raise TimeoutError(f"{topic}: no progress for {READ_TIMEOUT_S:g} s")
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"{topic}: {error.str()}")
                ended.add(msg.partition() or 0)
                continue
            found.append(msg.value() or b"")
        return found
    finally:
        consumer.close()
