"""Errors of the stream worker and the event producer."""

from __future__ import annotations

from tandem.contracts.exceptions import TandemError


class StreamError(TandemError):
    """Root of the stream package's errors."""


class EventsNotAcknowledged(StreamError):
    """Some events were not acknowledged by the broker; the message says how many."""

    retriable = True
