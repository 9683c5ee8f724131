"""Validation of every identifier that may end up in a Redis key or a Kafka topic name."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import cast

from tandem.contracts.exceptions import ValidationError

ID_MAX_LEN = 128
ID_RULE = f"1-{ID_MAX_LEN} characters of A-Z a-z 0-9 . _ : @ -"
_ID_RE = re.compile(rf"[A-Za-z0-9._:@-]{{1,{ID_MAX_LEN}}}")
# Valid ids joined by newlines (a byte no id holds): one match checks a whole batch.
_IDS_RE = re.compile(
    rf"(?:[A-Za-z0-9._:@-]{{1,{ID_MAX_LEN}}}\n)*[A-Za-z0-9._:@-]{{1,{ID_MAX_LEN}}}".encode()
)

STORE_RULE = "1-32 characters of a-z 0-9 _, starting with a letter"
_STORE_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")

VERSION_RULE = "a positive integer of at most 20 digits"


def check_id(value: object, field: str) -> str:
    """Return ``value`` if it is a valid entity/item/user id, else raise naming ``field``."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string of {ID_RULE}")
    if _ID_RE.fullmatch(value) is None:
        raise ValidationError(field, f"must be {ID_RULE}")
    return value


def valid_ids(raw: Sequence[bytes | None]) -> list[str] | None:
    """The ids of a batch of encoded ids if every one is valid, else None (the caller then
    checks each with :func:`check_id` to say which): one regex match over the joined batch
    instead of a decode and a match per id."""
    if not raw or None in raw:
        return None
    joined = b"\n".join(cast("Sequence[bytes]", raw))
    if _IDS_RE.fullmatch(joined) is None:
        return None
    ids = joined.decode("ascii").split("\n")
    return ids if len(ids) == len(raw) else None  # an id holding a newline would pass as two


def check_store(value: object, field: str = "store") -> str:
    """Return ``value`` if it is a valid store name (it goes into topic names and keys)."""
    if not isinstance(value, str) or _STORE_RE.fullmatch(value) is None:
        raise ValidationError(field, f"must be {STORE_RULE}")
    return value


def check_version(value: object, field: str = "version") -> int:
    """Return ``value`` as an int if it is a valid version id."""
    if isinstance(value, bool):
        raise ValidationError(field, f"must be {VERSION_RULE}")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        value = int(value)
    if not isinstance(value, int) or value <= 0 or value >= 10**20:
        raise ValidationError(field, f"must be {VERSION_RULE}")
    return value
