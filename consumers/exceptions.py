"""Errors of the materializing consumers."""

from __future__ import annotations

from tandem.contracts.exceptions import TandemError


class ConsumerError(TandemError):
    """Root of the consumers' errors."""


class ReplayError(ConsumerError):
    """A replay that could not rebuild its version; the message says why."""


class RedisUnavailable(ConsumerError):
    """Redis refused the materializer's writes for longer than the outage it rides out."""

    retriable = True


class BrokerUnavailable(ConsumerError):
    """The broker did not answer for longer than the outage the materializer rides out."""

    retriable = True


class Stopped(ConsumerError):
    """A stop was asked for while an outage was ridden out (or a batch was still in hand):
    nothing is lost, what was not committed is read again by the next run."""
