"""The wire formats of DESIGN.md: the interaction event and the candidate list.

The event's one definition is :class:`EventBody` (a pydantic model): it validates every event that
enters tandem (HTTP, files, the events topic) and its JSON Schema is the API's ``Event`` schema.
Only the rule JSON Schema cannot state (``ts`` within the server's clock window) is checked apart.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import orjson
import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt

from tandem.contracts.domain import DEVICES, EVENT_TYPES, Device, EventType
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.ids import ID_MAX_LEN, ID_RULE, check_id

MAX_FUTURE_MS = 5 * 60 * 1000
MAX_CONTEXT_KEYS = 16
MAX_CONTEXT_KEY_LEN = 64
MAX_CONTEXT_VALUE_LEN = 256
MAX_CANDIDATES = 5000
ID_PATTERN = rf"^[A-Za-z0-9._:@-]{{1,{ID_MAX_LEN}}}$"
# RFC 3339 (years 1970-9999, no leap second): what ``datetime.fromisoformat`` reads exactly.
RFC3339_PATTERN = (
    r"^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]"
    r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
TS_RULE = "must be epoch milliseconds (an integer ≥ 0) or an RFC 3339 time"
_RFC3339_RE = re.compile(RFC3339_PATTERN)

Id = Annotated[str, Field(strict=True, pattern=ID_PATTERN, examples=["u42"])]
ContextKey = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_CONTEXT_KEY_LEN)]
ContextValue = (
    Annotated[str, Field(strict=True, max_length=MAX_CONTEXT_VALUE_LEN)]
    | StrictInt
    | Annotated[float, Field(strict=True, allow_inf_nan=False)]
)


def _integral(value: object) -> object:
    """An integral JSON number written with a fraction (``5.0``) as the integer it is: JSON
    Schema counts it as an integer, so tandem does too."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


EpochMs = Annotated[
    int, Field(strict=True, ge=0, description="epoch milliseconds"), BeforeValidator(_integral)
]
Rfc3339 = Annotated[
    str, Field(strict=True, pattern=RFC3339_PATTERN, json_schema_extra={"format": "date-time"})
]


class EventBody(BaseModel):
    """One interaction event as JSON (``ts`` absent: the time received; ``event_id`` absent: a
    new one). ``ts`` must not be more than 5 minutes ahead of the receiver's clock."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Event")

    user_id: Id
    item_id: Id
    event_type: EventType
    ts: EpochMs | Rfc3339 | None = Field(
        None, description="epoch milliseconds or an RFC 3339 time, at most 5 minutes ahead"
    )
    event_id: Id | None = Field(None, description="repeat it on a retry: counted once")
    device: Device | None = None
    session_id: Id | None = None
    context: dict[ContextKey, ContextValue] | None = Field(None, max_length=MAX_CONTEXT_KEYS)
    request_id: Id | None = Field(
        None, description="the X-Request-ID of the answer the item was shown in (attribution)"
    )


_ID_FIELDS = frozenset({"user_id", "item_id", "event_id", "session_id", "request_id"})
_CHOICES = {"event_type": EVENT_TYPES, "device": DEVICES}


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
    request_id: str | None = None

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
        if self.request_id is not None:
            body["request_id"] = self.request_id
        return orjson.dumps(body)


def parse_ts_ms(value: object, now_ms: int) -> int:
    """Epoch milliseconds from an integer or an RFC 3339 string; absent means ``now_ms``. The
    time may not be more than 5 minutes ahead of ``now_ms`` (a clock window JSON Schema cannot
    state)."""
    if value is None:
        return now_ms
    value = _integral(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        ts_ms = value
    elif isinstance(value, str) and _RFC3339_RE.fullmatch(value):
        try:
            parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        except ValueError:  # a day the month does not have
            raise ValidationError("ts", TS_RULE) from None
        ts_ms = int(parsed.timestamp() * 1000)
        if ts_ms < 0:
            raise ValidationError("ts", "must not be before 1970")
    else:
        raise ValidationError("ts", TS_RULE)
    if ts_ms > now_ms + MAX_FUTURE_MS:
        raise ValidationError("ts", "must not be more than 5 minutes in the future")
    return ts_ms


def _first_problem(error: pydantic.ValidationError) -> ValidationError:
    """The first thing wrong with an event, as the field that failed and its rule."""
    err = error.errors(include_url=False)[0]
    loc = err["loc"]
    if not loc:
        return ValidationError("event", "must be a JSON object")
    field = str(loc[0])
    if err["type"] == "extra_forbidden":
        return ValidationError(field, "unknown field")
    if err["type"] == "missing":
        return ValidationError(field, "required")
    if field in _ID_FIELDS:
        return ValidationError(field, f"must be a string of {ID_RULE}")
    if field == "ts":
        return ValidationError(field, TS_RULE)
    if field in _CHOICES:
        return ValidationError(field, "must be one of " + ", ".join(sorted(_CHOICES[field])))
    if field == "context" and len(loc) >= 2 and "[key]" not in loc:
        return ValidationError(f"context.{loc[1]}", "must be a string (≤ 256) or a finite number")
    if field == "context":
        return ValidationError(
            field,
            f"must be an object of at most {MAX_CONTEXT_KEYS} keys of 1-{MAX_CONTEXT_KEY_LEN} "
            "characters",
        )
    return ValidationError(field, err["msg"])


def parse_event(obj: object, now_ms: int) -> Event:
    """Validate one decoded JSON event; raise :class:`ValidationError` naming the field."""
    try:
        body = EventBody.model_validate(obj)
    except pydantic.ValidationError as e:
        raise _first_problem(e) from None
    return Event(
        user_id=body.user_id,
        item_id=body.item_id,
        event_type=str(body.event_type),
        ts_ms=parse_ts_ms(body.ts, now_ms),
        event_id=body.event_id or uuid.uuid4().hex,
        device=None if body.device is None else str(body.device),
        session_id=body.session_id,
        context=body.context,
        request_id=body.request_id,
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
