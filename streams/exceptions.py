"""Errors of the stream worker and the event producer."""

from __future__ import annotations

from tandem.contracts.exceptions import TandemError


class StreamError(TandemError):
    """Root of the stream package's errors."""


class RedisUnavailable(StreamError):
    """Redis refused the worker's writes for longer than the outage it rides out."""

    retriable = True


class WorkerCrashed(StreamError):
    """The Faust app stopped by itself; the message says why."""


class EventsNotAcknowledged(StreamError):
    """Some events were not acknowledged by the broker; the message says how many."""

    retriable = True
