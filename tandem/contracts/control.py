"""Push control messages and record headers of version topics, and the dead-letter headers.

A push writes START_OF_PUSH to every partition, then the records, then END_OF_PUSH with that
partition's record count and checksum. Control messages are marked by a header, never by a key.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from tandem.contracts.checksum import from_hex, to_hex
from tandem.contracts.exceptions import ValidationError

CONTROL = "tandem.control"
STORE = "tandem.store"
VERSION = "tandem.version"
SCHEMA = "tandem.schema"
SCHEMA_CANDIDATES = b"candidates/1"
ATTACHMENT_NAME = "tandem.attachment"
ATTACHMENTS = frozenset({"model", "categories"})

DLQ_REASON = "tandem.dlq.reason"
DLQ_TOPIC = "tandem.dlq.topic"
DLQ_PARTITION = "tandem.dlq.partition"
DLQ_OFFSET = "tandem.dlq.offset"
DLQ_TIME_MS = "tandem.dlq.time_ms"
DLQ_SOURCE = "tandem.dlq.source"

Headers = list[tuple[str, str | bytes | None]]


class Control(StrEnum):
    """The kinds of control message."""

    START_OF_PUSH = "start_of_push"
    END_OF_PUSH = "end_of_push"
    ATTACHMENT = "attachment"  # a named blob that goes live with the version (model, categories)
    ABORT_PUSH = "abort_push"  # the push failed: the version never goes live (value: the reason)


def record_headers(store: str, version: int) -> Headers:
    """Headers of every data record of a push."""
    return [(STORE, store.encode()), (VERSION, str(version).encode()), (SCHEMA, SCHEMA_CANDIDATES)]


def control_headers(kind: Control, store: str, version: int) -> Headers:
    """Headers of a control message."""
    return [(CONTROL, kind.value.encode()), *record_headers(store, version)]


def attachment_headers(store: str, version: int, name: str) -> Headers:
    """Headers of an attachment control message."""
    return [*control_headers(Control.ATTACHMENT, store, version), (ATTACHMENT_NAME, name.encode())]


def attachment_name(headers: Sequence[tuple[str, str | bytes | None]] | None) -> str:
    """The (known) attachment name an attachment message declares."""
    for name, value in headers or ():
        if name == ATTACHMENT_NAME:
            text = value.decode(errors="replace") if isinstance(value, bytes) else value or ""
            if text in ATTACHMENTS:
                return text
            break
    raise ValidationError(ATTACHMENT_NAME, "must be one of " + ", ".join(sorted(ATTACHMENTS)))


def control_kind(headers: Sequence[tuple[str, str | bytes | None]] | None) -> Control | None:
    """The control kind a message's headers declare, or None for a data record."""
    for name, value in headers or ():
        if name == CONTROL:
            text = value.decode(errors="replace") if isinstance(value, bytes) else value or ""
            try:
                return Control(text)
            except ValueError:
                raise ValidationError(CONTROL, f"unknown control message {value!r}") from None
    return None


@dataclass(frozen=True, slots=True)
class StartOfPush:
    """What a push declares up front: its partition count and the version's metadata."""

    partitions: int
    created_ms: int
    metadata: dict[str, Any]

    def encode(self) -> bytes:
        """Message value."""
        return orjson.dumps(
            {
                "partitions": self.partitions,
                "created_ms": self.created_ms,
                "metadata": self.metadata,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | None) -> StartOfPush:
        """Parse a START_OF_PUSH value."""
        try:
            body = orjson.loads(raw or b"")
            return cls(int(body["partitions"]), int(body["created_ms"]), dict(body["metadata"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValidationError("start_of_push", f"malformed control message: {e}") from e


@dataclass(frozen=True, slots=True)
class EndOfPush:
    """What one partition of a push promises: its record count and checksum."""

    count: int
    checksum: int

    def encode(self) -> bytes:
        """Message value."""
        return orjson.dumps({"count": self.count, "checksum": to_hex(self.checksum)})

    @classmethod
    def decode(cls, raw: bytes | None) -> EndOfPush:
        """Parse an END_OF_PUSH value."""
        try:
            body = orjson.loads(raw or b"")
            return cls(int(body["count"]), from_hex(str(body["checksum"])))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValidationError("end_of_push", f"malformed control message: {e}") from e


def dlq_headers(
    reason: str, topic: str, partition: int, offset: int, source: str
) -> list[tuple[str, bytes]]:
    """Headers saying why a record was dead-lettered, where it came from, and when."""
    return [
        (DLQ_REASON, reason.encode()[:1000]),
        (DLQ_TOPIC, topic.encode()),
        (DLQ_PARTITION, str(partition).encode()),
        (DLQ_OFFSET, str(offset).encode()),
        (DLQ_TIME_MS, str(time.time_ns() // 1_000_000).encode()),
        (DLQ_SOURCE, source.encode()),
    ]
