"""Publishing a store version: one Kafka topic per version, framed by control messages."""

from __future__ import annotations

import functools
import logging
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.cimpl import NewTopic

from tandem.batch import engine
from tandem.batch.candidates_io import read_candidates
from tandem.batch.exceptions import PushError
from tandem.batch.saved import Publishable, of_output
from tandem.contracts import topics
from tandem.contracts.checksum import combine, record_digest, to_hex
from tandem.contracts.codec import encode
from tandem.contracts.control import (
    ATTACHMENTS,
    Control,
    EndOfPush,
    Headers,
    StartOfPush,
    attachment_headers,
    control_headers,
    record_headers,
)
from tandem.contracts.domain import U2I
from tandem.contracts.exceptions import ServiceError
from tandem.contracts.kafka import (
    admin,
    create_topics,
    existing_topics,
    make_producer,
)
from tandem.contracts.schemas import CandidateList
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State, announce

if TYPE_CHECKING:
    from tandem.batch.pipeline import BatchOutput

log = logging.getLogger(__name__)

ABORT_TIMEOUT_S = 10.0


def allocate_version(now_s: float | None = None) -> int:
    """A sortable version id: UTC ``YYYYMMDDhhmmss`` followed by milliseconds."""
    now = time.time() if now_s is None else now_s
    return int(time.strftime("%Y%m%d%H%M%S", time.gmtime(now))) * 1000 + int(now * 1000) % 1000


def partition_of(entity_id: str, partitions: int) -> int:
    """The partition an entity's record goes to (stable across runs and processes)."""
    return zlib.crc32(entity_id.encode()) % partitions


@dataclass
class PushResult:
    """What a push wrote."""

    store: str
    version: int
    topic: str
    partitions: int
    counts: list[int]
    checksums: list[int]
    seconds: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Records in the version."""
        return sum(self.counts)

    @property
    def checksum(self) -> str:
        """The version's checksum (what the registry will show once it is ingested)."""
        return to_hex(combine(*self.checksums))

    def describe(self) -> str:
        """One line for people."""
        return (
            f"published {self.store} v{self.version}: {self.count} records in "
            f"{self.partitions} partitions, checksum {self.checksum} ({self.seconds:.1f} s)"
            f" on topic {self.topic}"
        )


class _Deliveries:
    """Collects the first delivery failure, naming the entity."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.delivered = 0

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            return
        if self.error is None:
            key = (msg.key() or b"(control)").decode(errors="replace")
            size = len(msg.value() or b"")
            self.error = f"record {key!r} ({size} bytes) was not delivered: {err.str()}"


class Publisher:
    """Pushes versions of stores to Kafka with an idempotent, batching producer."""

    def __init__(self, settings: Settings, **producer_overrides: Any) -> None:
        self._settings = settings
        self._admin = admin(settings)
        self._producer = make_producer(settings, bulk=True, **producer_overrides)

    def _create_topic(self, store: str, partitions: int) -> tuple[int, str]:
        version = allocate_version()
        have = existing_topics(self._admin)
        while topics.version_topic(store, version) in have:
            version += 1
        topic = topics.version_topic(store, version)
        create_topics(self._admin, [NewTopic(topic, partitions, self._settings.replication_factor)])
        return version, topic

    def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int,
        headers: Headers,
        report: _Deliveries,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    partition=partition,
                    headers=headers,
                    on_delivery=report,
                )
                return
            except BufferError:
                self._producer.poll(0.05)  # queue full: let deliveries drain
            except KafkaException as e:
                raise PushError(f"producing to {topic} failed: {e}") from e

    def _flush(self, report: _Deliveries, what: str, timeout_s: float = 120.0) -> None:
        if self._producer.flush(timeout_s) > 0:
            raise PushError(f"{what}: the broker did not acknowledge every record in time")
        if report.error is not None:
            raise PushError(f"{what}: {report.error}")

    def publish(
        self,
        store: str,
        rows: Iterable[CandidateList],
        *,
        metadata: dict[str, Any] | None = None,
        attachments: dict[str, bytes] | None = None,
        partitions: int | None = None,
        on_record: Callable[[], object] | None = None,
        files: list[Path] | None = None,
    ) -> PushResult:
        """Push ``rows`` as a new version of ``store``; END_OF_PUSH only if all were delivered.

        With ``files`` (parquet parts of disjoint entities) instead, each part is produced by a
        task of the current engine (``engine.current``: on Dask, by the workers, each with its
        own producer); this process frames the version and sums the parts' counts and checksums.
        """
        self._settings.policy(store)
        parts = partitions or self._settings.partitions
        version, topic = self._create_topic(store, parts)
        try:
            write = (
                functools.partial(self._write_records, rows=rows, on_record=on_record)
                if files is None
                else functools.partial(self._write_files, files=files)
            )
            return self._push(store, version, topic, parts, write, metadata, attachments)
        except BaseException as e:
            self._abort(store, version, topic, parts, f"{type(e).__name__}: {e}")
            raise

    def _abort(self, store: str, version: int, topic: str, parts: int, reason: str) -> None:
        """Best effort: tell the materializers (ABORT_PUSH on every partition) and the lifecycle
        topic that this push failed, so the version is marked aborted and its keys cleaned up.
        Where the broker is gone too, `tandem versions abort` does it by hand."""
        log.error("push %s failed (%s); aborting it", topic, reason)
        report = _Deliveries()
        headers = control_headers(Control.ABORT_PUSH, store, version)
        try:
            for partition in range(parts):
                self._send(topic, None, reason.encode()[:1000], partition, headers, report)
            announce(self._producer, store, version, State.ABORTED, reasons=[reason])
            self._flush(report, f"abort {topic}", timeout_s=ABORT_TIMEOUT_S)
        except PushError as e:
            log.error(
                "could not mark %s aborted (%s): run `tandem versions abort %s %s`",
                topic,
                e,
                store,
                version,
            )

    def _push(
        self,
        store: str,
        version: int,
        topic: str,
        parts: int,
        write: Callable[[PushResult, _Deliveries], None],
        metadata: dict[str, Any] | None,
        attachments: dict[str, bytes] | None,
    ) -> PushResult:
        started = time.perf_counter()
        result = PushResult(
            store, version, topic, parts, [0] * parts, [0] * parts, metadata=metadata or {}
        )
        report = _Deliveries()
        start = StartOfPush(parts, time.time_ns() // 1_000_000, result.metadata).encode()
        sop_headers = control_headers(Control.START_OF_PUSH, store, version)
        for partition in range(parts):
            self._send(topic, None, start, partition, sop_headers, report)
        for name, blob in (attachments or {}).items():
            self._attach(result, name, blob, report)
        log.info("push %s: started with %d partitions", topic, parts)
        write(result, report)
        self._flush(report, f"push {topic}")
        eop_headers = control_headers(Control.END_OF_PUSH, store, version)
        for partition in range(parts):
            end = EndOfPush(result.counts[partition], result.checksums[partition]).encode()
            self._send(topic, None, end, partition, eop_headers, report)
        announce(
            self._producer,
            store,
            version,
            State.PUSHED,
            topic=topic,
            partitions=parts,
            count=result.count,
            checksum=result.checksum,
            metadata=result.metadata,
        )
        self._flush(report, f"push {topic} (END_OF_PUSH)")
        result.seconds = time.perf_counter() - started
        log.info(
            "push %s: %d records, checksum %s, %.1f s",
            topic,
            result.count,
            result.checksum,
            result.seconds,
        )
        return result

    def _attach(self, result: PushResult, name: str, blob: bytes, report: _Deliveries) -> None:
        if name not in ATTACHMENTS:
            raise PushError(f"unknown attachment {name!r} (known: {sorted(ATTACHMENTS)})")
        if len(blob) > self._settings.max_record_bytes:
            raise PushError(
                f"attachment {name!r} is {len(blob)} bytes, over the "
                f"{self._settings.max_record_bytes}-byte limit (TANDEM_MAX_RECORD_BYTES)"
            )
        headers = attachment_headers(result.store, result.version, name)
        self._send(result.topic, None, blob, 0, headers, report)

    def _write_files(self, result: PushResult, report: _Deliveries, files: list[Path]) -> None:
        """Each file's records produced by a task; their counts and checksums summed here."""
        self._flush(report, f"push {result.topic} (START_OF_PUSH)")  # framing before records
        frame = (self._settings, result.store, result.version, result.topic, result.partitions)
        for counts, checksums in engine.current().map(_produce_file, files, frame=frame):
            for partition in range(result.partitions):
                result.counts[partition] += counts[partition]
                result.checksums[partition] = combine(
                    result.checksums[partition], checksums[partition]
                )

    def _write_records(
        self,
        result: PushResult,
        report: _Deliveries,
        rows: Iterable[CandidateList],
        on_record: Callable[[], object] | None = None,
    ) -> None:
        headers = record_headers(result.store, result.version)
        limit = self._settings.max_record_bytes
        seen: set[str] = set()
        for row in rows:
            if row.entity_id in seen:
                raise PushError(f"entity {row.entity_id!r} appears twice in the input")
            seen.add(row.entity_id)
            value = encode(row.item_ids, row.scores)
            if len(value) > limit:
                raise PushError(
                    f"entity {row.entity_id!r}: encoded record is {len(value)} bytes, over the "
                    f"{limit}-byte limit (TANDEM_MAX_RECORD_BYTES); publish fewer candidates"
                )
            key = row.entity_id.encode()
            partition = partition_of(row.entity_id, result.partitions)
            self._send(result.topic, key, value, partition, headers, report)
            result.counts[partition] += 1
            result.checksums[partition] = combine(
                result.checksums[partition], record_digest(key, value)
            )
            if report.error is not None:
                raise PushError(f"push {result.topic}: {report.error}")
            if on_record is not None:
                on_record()
            self._producer.poll(0)

    def close(self) -> None:
        """Deliver what is queued."""
        if self._producer.flush(30) > 0:
            raise ServiceError("the producer could not deliver every queued record")

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._producer.flush(30)


def _produce_file(
    path: Path, frame: tuple[Settings, str, int, str, int]
) -> tuple[list[int], list[int]]:
    """Produce one file's records into a started version (a task, maybe on a Dask worker);
    returns its per-partition counts and checksums."""
    settings, store, version, topic, parts = frame
    result = PushResult(store, version, topic, parts, [0] * parts, [0] * parts)
    report = _Deliveries()
    with Publisher(settings) as publisher:
        publisher._write_records(result, report, read_candidates(path))
        publisher._flush(report, f"push {topic} ({path.name})")
    return result.counts, result.checksums


def publish_output(
    settings: Settings, output: BatchOutput | Publishable, stores: list[str]
) -> list[str]:
    """Push the chosen stores of a batch run; u2i carries the re-ranker and item categories."""
    what = output if isinstance(output, Publishable) else of_output(output)
    lines = []
    metadata = {
        "metrics": {
            k: v for k, v in what.metrics.items() if k.startswith(("ranker_", "candidates_"))
        },
        "reranker": "lightgbm" if what.reranker else None,
    }
    with Publisher(settings) as publisher:
        for store in stores:
            attachments = {}
            if store == U2I:
                attachments["categories"] = what.categories
                if what.reranker is not None:
                    attachments["model"] = what.reranker.encode()
            files = what.u2i_parts if store == U2I and what.u2i_parts else None
            result = publisher.publish(
                store,
                what.rows[store]() if files is None else (),
                metadata=metadata if store == U2I else {},
                attachments=attachments,
                files=files,
            )
            lines.append(result.describe())
    return lines


def check_broker(settings: Settings, timeout_s: float = 5.0) -> None:
    """Raise ``ServiceError`` (one line) unless the broker answers within ``timeout_s``."""
    existing_topics(admin(settings), timeout_s)
