"""The producer wrapper's healing, driven through a fake confluent-kafka producer: each way a
fatal error can arrive (poll, error_cb, a delivery report, produce) fails the events waiting on
it and replaces the producer with backoff; the ack thread survives anything around poll.

These complement test_selfheal.py, which does the same against a real broker and a real
librdkafka fatal state; here every path is forced deterministically.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from tandem.api import producer as producer_module
from tandem.api.exceptions import Unavailable
from tandem.api.metrics import REGISTRY
from tandem.api.producer import AsyncProducer, ErrorCallback, recreate_delay
from tandem.contracts.settings import Settings
from tandem.contracts.waiting import wait_for

FATAL = KafkaError(KafkaError.UNKNOWN_PRODUCER_ID, "Broker: Unknown Producer Id", fatal=True)
PRODUCE_FATAL = KafkaError(KafkaError._FATAL, "Unable to produce message: Local: Fatal error")
TRANSIENT = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")


class FakeProducer:
    """Just enough of confluent_kafka.Producer; callbacks run inside ``poll``, as librdkafka's
    do, on whichever thread polls."""

    def __init__(self, on_error: ErrorCallback) -> None:
        self.on_error = on_error
        self.lock = threading.Lock()
        self.waiting: list[Callable[[KafkaError | None, Any], None]] = []
        self.scheduled: list[Callable[[], None]] = []
        self.poll_raises: list[BaseException] = []
        self.produce_raises: KafkaException | None = None
        self.purged = False

    def produce(self, topic: str, **kwargs: Any) -> None:
        if self.produce_raises is not None:
            raise self.produce_raises
        with self.lock:
            self.waiting.append(kwargs["on_delivery"])

    def poll(self, timeout: float = 0.0) -> int:
        with self.lock:
            calls, self.scheduled = self.scheduled, []
            raising = self.poll_raises.pop(0) if self.poll_raises else None
        for call in calls:
            call()
        if raising is not None:
            raise raising
        time.sleep(min(timeout, 0.005))
        return len(calls)

    def report(self, err: KafkaError | None) -> None:
        """Deliver (or fail, with ``err``) every waiting message at the next poll."""
        with self.lock:
            waiting, self.waiting = self.waiting, []
            self.scheduled += [functools.partial(cb, err, None) for cb in waiting]

    def error(self, err: KafkaError) -> None:
        """Call ``error_cb`` at the next poll."""
        with self.lock:
            self.scheduled.append(lambda: self.on_error(err))

    def purge(self) -> None:
        self.purged = True

    def flush(self, timeout: float = 0.0) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.waiting)


class Harness:
    """An AsyncProducer on fakes; ``made`` holds every producer it asked for, in order."""

    def __init__(self, fail_making: int = 0) -> None:
        self.made: list[FakeProducer] = []
        self.fail_making = fail_making  # refuse this many makes after the first
        self.loop = asyncio.get_running_loop()
        self.wrapper = AsyncProducer(Settings.load(), self.loop, self.factory)

    def factory(self, on_error: ErrorCallback) -> Producer:
        if self.made and self.fail_making > 0:
            self.fail_making -= 1
            raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "cannot make it now"))
        self.made.append(FakeProducer(on_error))
        return cast(Producer, self.made[-1])

    @property
    def current(self) -> FakeProducer:
        return self.made[-1]

    async def replaced(self, count: int = 2) -> None:
        async def probe() -> bool:
            return len(self.made) >= count and self.wrapper.problem() is None

        await wait_for(probe, 10, f"producer number {count}")


@pytest.fixture
async def harness(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    monkeypatch.setattr(producer_module, "RECREATE_MIN_S", 0.01)
    made = Harness()
    yield made
    await asyncio.to_thread(made.wrapper.close, 1.0)


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def failure(future: asyncio.Future[None]) -> BaseException | None:
    try:
        await asyncio.wait_for(future, 5)
    except Unavailable as e:
        return e
    return None


@pytest.mark.parametrize("path", ["poll", "error_cb", "delivery_report", "produce"])
async def test_a_fatal_error_fails_waiting_events_and_replaces_the_producer(
    harness: Harness, path: str
) -> None:
    recreations = counter("tandem_api_producer_recreations_total")
    first = harness.current
    waiting = [harness.wrapper.send_event("u1", b"{}") for _ in range(2)]
    if path == "poll":
        first.poll_raises.append(KafkaException(FATAL))
    elif path == "error_cb":
        first.error(FATAL)
    elif path == "delivery_report":
        with first.lock:  # the first message fails fatally; the second only waits
            callback = first.waiting.pop(0)
            first.scheduled.append(lambda: callback(FATAL, None))
    else:
        first.produce_raises = KafkaException(PRODUCE_FATAL)
        with pytest.raises(Unavailable, match="refused"):
            harness.wrapper.send_event("u1", b"{}")
    errors = [await failure(f) for f in waiting]
    assert all(isinstance(e, Unavailable) for e in errors), errors
    assert any("being replaced" in str(e) for e in errors), errors
    await harness.replaced()
    assert harness.wrapper.producer is cast(Producer, harness.current)
    assert first.purged
    assert counter("tandem_api_producer_recreations_total") == recreations + 1
    assert harness.wrapper.recreations == 1
    fresh = harness.wrapper.send_event("u1", b"{}")
    harness.current.report(None)
    await asyncio.wait_for(fresh, 5)  # raises if it failed


async def test_events_are_refused_at_once_while_the_producer_is_replaced(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(producer_module, "RECREATE_MIN_S", 0.5)
    harness.current.error(FATAL)

    async def broken() -> bool:
        return harness.wrapper.problem() is not None

    await wait_for(broken, 5, "the fatal error to be seen")
    started = time.perf_counter()
    with pytest.raises(Unavailable, match="being replaced"):
        harness.wrapper.send_event("u1", b"{}")
    assert time.perf_counter() - started < 0.1
    await harness.replaced()
    future = harness.wrapper.send_event("u1", b"{}")
    harness.current.report(None)
    await asyncio.wait_for(future, 5)  # raises if it failed


async def test_a_late_fatal_error_of_a_replaced_producer_is_ignored(harness: Harness) -> None:
    first = harness.current
    first.error(FATAL)
    await harness.replaced()
    first.on_error(FATAL)  # the old producer's callback, late
    future = harness.wrapper.send_event("u1", b"{}")  # the new one still takes events
    harness.current.report(None)
    await asyncio.wait_for(future, 5)  # raises if it failed
    assert len(harness.made) == 2
    assert harness.wrapper.problem() is None


async def test_the_ack_thread_survives_errors_around_poll(harness: Harness) -> None:
    errors = counter("tandem_api_producer_poll_errors_total")
    harness.current.poll_raises += [RuntimeError("a callback broke"), KafkaException(TRANSIENT)]
    harness.current.error(TRANSIENT)  # not fatal: only logged

    async def both_seen() -> bool:
        return counter("tandem_api_producer_poll_errors_total") >= errors + 2

    await wait_for(both_seen, 5, "both poll errors to be caught")
    assert harness.wrapper.problem() is None
    future = harness.wrapper.send_event("u1", b"{}")
    harness.current.report(None)
    await asyncio.wait_for(future, 5)  # raises if it failed
    assert len(harness.made) == 1


async def test_replacing_backs_off_until_a_producer_can_be_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(producer_module, "RECREATE_MIN_S", 0.05)
    harness = Harness(fail_making=2)
    try:
        started = time.monotonic()
        harness.current.error(FATAL)
        await harness.replaced()
        took = time.monotonic() - started
        assert took >= 0.05 + 0.1 + 0.2  # three attempts, each waiting twice the one before
        assert harness.wrapper.recreations == 1
    finally:
        await asyncio.to_thread(harness.wrapper.close, 1.0)


def test_the_backoff_doubles_and_is_capped() -> None:
    delays = [recreate_delay(attempt) for attempt in range(1, 9)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert recreate_delay(10**9) == 5.0


async def test_close_stops_the_ack_thread_even_while_replacing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(producer_module, "RECREATE_MIN_S", 30.0)
    harness = Harness()
    thread = next(t.ident for t in threading.enumerate() if t.name == "kafka-acks")
    harness.current.error(FATAL)

    async def broken() -> bool:
        return harness.wrapper.problem() is not None

    await wait_for(broken, 5, "the fatal error to be seen")
    started = time.monotonic()
    await asyncio.to_thread(harness.wrapper.close, 5.0)
    assert time.monotonic() - started < 2  # the backoff wait ends with close
    assert len(harness.made) == 1  # and no producer is made after it
    assert "kafka-acks" not in {t.name for t in threading.enumerate() if t.ident == thread}


async def test_lifecycle_records_go_through_the_current_producer(harness: Harness) -> None:
    announcer = harness.wrapper.announcer
    first = harness.current
    first.produce_raises = KafkaException(PRODUCE_FATAL)
    with pytest.raises(KafkaException):
        announcer.produce("tandem.versions", key=b"u2i", value=b"{}", on_delivery=print)
    await harness.replaced()  # a fatal error met by a lifecycle record replaces it too
    announcer.produce("tandem.versions", key=b"u2i", value=b"{}", on_delivery=print)
    assert len(harness.current) == 1
    assert harness.wrapper.producer is cast(Producer, harness.current)
    assert announcer.poll(0) == 0  # the ack thread serves callbacks, never the caller
