"""Errors of the batch stage."""

from __future__ import annotations

from tandem.contracts.exceptions import TandemError


class BatchError(TandemError):
    """Root of the batch stage's errors."""


class PushError(BatchError):
    """A push that failed; its version never receives END_OF_PUSH and never goes live."""


class InputError(BatchError):
    """An input file that cannot be used; the message names the file, row and field."""
