"""Lifecycle records on ``tandem.versions`` (compacted, keyed by store name)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from confluent_kafka import Producer

from tandem import topics


def announce(producer: Producer, store: str, version: int, state: str, **fields: Any) -> None:
    """Queue one lifecycle record; the caller flushes."""
    body = {
        "store": store,
        "version": version,
        "state": state,
        "ts_ms": time.time_ns() // 1_000_000,
        **fields,
    }
    producer.produce(topics.VERSIONS, key=store.encode(), value=orjson.dumps(body))
