"""The Faust application: sessions, trending and invalidation, mirrored into Redis."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar, cast

import faust
from faust.types import EventT, Message, StreamT
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tandem.contracts import topics
from tandem.contracts.control import dlq_headers
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.hidden import decode_hidden
from tandem.contracts.kafka import is_tansu
from tandem.contracts.schemas import Event, decode_event
from tandem.contracts.session import SessionPolicy, SessionState, update
from tandem.contracts.settings import Settings
from tandem.contracts.versions import State, VersionRecord
from tandem.store.connect import connect
from tandem.store.hidden import MAX_HIDDEN, HiddenItems
from tandem.store.keys import Keys
from tandem.streams import metrics
from tandem.streams.attribution import Attribution
from tandem.streams.exceptions import RedisUnavailable
from tandem.streams.lag import LAG
from tandem.streams.mirror import RedisMirror
from tandem.streams.transport import TandemApp
from tandem.streams.trending import TrendingCounts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    """How the worker runs (its group id names its changelog topics too)."""

    app_id: str = "tandem-streams"
    session: SessionPolicy = field(default_factory=SessionPolicy)
    flush_interval_s: float = 0.01
    # How often queued changelog records are handed to the producer (at once when
    # CHANGELOG_HAND_RECORDS are queued). Offsets wait for them either way (write_changelog);
    # a produce request every 10 ms tick cost the worker ~20% of its CPU at 500 events/s.
    changelog_interval_s: float = 0.1
    flush_max: int = 500
    trending_flush_s: float = 2.0
    categories_refresh_s: float = 60.0
    store_url: str = "memory://"
    # None: chosen by the broker (see ``changelog_batching``).
    changelog_batch_bytes: int | None = None
    # How long a Redis outage is ridden out (writes retried) before the worker gives up.
    redis_outage_s: float = 60.0
    attribution_flush_s: float = 0.2


RETRY_FIRST_S = 0.1
RETRY_MAX_S = 2.0
T = TypeVar("T")
R = TypeVar("R")

CHANGELOG_HAND_RECORDS = 2000
HIDDEN_BATCH = 500  # tandem.hidden records applied in one Redis round trip
HIDDEN_WITHIN_S = 0.05  # how long a batch waits for more (an operator's hide: well within 1 s)
TANSU_CHANGELOG_BATCH_BYTES = 1
CHANGELOG_BATCH_BYTES = 65_536


def changelog_batching(settings: Settings, options: WorkerOptions) -> WorkerOptions:
    """``options`` with the changelog's producer batch size decided.

    Tansu reports a partition's end offset as its last *batch's* base offset + 1, so Faust's
    table recovery would stop before the tail of a multi-record batch: there the worker sends one
    changelog record per batch. Apache Kafka gets normal batching.
    """
    if options.changelog_batch_bytes is not None:
        return options
    size = TANSU_CHANGELOG_BATCH_BYTES if is_tansu(settings) else CHANGELOG_BATCH_BYTES
    return replace(options, changelog_batch_bytes=size)


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """Faust's (aiokafka's) form of the security settings in ``TANDEM_KAFKA_CONFIG``: SASL
    (PLAIN, SCRAM-SHA-256/512) with or without TLS, or TLS alone."""
    config = {key: str(value) for key, value in settings.kafka_client_config().items()}
    protocol = config.get("security.protocol", "PLAINTEXT").upper()
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=config.get("ssl.ca.location"))
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=config.get("sasl.username"),
            password=config.get("sasl.password"),
            mechanism=config.get("sasl.mechanism", "PLAIN").upper(),
            ssl_context=context,
        )
    return faust.SSLCredentials(context) if context is not None else None


def changelog_topic(options: WorkerOptions) -> str:
    """The sessions table's changelog topic."""
    return f"{options.app_id}-sessions-changelog"


class StreamWorker:
    """Owns the Faust app and what it writes to Redis."""

    def __init__(self, settings: Settings, options: WorkerOptions) -> None:
        self.settings = settings
        self.options = options
        self.redis: Redis = connect(settings)
        self.mirror = RedisMirror(
            self.redis, Keys(settings.key_prefix), options.session.gap_ms // 1000
        )
        self.pending: dict[str, bytes] = {}
        # Changelog records not yet handed to the producer, the newest per key: key ->
        # (partition, session). One record per user per flush, not one per event.
        self.unlogged: dict[bytes, tuple[int, bytes]] = {}
        self._unlogged_lock = asyncio.Lock()
        self._logging: set[asyncio.Future[object]] = set()
        self._changelog_error: BaseException | None = None
        self._handing: asyncio.Future[None] | None = None
        self._flushing: asyncio.Future[None] | None = None
        self._changelog_due = 0.0  # time.monotonic() of the next hand-over
        self.trending = TrendingCounts()
        self.attribution = Attribution(
            self.redis, Keys(settings.key_prefix), settings.attribution_window_s
        )
        self.hidden = HiddenItems(self.redis, Keys(settings.key_prefix))
        self.categories: dict[str, str] = {}
        self._flush_lock = asyncio.Lock()
        self.app = self._build_app()

    def _build_app(self) -> TandemApp:
        settings, options = self.settings, self.options
        (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)  # Faust makes one level
        app = TandemApp(
            options.app_id,
            broker=[f"kafka://{host}" for host in settings.kafka.split(",")],
            broker_credentials=broker_credentials(settings),
            store=options.store_url,
            # Faust's own files (its table folder) go under the state folder, not the working one.
            datadir=str(settings.state_dir / "faust" / "{conf.name}-data"),
            topic_partitions=settings.events_partitions,
            topic_replication_factor=settings.replication_factor,
            broker_session_timeout=6.0,
            broker_heartbeat_interval=2.0,
            broker_commit_interval=0.5,
            producer_linger=0.002,
            # On Tansu one record per batch (see ``changelog_batching``).
            producer_max_batch_size=options.changelog_batch_bytes or CHANGELOG_BATCH_BYTES,
            consumer_auto_offset_reset="earliest",
            web_enabled=False,
        )
        events = app.topic(
            topics.EVENTS,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.events_partitions,
        )
        versions = app.topic(
            topics.VERSIONS, key_serializer="raw", value_serializer="raw", partitions=1
        )
        self.dlq = app.topic(topics.DLQ, key_serializer="raw", value_serializer="raw")
        impressions = app.topic(
            topics.IMPRESSIONS,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.events_partitions,
        )
        self.sessions = app.Table(
            "sessions",
            partitions=settings.events_partitions,
            key_type=bytes,
            value_type=bytes,
            changelog_topic=app.topic(
                changelog_topic(options),
                key_serializer="raw",
                value_serializer="raw",
                partitions=settings.events_partitions,
                compacting=True,
            ),
        )
        app.batch_topic(events, self.handle_batch)
        app.agent(versions, concurrency=1, name="cutovers")(self._on_versions)
        app.agent(impressions, concurrency=1, name="impressions")(self._on_impressions)
        app.timer(options.attribution_flush_s)(self.flush_attribution)
        hidden = app.topic(topics.HIDDEN, key_serializer="raw", value_serializer="raw")
        app.agent(hidden, concurrency=1, name="hidden")(self._on_hidden)
        app.timer(options.flush_interval_s)(self._tick)
        app.timer(options.trending_flush_s)(self.flush_trending)
        app.timer(options.categories_refresh_s, on_leader=False)(self.refresh_categories)
        self.sessions.on_recover(self._remirror)
        # Faust flushes the producer before it commits offsets or gives partitions away.
        app.before_producer_flush.append(self.write_changelog)
        return app

    async def handle_batch(self, messages: list[Message]) -> None:
        """Apply fetched ``tandem.events`` messages (each partition's in offset order),
        dead-letter those that are not events, and ack them all (see
        ``TandemApp.batch_topic``); a failure to do so stops the worker."""
        try:
            await self._handle_batch(messages)
        except Exception as e:  # Faust's fetcher would only log it: stop, and exit non-zero
            log.error("applying events failed: %r", e)
            await self.app.crash(e)
            raise

    async def _handle_batch(self, messages: list[Message]) -> None:
        app = self.app
        await app.flow_control.acquire()  # suspended while partitions are being reassigned
        generation = app.consumer_generation_id
        now_ms = time.time_ns() // 1_000_000
        taken: list[Message] = []
        events: list[tuple[Event, int]] = []
        for message in messages:
            if message.generation_id != generation:
                continue  # fetched before a rebalance: read again after its seek, not acked
            taken.append(message)
            try:
                events.append((decode_event(message.value or b"", now_ms), message.partition))
            except ValidationError as e:
                await self._dead_letter(message, str(e))
        if app.consumer_generation_id != generation or not app.flow_control.is_active():
            # A rebalance began while a dead letter was sent: its partitions may be another
            # worker's by now, so nothing is applied (the batch is read again after the seek).
            return
        self.apply(events)  # no await from here to the acks: a rebalance cannot come between
        consumer = app.consumer
        for message in taken:
            consumer.ack(message)
        LAG.record_all(consumer, taken)
        if len(self.pending) >= self.options.flush_max and self._flushing is not None:
            # Redis is behind: the next batch waits for the writes under way (not cancelled
            # with this wait), so fewer than flush_max sessions and one batch queue up.
            await asyncio.wait([self._flushing])
        self._flush_soon()  # mirror now, in the background, not at the next tick

    def apply(self, events: list[tuple[Event, int]]) -> None:
        """Update each user's session in the table with the user's events (each with its
        partition, which is the changelog's too), in order, and queue the user's newest session
        once for the changelog and the Redis mirror: a user's session is decoded and encoded
        once per batch, not once per event."""
        by_user: dict[str, list[Event]] = {}
        partition_of: dict[str, int] = {}
        for event, partition in events:
            by_user.setdefault(event.user_id, []).append(event)
            partition_of[event.user_id] = partition
        applied: list[Event] = []
        for user, its in by_user.items():
            self._apply_user(user, its, partition_of[user], applied)
        for event, _ in events:
            self.attribution.add_event(event)
        if len(applied) < len(events):
            metrics.DUPLICATES.inc(len(events) - len(applied))
        if applied:
            self.trending.add_all(applied)
            metrics.applied_all([event.ts_ms for event in applied])

    def _apply_user(
        self, user: str, events: list[Event], partition: int, applied: list[Event]
    ) -> None:
        key = user.encode()
        store = self.sessions.data  # the store itself: the changelog record is queued below
        raw = store.get(key)
        state = first = None if raw is None else SessionState.decode(raw)
        for event in events:
            new = update(state, event, self._category(event), self.options.session)
            if new is not state:  # the same object: a re-delivered event
                state = new
                applied.append(event)
        if state is first or state is None:
            return
        encoded = state.encode()
        store[key] = encoded
        self.unlogged[key] = (partition, encoded)
        self.pending[user] = encoded

    def _category(self, event: Event) -> str | None:
        given = (event.context or {}).get("category")
        if isinstance(given, str):
            return given
        return self.categories.get(event.item_id)

    async def _dead_letter(self, message: Message, reason: str) -> None:
        log.warning(
            "dead-lettering %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason
        )
        headers = dlq_headers(reason, message.topic, message.partition, message.offset, "streams")
        await self.dlq.send(key=message.key, value=message.value, headers=headers)
        metrics.DEAD.labels(reason.split(":", 1)[0][:40]).inc()

    async def write_changelog(self) -> None:
        """Hand the queued changelog records to the producer and wait until the broker has them
        (and every record handed over before); raise the producer's error if one was lost.

        Runs before every flush of Faust's producer, so before Faust commits offsets or gives
        partitions away: an event's offset is committed only once its session is in the
        changelog (a later session of the same user, which includes the event, counts too).
        """
        await self._hand_changelog()
        if self._logging:
            await asyncio.wait(self._logging)
        if self._changelog_error is not None:
            raise self._changelog_error

    async def _hand_changelog(self) -> None:
        """Hand the queued changelog records to the producer, one batch per partition (as the
        producer's batch size allows), without waiting for the broker. One hand-over at a time,
        so each partition gets a key's sessions in the order they were made."""
        async with self._unlogged_lock:
            if not self.unlogged:
                return
            records, self.unlogged = self.unlogged, {}
            by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
            for key, (partition, value) in records.items():
                by_partition.setdefault(partition, []).append((key, value))
            topic = changelog_topic(self.options)
            try:
                for partition, batch in by_partition.items():
                    for future in await self.app.send_records(topic, partition, batch):
                        self._logging.add(future)
                        future.add_done_callback(self._on_logged)
            except BaseException as e:
                # Records taken from the queue did not all reach the producer: no offset may
                # be committed any more (``write_changelog`` raises from now on).
                self._changelog_error = self._changelog_error or e
                raise

    def _on_logged(self, future: asyncio.Future[object]) -> None:
        self._logging.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("a changelog batch was not written: %r", future.exception())
            self._changelog_error = self._changelog_error or future.exception()

    def _start_changelog(self) -> None:
        """Hand the queued changelog records to the producer in the background: the producer
        may make the hand-over wait (one batch per partition waits for the one before), and the
        Redis mirror must not wait for Kafka."""
        if not self.unlogged or self.app.should_stop:  # once stopping, Faust's last flush does
            return
        if self._handing is None or self._handing.done():
            self._handing = asyncio.ensure_future(self._hand_changelog())
            self._handing.add_done_callback(self._on_handed)

    def _on_handed(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the changelog could not be handed to the producer: %r", task.exception())

    def _flush_soon(self) -> None:
        """Mirror the queued sessions in the background, so the next events need not wait for
        Redis; while one flush runs, sessions queue up for the next (one flush at a time)."""
        if self.pending and (self._flushing is None or self._flushing.done()):
            self._flushing = self.app.add_future(self._flush_queued())

    async def _flush_queued(self) -> None:
        try:
            while self.pending:
                await self.flush_sessions()
        except Exception as e:  # in the background: stop the worker, as a timer's error does
            log.error("the session mirror failed: %s", e)
            await self.app.crash(e)

    async def _tick(self) -> None:
        """Every ``flush_interval_s``: mirror queued sessions unless that runs already, and
        every ``changelog_interval_s`` (or when many are queued) start handing queued changelog
        records to the producer (both in the background)."""
        now = time.monotonic()
        if now >= self._changelog_due or len(self.unlogged) >= CHANGELOG_HAND_RECORDS:
            self._changelog_due = now + self.options.changelog_interval_s
            self._start_changelog()
        self._flush_soon()

    async def flush_sessions(self) -> None:
        """Write queued sessions (and epoch bumps) to Redis in one pipeline, retrying through a
        Redis outage; a session leaves the queue only once written (unless a newer one of the
        same user replaced it meanwhile, which the next flush writes)."""
        async with self._flush_lock:
            if not self.pending:
                return
            batch = dict(self.pending)
            with metrics.FLUSH_SECONDS.time():
                await self._retrying("the session mirror", self.mirror.write_sessions, batch)
            for user, encoded in batch.items():
                if self.pending.get(user) is encoded:
                    del self.pending[user]

    async def flush_trending(self) -> None:
        """Add the counts since the last flush to Redis and refresh the top items; counts that
        could not be written go back to be written with the next flush."""
        counts = self.trending.drain()
        try:
            await self._retrying("trending", self.mirror.write_trending, counts)
        except RedisUnavailable:
            self.trending.restore(counts)
            raise

    async def _retrying(self, what: str, write: Callable[[T], Awaitable[R]], payload: T) -> R:
        """``write(payload)`` until it succeeds (its result), backing off; after
        ``redis_outage_s`` without success, :class:`RedisUnavailable` (the worker then stops,
        and exits non-zero)."""
        deadline = time.monotonic() + self.options.redis_outage_s
        delay = RETRY_FIRST_S
        while True:
            try:
                return await write(payload)
            except (RedisError, OSError) as e:
                if time.monotonic() + delay > deadline:
                    raise RedisUnavailable(
                        f"Redis did not take {what} for {self.options.redis_outage_s:g} s: {e}"
                    ) from e
                metrics.REDIS_RETRIES.inc()
                log.warning("writing %s failed (%s); retrying in %.1f s", what, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def refresh_categories(self) -> None:
        """Reload item categories published by the batch stage."""
        self.categories = await self.mirror.categories()

    async def _remirror(self) -> None:
        # After recovery the table may hold sessions whose mirror write was lost in a crash.
        restored = {bytes(k).decode(): bytes(v) for k, v in self.sessions.items()}
        log.info("recovered %d sessions; mirroring them into Redis", len(restored))
        await self.mirror.write_sessions(restored)

    async def _on_impressions(self, stream: StreamT[bytes]) -> None:
        async for value in stream:
            self.attribution.add_impression(value or b"")

    async def flush_attribution(self) -> None:
        """Write queued impressions and attribute queued events (see streams/attribution.py)."""
        await self._retrying("attribution", lambda _: self.attribution.flush(), None)

    async def _on_versions(self, stream: StreamT[bytes]) -> None:
        async for value in stream:
            try:
                record = VersionRecord.decode(value)
            except ValidationError as e:
                log.warning("skipping an unreadable record on %s: %s", topics.VERSIONS, e)
                continue
            if record.state is State.LIVE:
                epoch = await self._bump_epoch()
                metrics.EPOCH_BUMPS.inc()
                log.info(
                    "cutover of %s v%s: global epoch now %d", record.store, record.version, epoch
                )

    async def _bump_epoch(self) -> int:
        """Bump the global epoch (no cached answer made before a cutover is served again),
        retrying through a Redis outage as every other write does."""
        return await self._retrying(
            "a cutover's epoch", lambda _: self.mirror.bump_global_epoch(), None
        )

    async def _on_hidden(self, stream: StreamT[bytes]) -> None:
        # take_events is Stream's, not in the StreamT protocol; the agent's stream is a Stream.
        batches = cast(faust.Stream[bytes], stream).take_events(HIDDEN_BATCH, HIDDEN_WITHIN_S)
        async for events in batches:
            await self.apply_hidden(events)

    async def apply_hidden(self, events: Sequence[EventT[bytes]]) -> None:
        """Apply operators' hides and unhides from ``tandem.hidden`` to Redis, in order and in
        one round trip (every API process sees them with its next request; a new worker group
        replays the whole compacted topic in a few), and dead-letter the records that are not
        one or that the full set refuses."""
        taken: list[tuple[EventT[bytes], tuple[str, bool]]] = []
        for event in events:
            try:
                taken.append((event, decode_hidden(event.value or b"")))
            except ValidationError as e:
                await self._dead_letter(event.message, str(e))
        if not taken:
            return
        changes = [change for _, change in taken]
        results = await self._retrying("hidden items", self.hidden.change_many, changes)
        for (event, (_, hidden)), changed in zip(taken, results, strict=True):
            if changed is None:
                await self._dead_letter(event.message, f"hidden: {MAX_HIDDEN} items are hidden")
                continue
            metrics.HIDDEN.labels("hide" if hidden else "unhide").inc()
        shown = ", ".join(f"{item} {'hidden' if hidden else 'shown'}" for item, hidden in changes)
        log.info("applied %d change(s) of hidden items: %s", len(changes), shown[:200])

    async def close(self) -> None:
        """Write what is queued to Redis and release it (Faust's producer, stopped by now,
        was flushed, changelog included, when the app stopped)."""
        await self.flush_sessions()
        await self.flush_trending()
        await self.attribution.flush()
        await self.redis.aclose()
