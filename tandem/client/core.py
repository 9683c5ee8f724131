"""What the sync and async clients share: preparing events, reading answers, deciding retries."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson

RETRIABLE_STATUS = frozenset({429, 502, 503, 504})
MAX_EVENTS_PER_REQUEST = 1000


class ClientError(Exception):
    """A request to the tandem API failed."""


class RequestRefused(ClientError):
    """The API refused the request (4xx): sending it again would not help."""

    def __init__(self, status: int, message: str, field: str | None, body: Any) -> None:
        super().__init__(f"HTTP {status}: {message}" + (f" (field {field})" if field else ""))
        self.status, self.message, self.field, self.body = status, message, field, body


class ApiUnavailable(ClientError):
    """The API did not answer, or answered 5xx, on every attempt."""

    def __init__(self, message: str, pending_event_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.pending_event_ids = pending_event_ids or []


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all, waiting ``base_s`` doubled each time (with full jitter), at
    most ``max_s``; a ``Retry-After`` answer header is honoured up to ``max_s``."""

    attempts: int = 4
    base_s: float = 0.1
    max_s: float = 5.0

    def delay_s(self, attempt: int, retry_after: str | None = None) -> float:
        """How long to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_s)
        return random.uniform(0, min(self.max_s, self.base_s * 2 ** (attempt - 1)))


def prepare_events(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``events`` with an ``event_id`` and a ``ts`` each (kept when given), so every
    attempt sends the same events."""
    now_ms = time.time_ns() // 1_000_000
    prepared = []
    for event in events:
        copy = dict(event)
        copy.setdefault("event_id", uuid.uuid4().hex)
        copy.setdefault("ts", now_ms)
        prepared.append(copy)
    if not 1 <= len(prepared) <= MAX_EVENTS_PER_REQUEST:
        raise ValueError(f"send 1 to {MAX_EVENTS_PER_REQUEST} events per call")
    return prepared


def recommendations_path(user_id: str, k: int, device: str | None) -> str:
    query = {"k": str(k), **({"device": device} if device is not None else {})}
    return f"/v1/recommendations/{quote(user_id, safe='')}?{urlencode(query)}"


def decode(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


def message_of(body: Any) -> tuple[str, str | None]:
    """The server's message and the field at fault, from a JSON error (``detail``/``title`` of a
    problem document, or ``error``) or a plain-text one."""
    if isinstance(body, dict):
        message = body.get("detail") or body.get("error") or body.get("title") or str(body)
        field = body.get("field")
        return str(message), None if field is None else str(field)
    return str(body or "no body"), None


def refused(status: int, body: Any) -> RequestRefused:
    message, field = message_of(body)
    return RequestRefused(status, message, field, body)


def still_pending(events: list[dict[str, Any]], body: Any) -> list[dict[str, Any]]:
    """The events a 503 answer to ``POST /v1/events`` does not list as accepted."""
    accepted = body.get("accepted_event_ids") if isinstance(body, dict) else None
    if not isinstance(accepted, list):
        return events
    done = set(map(str, accepted))
    return [event for event in events if event["event_id"] not in done]


# --- one call and its retries, without I/O: the clients run these plans -----------------------


@dataclass(frozen=True)
class Attempt:
    """Send this request and send back its :data:`Answer`."""

    method: str
    path: str
    payload: Any = None


@dataclass(frozen=True)
class Wait:
    """Sleep this long, then send back None."""

    seconds: float


# (status or None when no answer came, decoded body or the connection error, Retry-After)
Answer = tuple[int | None, Any, str | None]
Plan = Generator[Attempt | Wait, Answer | None, Any]


def _why(answer: Answer | None) -> str:
    status, body, _ = answer or (None, "not sent", None)
    return f"last: {'no answer' if status is None else f'HTTP {status}'}: {message_of(body)[0]}"


def _checked(reply: Answer | None) -> tuple[bool, Answer]:
    """Whether the answer succeeded, and the answer; raise :class:`RequestRefused` when
    retrying cannot help."""
    assert reply is not None, "a plan's Attempt is answered"
    status, body, _ = reply
    if status is not None and status not in RETRIABLE_STATUS and status >= 300:
        raise refused(status, body)
    return status is not None and status < 300, reply


def call_plan(policy: RetryPolicy, method: str, path: str) -> Plan:
    """An idempotent request: the answer's body, retried while that is safe and may help."""
    answer: Answer | None = None
    for attempt in range(1, policy.attempts + 1):
        ok, answer = _checked((yield Attempt(method, path)))
        if ok:
            return answer[1]
        if attempt < policy.attempts:
            yield Wait(policy.delay_s(attempt, answer[2]))
    raise ApiUnavailable(f"{method} {path} failed {policy.attempts} times ({_why(answer)})")


def events_plan(policy: RetryPolicy, events: Iterable[Mapping[str, Any]]) -> Plan:
    """``POST /v1/events``: the ids of all the events once the broker has them. A retry sends
    the same events (same ids), after a 503 only those not listed as accepted."""
    pending = prepare_events(events)
    ids = [event["event_id"] for event in pending]
    answer: Answer | None = None
    for attempt in range(1, policy.attempts + 1):
        ok, answer = _checked((yield Attempt("POST", "/v1/events", pending)))
        if ok:
            return ids
        status, body, retry_after = answer
        if status == 503:
            pending = still_pending(pending, body)
            if not pending:
                return ids
        if attempt < policy.attempts:
            yield Wait(policy.delay_s(attempt, retry_after))
    raise ApiUnavailable(
        f"{len(pending)} of {len(ids)} events not confirmed after {policy.attempts} attempts "
        f"({_why(answer)}); send them again: their event_ids make that safe",
        [event["event_id"] for event in pending],
    )
