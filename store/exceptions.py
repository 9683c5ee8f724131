"""Errors of the prediction store."""

from __future__ import annotations

from tandem.contracts.exceptions import TandemError


class StoreError(TandemError):
    """Root of the store's errors."""


class PromoteConflict(StoreError):
    """The live pointer was not what the caller expected; nothing was changed."""

    def __init__(self, store: str, expected: int | None, actual: int | None) -> None:
        self.store = store
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"store {store!r}: expected live version {expected}, found {actual}; nothing changed"
        )


class RollbackRefused(StoreError):
    """There is no backup version to go back to, or it is no longer materialized."""


class ProgressConflict(StoreError):
    """Another writer advanced a partition's progress first; reload it and try again."""

    retriable = True
