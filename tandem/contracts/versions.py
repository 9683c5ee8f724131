"""A version's lifecycle: its states, and the records announcing them on ``tandem.versions``
(compacted, keyed by store name): written by :func:`announce`, read by
:meth:`VersionRecord.decode`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from confluent_kafka import Producer

from tandem.contracts import topics
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.ids import check_store, check_version


class State(StrEnum):
    """Where a version is in its lifecycle."""

    PUSHED = "pushed"
    INGESTING = "ingesting"
    INGESTED = "ingested"
    LIVE = "live"
    BACKUP = "backup"
    SUPERSEDED = "superseded"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    RETIRED = "retired"
    ABORTED = "aborted"
    CANARY = "canary"  # served to a share of users beside the live version (an experiment)


# States in which a version's data is served, or is about to be: retirement never touches them.
IN_SERVICE = frozenset({State.LIVE, State.BACKUP, State.CANARY})
# States of a version whose push has not finished.
IN_FLIGHT = frozenset({State.PUSHED, State.INGESTING})


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One lifecycle record: ``store`` ``version`` reached ``state`` (with details)."""

    store: str
    version: int
    state: State
    ts_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    details: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The record's value: one flat JSON object."""
        return orjson.dumps(
            {
                **self.details,
                "store": self.store,
                "version": self.version,
                "state": self.state.value,
                "ts_ms": self.ts_ms,
            }
        )

    @classmethod
    def decode(cls, raw: bytes | None) -> VersionRecord:
        """Parse a record; :class:`ValidationError` names what is wrong with it."""
        try:
            body = orjson.loads(raw or b"")
        except orjson.JSONDecodeError as e:
            raise ValidationError("version record", f"not JSON ({e})") from e
        if not isinstance(body, dict):
            raise ValidationError("version record", "must be a JSON object")
        try:
            state = State(body.pop("state", None))
        except ValueError:
            raise ValidationError("state", "unknown lifecycle state") from None
        store = check_store(body.pop("store", None))
        version = check_version(body.pop("version", None))
        ts_ms = body.pop("ts_ms", 0)
        if isinstance(ts_ms, bool) or not isinstance(ts_ms, int):
            raise ValidationError("ts_ms", "must be epoch milliseconds")
        return cls(store, version, state, ts_ms, body)


def announce(producer: Producer, store: str, version: int, state: State, **details: Any) -> None:
    """Queue one lifecycle record; the caller flushes."""
    record = VersionRecord(store, version, state, details=details)
    producer.produce(topics.VERSIONS, key=store.encode(), value=record.encode())
