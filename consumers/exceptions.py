"""Errors of the materializing consumers."""

from __future__ import annotations

from tandem.contracts.exceptions import TandemError


class ConsumerError(TandemError):
    """Root of the consumers' errors."""


class ReplayError(ConsumerError):
    """A replay that could not rebuild its version; the message says why."""
