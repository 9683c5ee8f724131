"""Versioned writes: a version's entities in pipelined batches, with their bookkeeping."""

from __future__ import annotations

from dataclasses import replace

from redis.asyncio import Redis

from tandem.contracts.codec import summarize
from tandem.contracts.exceptions import CodecError
from tandem.contracts.ids import check_id, valid_ids
from tandem.store.connect import is_cluster
from tandem.store.exceptions import ProgressConflict
from tandem.store.keys import Keys
from tandem.store.progress import BatchStat, PartitionProgress, batch_stat
from tandem.store.scripts import ADVANCE

MSET_PAIRS = 1000  # per MSET: long enough to amortize a command, short enough not to stall Redis


class VersionWriter:
    """Writes one version of one store. Its keys get no TTL here: a version's data must not
    expire while it is in service; :class:`Lifecycle` sets the store's TTL when the version leaves
    service (superseded, rolled back, rejected).

    A batch's values are written first (one pipeline, spread over a cluster's nodes), then the
    partition's progress moves by compare-and-set, only if the stored progress is the one the
    caller started from: nothing is lost or counted twice when a writer dies between its Redis
    write and its Kafka commit, and values written twice are the same bytes.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        store: str,
        version: int,
        *,
        rebuild: bool = False,
    ) -> None:
        self._keys = keys
        self._store = store
        self._version = version
        # A rebuild (replay) counts into a progress of its own, beside the served one.
        self._progress_key = (
            keys.rebuild(store, version) if rebuild else keys.progress(store, version)
        )
        self._root = keys.version_root(store, version)
        self._advance = redis.register_script(ADVANCE)
        self._redis = redis
        self._cluster = is_cluster(redis)
        self._direct: PartitionProgress | None = None

    async def load(self, partition: int) -> PartitionProgress:
        """The stored progress of ``partition``."""
        raw = await self._redis.hget(self._progress_key, f"s:{partition}")
        return PartitionProgress.from_json(raw)

    async def load_all(self) -> dict[int, PartitionProgress]:
        """The stored progress of every partition seen so far."""
        raw = await self._redis.hgetall(self._progress_key)
        fields = {(f.decode() if isinstance(f, bytes) else f): v for f, v in raw.items()}
        return {
            int(name[2:]): PartitionProgress.from_json(value)
            for name, value in fields.items()
            if name.startswith("s:")
        }

    async def apply(
        self,
        partition: int,
        before: PartitionProgress,
        after: PartitionProgress,
        entries: list[tuple[str, bytes]],
    ) -> None:
        """Write ``entries``, then move ``partition`` from ``before`` to ``after``.

        Raises :class:`ProgressConflict` (and counts nothing) when the stored progress is no
        longer ``before``.
        """
        if entries:
            await self._put(entries)
        args: list[bytes | str | int] = [
            f"o:{partition}",
            str(before.offset),
            str(after.offset),
            f"s:{partition}",
            after.to_json(),
        ]
        applied, current = await self._advance(keys=[self._progress_key], args=args)
        if not applied:
            raise ProgressConflict(
                f"{self._root} partition {partition}: stored offset {current!r}, "
                f"expected {before.offset}"
            )

    async def _put(self, entries: list[tuple[str, bytes]]) -> None:
        """Write the values in one round trip: MSETs on one Redis (a command per entry costs
        redis-py ~10 times the client CPU), SETs on a cluster (whose entities' slots differ)."""
        pipe = self._redis.pipeline(transaction=False)
        if self._cluster:
            for entity, value in entries:
                pipe.set(self._keys.entity_unchecked(self._root, entity), value)
        else:
            for at in range(0, len(entries), MSET_PAIRS):
                args: list[str | bytes] = []
                for entity, value in entries[at : at + MSET_PAIRS]:
                    args += (self._keys.entity_unchecked(self._root, entity), value)
                pipe.execute_command("MSET", *args)
        await pipe.execute()

    async def write(self, entries: list[tuple[str, bytes]]) -> PartitionProgress:
        """Write a batch outside Kafka (tests, benchmarks, tools) as pseudo-partition 0."""
        before = self._direct or await self.load(0)
        after = before.with_batch(_checked(entries), before.offset + len(entries))
        await self.apply(0, before, after, entries)
        self._direct = after
        return after

    async def put_attachment(self, name: str, value: bytes) -> None:
        """Store a blob that goes live with the version (idempotent)."""
        await self._redis.set(self._keys.attachment(self._store, self._version, name), value)

    async def discard(self) -> None:
        """Forget this writer's progress (a rebuild starting over)."""
        await self._redis.delete(self._progress_key)

    async def promote_rebuild(self) -> None:
        """Make a complete rebuild's progress the version's progress, in one step."""
        await self._redis.rename(
            self._progress_key, self._keys.progress(self._store, self._version)
        )

    async def seal(self) -> PartitionProgress:
        """Mark a direct write complete, as an END_OF_PUSH would; returns the final progress."""
        before = self._direct or await self.load(0)
        after = replace(before, started=True, eop_count=before.count, eop_checksum=before.checksum)
        await self.apply(0, before, after, [])
        self._direct = after
        return after


def _checked(entries: list[tuple[str, bytes]]) -> BatchStat:
    """The stat of a batch of entries, checked all at once; a bad entry raises the error
    :func:`check_id` or :func:`summarize` gives for it."""
    keys = [entity.encode() for entity, _ in entries]
    values = [value for _, value in entries]
    if valid_ids(keys) is None:
        for entity, _ in entries:
            check_id(entity, "entity_id")
    try:
        return batch_stat(keys, values)
    except CodecError:
        for value in values:
            summarize(value)
        raise
