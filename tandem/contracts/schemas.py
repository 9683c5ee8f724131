"""The wire formats of DESIGN.md: the interaction event and the candidate list."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from tandem.contracts.domain import DEVICES, EVENT_TYPES
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.ids import check_id

MAX_FUTURE_MS = 5 * 60 * 1000
MAX_CONTEXT_KEYS = 16
MAX_CONTEXT_KEY_LEN = 64
MAX_CONTEXT_VALUE_LEN = 256
MAX_CANDIDATES = 5000
_EVENT_FIELDS = frozenset(
    {"user_id", "item_id", "event_type", "ts", "event_id", "device", "session_id", "context"}
)


@dataclass(frozen=True, slots=True)
class Event:
    """One user interaction, validated."""

    user_id: str
    item_id: str
    event_type: str
    ts_ms: int
    event_id: str
    device: str | None = None
    session_id: str | None = None
    context: dict[str, str | int | float] | None = None

    def to_json(self) -> bytes:
        """The canonical JSON form (``ts`` as epoch milliseconds)."""
        body: dict[str, Any] = {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event_type": self.event_type,
            "ts": self.ts_ms,
            "event_id": self.event_id,
        }
        if self.device is not None:
            body["device"] = self.device
        if self.session_id is not None:
            body["session_id"] = self.session_id
        if self.context:
            body["context"] = self.context
        return orjson.dumps(body)


def parse_ts_ms(value: object, now_ms: int) -> int:
    """Epoch milliseconds from an integer or an RFC 3339 string; absent means ``now_ms``."""
    if value is None:
        return now_ms
    if isinstance(value, bool):
        raise ValidationError("ts", "must be epoch milliseconds or an RFC 3339 time")
    if isinstance(value, int):
        ts_ms = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValidationError("ts", "must be epoch milliseconds or an RFC 3339 time") from None
        if parsed.tzinfo is None:
            raise ValidationError("ts", "an RFC 3339 time needs a UTC offset (or Z)")
        ts_ms = int(parsed.timestamp() * 1000)
    else:
        raise ValidationError("ts", "must be epoch milliseconds or an RFC 3339 time")
    if ts_ms < 0:
        raise ValidationError("ts", "must not be before 1970")
    if ts_ms > now_ms + MAX_FUTURE_MS:
        raise ValidationError("ts", "must not be more than 5 minutes in the future")
    return ts_ms


def _check_context(value: object) -> dict[str, str | int | float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationError("context", "must be an object")
    if len(value) > MAX_CONTEXT_KEYS:
        raise ValidationError("context", f"must have at most {MAX_CONTEXT_KEYS} keys")
    for key, item in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_CONTEXT_KEY_LEN:
            raise ValidationError("context", f"keys must be 1-{MAX_CONTEXT_KEY_LEN} characters")
        if isinstance(item, str):
            if len(item) > MAX_CONTEXT_VALUE_LEN:
                raise ValidationError(f"context.{key}", "string longer than 256 characters")
        elif isinstance(item, bool) or not isinstance(item, int | float):
            raise ValidationError(f"context.{key}", "must be a string or a number")
        elif not math.isfinite(item):
            raise ValidationError(f"context.{key}", "must be finite")
    return value


def _check_choice(value: object, field: str, choices: frozenset[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValidationError(field, "must be one of " + ", ".join(sorted(choices)))
    return value


def parse_event(obj: object, now_ms: int) -> Event:
    """Validate one decoded JSON event; raise :class:`ValidationError` naming the field."""
    if not isinstance(obj, dict):
        raise ValidationError("event", "must be a JSON object")
    unknown = obj.keys() - _EVENT_FIELDS
    if unknown:
        raise ValidationError(sorted(unknown)[0], "unknown field")
    for field in ("user_id", "item_id", "event_type"):
        if field not in obj:
            raise ValidationError(field, "required")
    device = obj.get("device")
    session_id = obj.get("session_id")
    event_id = obj.get("event_id")
    return Event(
        user_id=check_id(obj["user_id"], "user_id"),
        item_id=check_id(obj["item_id"], "item_id"),
        event_type=_check_choice(obj["event_type"], "event_type", EVENT_TYPES),
        ts_ms=parse_ts_ms(obj.get("ts"), now_ms),
        event_id=uuid.uuid4().hex if event_id is None else check_id(event_id, "event_id"),
        device=None if device is None else _check_choice(device, "device", DEVICES),
        session_id=None if session_id is None else check_id(session_id, "session_id"),
        context=_check_context(obj.get("context")),
    )


def decode_event(raw: bytes, now_ms: int) -> Event:
    """Parse and validate one JSON-encoded event."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ValidationError("event", f"not valid JSON ({e})") from e
    return parse_event(obj, now_ms)


@dataclass(frozen=True, slots=True)
class CandidateList:
    """One entity's candidates, in rank order, with finite scores."""

    entity_id: str
    item_ids: list[str]
    scores: list[float]


def parse_candidates(obj: object) -> CandidateList:
    """Validate one ``{"entity_id": ..., "items": [{"item_id", "score"}, ...]}`` object."""
    if not isinstance(obj, dict):
        raise ValidationError("candidates", "must be a JSON object")
    entity_id = check_id(obj.get("entity_id"), "entity_id")
    items = obj.get("items")
    if not isinstance(items, list):
        raise ValidationError("items", "must be a list of {item_id, score}")
    if len(items) > MAX_CANDIDATES:
        raise ValidationError("items", f"must have at most {MAX_CANDIDATES} entries")
    item_ids: list[str] = []
    scores: list[float] = []
    for pos, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValidationError(f"items[{pos}]", "must be an object {item_id, score}")
        item_ids.append(check_id(item.get("item_id"), f"items[{pos}].item_id"))
        score = item.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise ValidationError(f"items[{pos}].score", "must be a number")
        if not math.isfinite(score):
            raise ValidationError(f"items[{pos}].score", "must be finite")
        scores.append(float(score))
    return CandidateList(entity_id, item_ids, scores)
