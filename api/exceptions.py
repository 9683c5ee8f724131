"""Errors of the API, each carrying its HTTP status and its RFC 7807 problem type."""

from __future__ import annotations

from tandem.contracts.exceptions import TandemError

PROBLEM_BASE = "urn:tandem:problem:"


class ModelRejected(TandemError):
    """A version's re-ranker model that cannot serve (it does not load, or its features differ)."""


class ApiError(TandemError):
    """An error answered as an ``application/problem+json`` document with ``status``."""

    status = 500
    title = "Internal error"
    slug = "internal"

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

    @property
    def headers(self) -> dict[str, str]:
        """Headers the answer carries (``Retry-After`` when the client may retry)."""
        return {"Retry-After": "1"} if self.retriable else {}

    def problem(self) -> dict[str, object]:
        """The RFC 7807 members (plus ``field``/``index`` where a field failed, and details)."""
        body: dict[str, object] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": str(self),
        }
        if self.field is not None:
            body["field"] = self.field
        if self.index is not None:
            body["index"] = self.index
        return {**body, **self.details}


class BadRequest(ApiError):
    """The request breaks the contract; ``field`` (and ``index`` in a batch) say where."""

    status = 400
    title = "Bad request"
    slug = "bad-request"


class Unauthorized(ApiError):
    """No bearer token, or one that cannot be a token (say, not UTF-8). The answer challenges
    the client with ``WWW-Authenticate`` (RFC 6750), naming ``error`` when a token was sent."""

    status = 401
    title = "Unauthorized"
    slug = "unauthorized"
    realm = "tandem-admin"

    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error

    @property
    def headers(self) -> dict[str, str]:
        challenge = f'Bearer realm="{self.realm}"'
        if self.error is not None:
            challenge += f', error="{self.error}"'
        return {**super().headers, "WWW-Authenticate": challenge}


class Forbidden(ApiError):
    """A wrong bearer token."""

    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(ApiError):
    """Nothing at that path (or the feature is off)."""

    status = 404
    title = "Not found"
    slug = "not-found"


class Conflict(ApiError):
    """The request conflicts with the current state (say, no backup version to roll back to)."""

    status = 409
    title = "Conflict"
    slug = "conflict"


class Unavailable(ApiError):
    """A dependency is down; the client may retry."""

    status = 503
    title = "Unavailable"
    slug = "unavailable"
    retriable = True


PROBLEM_TYPES = frozenset(
    PROBLEM_BASE + error.slug
    for error in (ApiError, BadRequest, Unauthorized, Forbidden, NotFound, Conflict, Unavailable)
)
