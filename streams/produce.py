"""Sending interaction events to ``tandem.events`` (``tandem events produce``, load, demos)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson
from confluent_kafka import KafkaError, Message

from tandem.contracts import topics
from tandem.contracts.domain import DEVICES, EventType
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.kafka import make_producer
from tandem.contracts.schemas import Event, parse_event
from tandem.contracts.settings import Settings
from tandem.streams.exceptions import EventsNotAcknowledged

log = logging.getLogger(__name__)

FUNNEL = (
    (EventType.VIEW, 0.70),
    (EventType.CLICK, 0.17),
    (EventType.ADD_TO_CART, 0.06),
    (EventType.LIKE, 0.03),
    (EventType.PURCHASE, 0.03),
    (EventType.DISLIKE, 0.01),
)


def read_events(path: Path) -> Iterator[Event]:
    """Validated events of a JSON-lines file; a bad line stops with its number and field."""
    now_ms = time.time_ns() // 1_000_000
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield parse_event(orjson.loads(line), now_ms)
            except orjson.JSONDecodeError as e:
                raise ValidationError("event", f"{path}:{number}: not valid JSON ({e})") from e
            except ValidationError as e:
                raise ValidationError(e.field, f"{path}:{number}: {e.rule}") from e


def synthetic_events(
    count: int, users: int = 1000, items: int = 5000, seed: int = 0
) -> Iterator[Event]:
    """``count`` plausible events (a funnel of event types, a device per user), stamped now."""
    rng = random.Random(seed)
    kinds, weights = zip(*FUNNEL, strict=True)
    devices = sorted(DEVICES)
    for n in range(count):
        user = rng.randrange(users)
        yield Event(
            user_id=f"u{user}",
            item_id=f"i{int(rng.paretovariate(1.2)) % items}",
            event_type=rng.choices(kinds, weights)[0],
            ts_ms=time.time_ns() // 1_000_000,
            event_id=f"e{seed}-{n}",
            device=devices[user % len(devices)],
        )


class EventProducer:
    """An idempotent producer keyed by user id, so one user's events stay in order."""

    def __init__(self, settings: Settings) -> None:
        self._producer = make_producer(settings, bulk=False)
        self.failed: list[str] = []
        self.delivered = 0

    def _report(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed.append(f"{(msg.key() or b'').decode()}: {err.str()}")

    def send(self, event: Event) -> None:
        """Queue one event."""
        while True:
            try:
                self._producer.produce(
                    topics.EVENTS,
                    key=event.user_id.encode(),
                    value=event.to_json(),
                    on_delivery=self._report,
                )
                break
            except BufferError:
                self._producer.poll(0.01)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for every queued event; raise if any was not acknowledged."""
        left = self._producer.flush(timeout_s)
        if left or self.failed:
            raise EventsNotAcknowledged(
                f"{left} event(s) unacknowledged, {len(self.failed)} failed: {self.failed[:3]}"
            )


def produce(
    settings: Settings,
    events: Iterable[Event],
    rate_per_s: float | None,
    on_event: Callable[[Event], object] | None = None,
) -> int:
    """Send ``events`` (paced to ``rate_per_s`` if given); returns how many were acknowledged."""
    producer = EventProducer(settings)
    start = time.perf_counter()
    for n, event in enumerate(events):
        if rate_per_s:
            delay = start + n / rate_per_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        producer.send(event)
        if on_event is not None:
            on_event(event)
    producer.flush()
    return producer.delivered
