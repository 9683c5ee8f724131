"""The records of ``tandem.hidden``: an operator's hide or unhide of an item, keyed by the item
(the topic is compacted, so it keeps each item's latest state)."""

from __future__ import annotations

import orjson

from tandem.contracts.exceptions import ValidationError
from tandem.contracts.ids import check_id


def encode_hidden(item_id: str, hidden: bool) -> bytes:
    """``{"item": …, "hidden": true|false}``."""
    return orjson.dumps({"item": check_id(item_id, "item"), "hidden": hidden})


def decode_hidden(raw: bytes) -> tuple[str, bool]:
    """``(item, hidden)`` of a record; :class:`ValidationError` naming the field at fault."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ValidationError("record", f"must be a JSON object ({e})") from e
    if not isinstance(body, dict):
        raise ValidationError("record", 'must be a JSON object {"item": …, "hidden": true}')
    hidden = body.get("hidden")
    if not isinstance(hidden, bool):
        raise ValidationError("hidden", "must be true or false")
    return check_id(body.get("item"), "item"), hidden
