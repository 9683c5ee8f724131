"""The impression log: every (sampled) answer, as shown, on ``tandem.impressions``.

An impression carries what attribution, online metrics and training from logs need: the
request id, user, time, the versions and variant (with the probability of that variant), and
the items with their position, score, sources and the feature vector the re-ranker saw.

Logging never slows or fails an answer: the request path only appends to a bounded buffer (an
answer arriving when it is full is dropped and counted); a background task builds the records
and hands them to the producer. A fresh answer comes with what the request path already made
(the answer's structure and the shown items' feature rows, as the re-ranker saw them), so
nothing is parsed back or rebuilt; only cached and snapshot answers are parsed from their JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from confluent_kafka import KafkaException

from tandem.api import metrics
from tandem.api.exceptions import Unavailable
from tandem.api.producer import AsyncProducer
from tandem.contracts import topics
from tandem.contracts.features import FEATURES
from tandem.store.online import Assignment

log = logging.getLogger(__name__)

# Impressions go to the producer in batches this far apart: each batch costs librdkafka's broker
# thread a produce request and the ack thread a wake-up, whatever its size (~100 µs of CPU per
# impression at 4 a batch, 20 ms apart, at 200 answers/s). Attribution and training read them
# seconds to hours later.
DRAIN_S = 0.2
BATCH = 500


@dataclass(frozen=True, slots=True)
class Impression:
    """One answer as the request path saw it; turned into a record off the request path."""

    request_id: str
    ts_ms: int
    took_ms: float
    cached: bool
    body: bytes  # the answer without its envelope (user, items, versions, variant, ...)
    assignment: Assignment
    # The answer's fields as the request path built them (``body`` unparsed), when it has them.
    answer: dict[str, Any] | None = None
    # The shown items' feature rows, in the answer's order (``FEATURES`` columns), if re-ranked.
    features: npt.NDArray[np.float32] | None = None


def record(impression: Impression) -> dict[str, Any]:
    """The ``tandem.impressions`` record of one answer; its feature rows are numpy arrays, so
    encode it with :func:`encode` (``OPT_SERIALIZE_NUMPY``)."""
    answer = impression.answer
    if answer is None:
        answer = orjson.loads(impression.body)
    rows: npt.NDArray[np.float64] | None = None
    if impression.features is not None and len(impression.features):
        rows = impression.features.astype(np.float64).round(6)  # one vector op for all
    items = [
        {
            **item,
            "position": i,
            **({"features": rows[i]} if rows is not None and i < len(rows) else {}),
        }
        for i, item in enumerate(answer.get("items", []))
    ]
    assignment = impression.assignment
    return {
        "request_id": impression.request_id,
        "user_id": answer["user_id"],
        "ts_ms": impression.ts_ms,
        "took_ms": round(impression.took_ms, 3),
        "cached": impression.cached,
        "degraded": answer.get("degraded", False),
        "versions": answer.get("versions", {}),
        "reranker": answer.get("reranker"),
        "variant": assignment.variant,
        "probability": assignment.probability,
        "canaries": list(assignment.canaries),
        "experiments": [
            {"store": s, "version": str(v), "share": share}
            for s, v, share in assignment.experiments
        ],
        "feature_names": list(FEATURES) if rows is not None else [],
        "items": items,
    }


def encode(record: dict[str, Any]) -> bytes:
    """A record's JSON: numpy feature rows as lists of floats (orjson writes a float64 as it
    writes the same Python float)."""
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)


class ImpressionLog:
    """A bounded buffer of impressions drained to Kafka by a background task."""

    def __init__(self, producer: AsyncProducer, sample: float, capacity: int) -> None:
        self._producer = producer
        self._sample = sample
        self._buffer: deque[Impression] = deque()
        self._capacity = capacity
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wants(self) -> bool:
        """Whether this answer is sampled (decide before building anything for it)."""
        return self._sample >= 1.0 or random.random() < self._sample

    def offer(self, impression: Impression) -> None:
        """Queue one impression; dropped (and counted) when the buffer is full."""
        if len(self._buffer) >= self._capacity:
            metrics.IMPRESSIONS.labels("dropped").inc()
            return
        self._buffer.append(impression)
        self._wake.set()

    def start(self) -> None:
        """Start draining in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self.drain()
            await asyncio.sleep(DRAIN_S)  # gather a batch before the next hand-over

    def drain(self, limit: int | None = None) -> int:
        """Hand up to ``limit`` buffered impressions to the producer; how many went."""
        sent = 0
        while self._buffer and (limit is None or sent < limit):
            impression = self._buffer.popleft()
            try:
                body = record(impression)
                user = str(body["user_id"])
                self._producer.produce_record(
                    topics.IMPRESSIONS, key=user.encode(), value=encode(body)
                )
            except (BufferError, KafkaException, Unavailable) as e:
                metrics.IMPRESSIONS.labels("dropped").inc()
                log.debug("impression dropped: %s", e)
                continue
            except Exception:
                metrics.IMPRESSIONS.labels("dropped").inc()
                log.exception("an impression could not be logged")
                continue
            metrics.IMPRESSIONS.labels("sent").inc()
            sent += 1
        return sent

    async def close(self) -> None:
        """Stop the task and hand over what is left (the producer flushes it at close)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.drain()
