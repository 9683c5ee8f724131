"""Per-partition write progress of a version: pure bookkeeping, stored beside the data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import orjson

from tandem.contracts.checksum import batch_checksum, combine, from_hex, record_digest, to_hex
from tandem.contracts.codec import summarize_all


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """What has been applied from one partition of a version topic.

    ``offset`` is the last applied Kafka offset (-1: nothing yet). ``eop_*`` hold what the
    partition's END_OF_PUSH promised, once it has been read.
    """

    offset: int = -1
    count: int = 0
    checksum: int = 0
    empty: int = 0
    nonfinite: int = 0
    dlq: int = 0
    started: bool = False
    eop_count: int | None = None
    eop_checksum: int | None = None
    aborted: str | None = None  # the reason an ABORT_PUSH gave

    @property
    def ended(self) -> bool:
        """Whether this partition's END_OF_PUSH has been read."""
        return self.eop_count is not None

    @property
    def closed(self) -> bool:
        """Whether nothing more is to be applied: the partition ended or its push was aborted."""
        return self.ended or self.aborted is not None

    def mismatch(self) -> str | None:
        """Why the applied records differ from the END_OF_PUSH promise, or None."""
        if self.eop_count is None or self.eop_checksum is None:
            return "END_OF_PUSH not seen"
        if self.count != self.eop_count:
            return f"count {self.count} != pushed {self.eop_count}"
        if self.checksum != self.eop_checksum:
            return f"checksum {to_hex(self.checksum)} != pushed {to_hex(self.eop_checksum)}"
        return None

    def with_records(self, batch: list[RecordStat], last_offset: int) -> PartitionProgress:
        """Progress after applying ``batch`` (whose last Kafka offset is ``last_offset``)."""
        return self.with_batch(BatchStat.of(batch), last_offset)

    def with_batch(self, batch: BatchStat, last_offset: int) -> PartitionProgress:
        """Progress after applying a batch summed up as ``batch``."""
        return replace(
            self,
            offset=last_offset,
            count=self.count + batch.count,
            checksum=combine(self.checksum, batch.checksum),
            empty=self.empty + batch.empty,
            nonfinite=self.nonfinite + batch.nonfinite,
        )

    def to_json(self) -> bytes:
        """Stored form (checksums as hex, to survive Lua and JSON intact)."""
        body = asdict(self)
        body["checksum"] = to_hex(self.checksum)
        if self.eop_checksum is not None:
            body["eop_checksum"] = to_hex(self.eop_checksum)
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> PartitionProgress:
        """Inverse of :meth:`to_json`; None gives the empty progress."""
        if raw is None:
            return cls()
        body = orjson.loads(raw)
        body["checksum"] = from_hex(body["checksum"])
        if body.get("eop_checksum") is not None:
            body["eop_checksum"] = from_hex(body["eop_checksum"])
        return cls(**body)


@dataclass(frozen=True, slots=True)
class BatchStat:
    """What the bookkeeping needs of a batch of applied records, summed up."""

    count: int = 0
    checksum: int = 0
    empty: int = 0
    nonfinite: int = 0

    @staticmethod
    def of(records: list[RecordStat]) -> BatchStat:
        """The stats of single records summed up."""
        return BatchStat(
            count=len(records),
            checksum=combine(*(r.digest for r in records)),
            empty=sum(1 for r in records if r.size == 0),
            nonfinite=sum(1 for r in records if not r.finite),
        )


@dataclass(frozen=True, slots=True)
class RecordStat:
    """What the bookkeeping needs of one applied record."""

    digest: int
    size: int
    finite: bool


def record_stat(entity_id: str, value: bytes, size: int, finite: bool) -> RecordStat:
    """The stat of one record keyed by ``entity_id``."""
    return RecordStat(record_digest(entity_id.encode(), value), size, finite)


def batch_stat(keys: Sequence[bytes], values: Sequence[bytes]) -> BatchStat:
    """The stat of a batch of records (keys: the entity ids, valid); raises
    :class:`CodecError` if any value is not a well-formed list."""
    empty, nonfinite = summarize_all(values)
    return BatchStat(len(values), batch_checksum(keys, values), empty, nonfinite)
