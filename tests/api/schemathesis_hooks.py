"""schemathesis hooks for tests/api/test_contract.py (loaded through ``SCHEMATHESIS_HOOKS``).

JSON Schema cannot state the one rule of an event that depends on the server's clock: ``ts`` at
most 5 minutes ahead of it (and, for an RFC 3339 time with an offset, not before 1970). A
generated ``ts`` that is valid by the schema but outside that window is moved to the present
(same type), so the run tests everything else; ``test_event_clock_window`` covers the window."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import schemathesis

from tandem.contracts.exceptions import ValidationError
from tandem.contracts.schemas import parse_ts_ms


def _in_window(event: object) -> object:
    if not isinstance(event, dict) or event.get("ts") is None:
        return event
    now_ms = time.time_ns() // 1_000_000
    ts = event["ts"]
    try:
        parse_ts_ms(ts, now_ms)
    except ValidationError as e:
        if "future" not in e.rule and "1970" not in e.rule:
            return event  # invalid for another reason: left for the server to refuse
        now = now_ms - 60_000
        ts = (
            now
            if isinstance(ts, int | float)
            else datetime.fromtimestamp(now / 1000, UTC).isoformat()
        )
        return {**event, "ts": ts}
    return event


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Keep schema-valid event times inside the server's clock window."""
    if context.operation.path != "/v1/events":
        return
    if isinstance(case.body, list):
        case.body = [_in_window(event) for event in case.body]
    else:
        case.body = _in_window(case.body)
