"""Errors of the API, each carrying its HTTP status."""

from __future__ import annotations

from tandem.contracts.exceptions import TandemError


class ModelRejected(TandemError):
    """A version's re-ranker model that cannot serve (it does not load, or its features differ)."""


class ApiError(TandemError):
    """An error answered as JSON with ``status``."""

    status = 500

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        index: int | None = None,
        details: dict[str, object] | None = None,
    ):
        super().__init__(message)
        self.field = field
        self.index = index
        self.details = details or {}


class BadRequest(ApiError):
    """The request breaks the contract; ``field`` (and ``index`` in a batch) say where."""

    status = 400


class Unauthorized(ApiError):
    """No bearer token."""

    status = 401


class Forbidden(ApiError):
    """A wrong bearer token."""

    status = 403


class NotFound(ApiError):
    """Nothing at that path (or the feature is off)."""

    status = 404


class Conflict(ApiError):
    """The request conflicts with the current state (say, no backup version to roll back to)."""

    status = 409


class Unavailable(ApiError):
    """A dependency is down; the client may retry."""

    status = 503
    retriable = True
