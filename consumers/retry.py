"""Riding out Redis and broker outages: bounded retry with exponential backoff, cut short by a
stop request.

Everything retried here is safe to repeat: the materializer's Redis writes are values (the same
bytes again) followed by a progress compare-and-set, and its decisions are compare-and-sets too.
An outage longer than its bound ends in :class:`RedisUnavailable` or :class:`BrokerUnavailable`,
whose one-line message says what to do; the process then exits non-zero instead of staying alive
and idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from redis import exceptions as redis_errors

from tandem.consumers.exceptions import BrokerUnavailable, RedisUnavailable, Stopped
from tandem.consumers.metrics import OUTAGE_RETRIES
from tandem.consumers.records import HeaderList
from tandem.contracts.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 2.0
FLUSH_STEP_S = 0.5  # how long one wait for the broker's acknowledgements blocks a thread
PROBE_TIMEOUT_S = 2.0

# Errors of a Redis that is away (restarting, loading its data, failing over), not of a request.
REDIS_TRANSIENT: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # also BusyLoadingError: a restarted Redis loading its data
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,  # a master turned replica by a failover
    OSError,
)

# Consumer errors after which the broker is probed until it answers.
BROKER_DOWN = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})


@dataclass(frozen=True)
class OutagePolicy:
    """How long each service may be away before the process gives up."""

    redis_s: float = 60.0
    broker_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Letter:
    """One message for the broker (a dead letter)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: HeaderList


class Outages:
    """Retries Redis calls and broker deliveries within the policy's bounds; a set ``stop`` ends
    every wait at once with :class:`Stopped`."""

    def __init__(
        self,
        settings: Settings,
        policy: OutagePolicy,
        resume: str = "run the command again",
        redis_option: str | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.resume = resume  # what to do once the service is back, for the error messages
        self.redis_option = redis_option  # the option that sets ``policy.redis_s``, if any
        self.stop = asyncio.Event()

    async def pause(self, delay_s: float) -> None:
        """Wait ``delay_s``; :class:`Stopped` as soon as a stop is asked for."""
        if self.stop.is_set():
            raise Stopped("stop requested")
        try:
            await asyncio.wait_for(self.stop.wait(), delay_s)
        except TimeoutError:
            return
        raise Stopped("stop requested")

    async def redis(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until Redis takes it, backing off exponentially; after ``redis_s`` of
        failures, :class:`RedisUnavailable`."""
        deadline = time.monotonic() + self.policy.redis_s
        delay = RETRY_FIRST_S
        while True:
            try:
                return await call()
            except REDIS_TRANSIENT as e:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RedisUnavailable(self._redis_gone(what, e)) from e
                wait = min(delay, left)  # the last attempt comes at the deadline
                OUTAGE_RETRIES.labels("redis").inc()
                log.warning("Redis did not take %s (%s); retrying in %.1f s", what, e, wait)
                await self.pause(wait)
                delay = min(delay * 2, RETRY_MAX_S)

    def _redis_gone(self, what: str, error: BaseException) -> str:
        longer = f" ({self.redis_option} rides out longer outages)" if self.redis_option else ""
        return (
            f"Redis at {self.settings.redis_url_redacted()} did not take {what} for "
            f"{self.policy.redis_s:g} s ({type(error).__name__}: {error}). Nothing was lost or "
            f"counted twice: once Redis answers, {self.resume}{longer}"
        )

    def broker_gone(self, what: str, error: object) -> BrokerUnavailable:
        """The error that ends a broker outage longer than ``broker_s``."""
        return BrokerUnavailable(
            f"Kafka at {self.settings.kafka} did not {what} for {self.policy.broker_s:g} s "
            f"({error}). Once the broker answers, {self.resume}"
        )

    async def deliver(self, producer: Producer, letters: Sequence[Letter], what: str) -> None:
        """Produce ``letters`` and wait until the broker acknowledged each, producing again what
        it failed, with backoff; :class:`BrokerUnavailable` after ``broker_s`` without success."""
        deadline = time.monotonic() + self.policy.broker_s
        delay = RETRY_FIRST_S
        pending = list(letters)
        while pending:
            failed: list[tuple[Letter, KafkaError]] = []
            for letter in pending:
                producer.produce(
                    letter.topic,
                    key=letter.key,
                    value=letter.value,
                    headers=letter.headers,
                    on_delivery=_reporter(failed, letter),
                )
            while await asyncio.to_thread(producer.flush, FLUSH_STEP_S) > 0:
                if time.monotonic() > deadline:
                    raise self.broker_gone(f"acknowledge {what}", "still queued")
                if self.stop.is_set():  # they stay queued; closing flushes them
                    raise Stopped("stop requested")
            pending = [letter for letter, _ in failed]
            if pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.broker_gone(f"take {what}", failed[0][1].str())
                wait = min(delay, left)
                OUTAGE_RETRIES.labels("kafka").inc()
                log.warning(
                    "Kafka did not take %d of %s (%s); producing them again in %.1f s",
                    len(pending),
                    what,
                    failed[0][1].str(),
                    wait,
                )
                await self.pause(wait)
                delay = min(delay * 2, RETRY_MAX_S)


def _reporter(
    failed: list[tuple[Letter, KafkaError]], letter: Letter
) -> Callable[[KafkaError | None, Message], None]:
    def report(error: KafkaError | None, _: Message) -> None:
        if error is not None:
            failed.append((letter, error))

    return report


class BrokerWatch:
    """Notices the broker gone (from the client's errors) and probes it with backoff until it
    answers; :class:`BrokerUnavailable` once it has been gone longer than ``broker_s``.

    librdkafka reconnects by itself; the probe only tells when the outage is over, or too long.
    """

    def __init__(self, outages: Outages, probe: Callable[[], object]) -> None:
        self._outages = outages
        self._probe = probe
        self._since: float | None = None
        self._next_probe = 0.0
        self._delay = RETRY_FIRST_S

    def error(self, error: KafkaError) -> None:
        """Take in a client error (the consumer's ``error_cb``, or one a poll returned)."""
        if self._since is None and error.code() in BROKER_DOWN:
            self._since = self._next_probe = time.monotonic()
            self._delay = RETRY_FIRST_S

    def answered(self) -> None:
        """Records arrived: the broker answers."""
        self._since = None

    async def check(self) -> None:
        """Probe the broker if it is due; raises once the outage outlasted its bound."""
        if self._since is None or time.monotonic() < self._next_probe:
            return
        try:
            await asyncio.to_thread(self._probe)
        except KafkaException as e:
            now = time.monotonic()
            if now - self._since > self._outages.policy.broker_s:
                raise self._outages.broker_gone("answer", e) from e
            OUTAGE_RETRIES.labels("kafka").inc()
            log.warning("Kafka does not answer (%s); asking again in %.1f s", e, self._delay)
            self._next_probe = now + self._delay
            self._delay = min(self._delay * 2, RETRY_MAX_S)
            return
        log.info("Kafka answers again after %.1f s", time.monotonic() - self._since)
        self._since = None
