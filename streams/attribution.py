"""Attribution: events joined to the impressions they came from, counted per version and variant.

The worker keeps each impression (its items and the experiments it took part in) in the user's
slot for the attribution window. An event that names a ``request_id`` is attributed to that
impression; one that does not, to the user's last impression; either only when its item was
among the items shown. Each impression counts at most one click, one add-to-cart and one
purchase (so CTR and conversion are shares of impressions, and a redelivered event counts once).

Counters live in Redis (every process and the guard see them): per experiment
(``Keys.experiment``: control against canary) and per store version (``Keys.online``). An
impression is counted once: only by the write that creates its slot, so a redelivered record or
a retried flush adds nothing, and one older than the window is skipped, so a new consumer group
replaying ``tandem.impressions`` from its start does not count old answers again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from tandem.contracts.exceptions import ValidationError
from tandem.contracts.ids import check_id, check_store, check_version
from tandem.contracts.schemas import Event
from tandem.store.experiments import CANARY, CONTROL, counter_field, latency_bound, latency_field
from tandem.store.keys import Keys
from tandem.streams import metrics

log = logging.getLogger(__name__)

ATTRIBUTED = frozenset({"click", "add_to_cart", "purchase"})
# An event naming an impression the worker has not seen yet waits this long for it.
WAIT_FOR_IMPRESSION_S = 10.0
# One naming none, whose item is not in the user's last impression seen so far, waits this long
# for a newer one: the worker reads tandem.impressions and tandem.events independently, so the
# answer a click came from may be read a little after the click.
WAIT_FOR_LAST_IMPRESSION_S = 2.0


@dataclass(frozen=True, slots=True)
class Shown:
    """What attribution keeps of one impression."""

    user_id: str
    request_id: str
    items: tuple[str, ...]
    # (store, version, variant, experiment canary version or 0)
    counted: tuple[tuple[str, int, str, int], ...]

    def encode(self) -> bytes:
        """Stored form."""
        return orjson.dumps({"items": self.items, "counted": self.counted})


def parse_impression(raw: bytes) -> tuple[Shown, dict[str, Any]]:
    """What attribution keeps of a ``tandem.impressions`` record, and the record itself;
    :class:`ValidationError` when it is not one."""
    try:
        body = orjson.loads(raw)
        user = check_id(body["user_id"], "user_id")
        request_id = check_id(body["request_id"], "request_id")
        canaries = set(body.get("canaries", []))
        experiments = {check_store(e["store"]): int(e["version"]) for e in body["experiments"]}
        counted = []
        for store, version in body.get("versions", {}).items():
            if version is None:
                continue
            variant = CANARY if store in canaries else CONTROL
            counted.append((check_store(store), check_version(int(version)), variant,
                            experiments.get(store, 0)))  # fmt: skip
        items = tuple(str(item["item_id"]) for item in body["items"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValidationError("impression", f"not an impression record ({e})") from e
    return Shown(user, request_id, items, tuple(counted)), body


def _decode_shown(raw: bytes, user: str, request_id: str) -> Shown:
    body = orjson.loads(raw)
    counted = tuple((s, int(v), str(var), int(e)) for s, v, var, e in body["counted"])
    return Shown(user, request_id, tuple(body["items"]), counted)


@dataclass
class Attribution:
    """Impressions and events queued by the worker's agents, written by :meth:`flush`."""

    redis: Redis
    keys: Keys
    window_s: int
    impressions: list[tuple[Shown, dict[str, Any]]] = field(default_factory=list)
    events: list[tuple[Event, float]] = field(default_factory=list)

    def add_impression(self, raw: bytes) -> None:
        """Queue one impression record (an unreadable one is logged and skipped, one older than
        the window is skipped: it was counted when it was new)."""
        try:
            shown, body = parse_impression(raw)
        except ValidationError as e:
            log.warning("skipping an unreadable impression: %s", e)
            return
        age_ms = time.time() * 1000 - float(body.get("ts_ms") or 0)
        if age_ms > self.window_s * 1000:
            metrics.SKIPPED_IMPRESSIONS.labels("older_than_window").inc()
            return
        self.impressions.append((shown, body))

    def add_event(self, event: Event) -> None:
        """Queue an event that may be attributed (clicks, add-to-carts, purchases)."""
        if event.event_type in ATTRIBUTED:
            self.events.append((event, time.monotonic()))

    async def flush(self) -> None:
        """Write queued impressions, then attribute queued events (in that order, so an event
        finds an impression queued with it). Events whose impression is not there yet wait for
        it up to ``WAIT_FOR_IMPRESSION_S``."""
        impressions, self.impressions = self.impressions, []
        try:
            if impressions:
                await self._write_impressions(impressions)
        except BaseException:
            # the retry counts only the impressions whose slot is not written yet (a failure
            # between a slot and its counts loses those counts; it never doubles them)
            self.impressions[:0] = impressions
            raise
        events, self.events = self.events, []
        try:
            waiting = await self._attribute(events) if events else []
        except BaseException:
            self.events[:0] = events
            raise
        self.events.extend(waiting)

    async def _write_impressions(self, found: list[tuple[Shown, dict[str, Any]]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for shown, _ in found:
            key = self.keys.impression(shown.user_id, shown.request_id)
            pipe.set(key, shown.encode(), ex=self.window_s, nx=True)
        created = await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for (shown, body), new in zip(found, created, strict=True):
            if not new:
                metrics.SKIPPED_IMPRESSIONS.labels("seen_before").inc()
                continue
            pipe.set(self.keys.last_impression(shown.user_id), shown.request_id, ex=self.window_s)
            self._count(pipe, shown, "impressions")
            if body.get("degraded"):
                self._count(pipe, shown, "degraded")
            self._latency(pipe, shown, float(body.get("took_ms", 0.0)))
        await pipe.execute()

    def _latency(self, pipe: Any, shown: Shown, took_ms: float) -> None:
        bucket = latency_field("", latency_bound(took_ms))[1:]  # "lat_le_…"
        for store, version, variant, experiment in shown.counted:
            pipe.hincrby(self.keys.online(store), f"{version}:{variant}:{bucket}", 1)
            if experiment:
                key = self.keys.experiment(store, experiment)
                pipe.hincrby(key, latency_field(variant, latency_bound(took_ms)), 1)
                pipe.hincrby(key, counter_field(variant, "latency_ms_sum"), round(took_ms))

    def _count(self, pipe: Any, shown: Shown, metric: str) -> None:
        for store, version, variant, experiment in shown.counted:
            pipe.hincrby(self.keys.online(store), f"{version}:{variant}:{metric}", 1)
            if experiment:
                pipe.hincrby(self.keys.experiment(store, experiment), f"{variant}:{metric}", 1)
            metrics.ONLINE.labels(store, str(version), variant, metric).inc()

    async def _attribute(self, events: list[tuple[Event, float]]) -> list[tuple[Event, float]]:
        """Attribute ``events``; those still waiting for their impression are returned."""
        request_ids = await self._request_ids([e for e, _ in events])
        pipe = self.redis.pipeline(transaction=False)
        for (event, _), rid in zip(events, request_ids, strict=True):
            pipe.get(self.keys.impression(event.user_id, rid or "none"))
        raws = await pipe.execute()
        waiting, hits = [], []
        now = time.monotonic()
        for (event, since), rid, raw in zip(events, request_ids, raws, strict=True):
            shown = None if raw is None else _decode_shown(raw, event.user_id, rid or "")
            if shown is not None and event.item_id in shown.items:
                hits.append((event, shown))
            elif now - since < _patience(event, found=shown is not None):
                waiting.append((event, since))
            else:
                metrics.UNATTRIBUTED.inc()
        if hits:
            await self._count_hits(hits)
        return waiting

    async def _request_ids(self, events: list[Event]) -> list[str | None]:
        """Each event's impression: the one it names, or its user's last one."""
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            if event.request_id is None:
                pipe.get(self.keys.last_impression(event.user_id))
        found = iter(await pipe.execute())
        out: list[str | None] = []
        for event in events:
            rid = event.request_id if event.request_id is not None else next(found)
            out.append(rid.decode() if isinstance(rid, bytes) else rid)
        return out

    async def _count_hits(self, hits: list[tuple[Event, Shown]]) -> None:
        """Count each impression's first event of each type (a flag in the impression's slot)."""
        pipe = self.redis.pipeline(transaction=False)
        for event, shown in hits:
            flag = self.keys.impression(shown.user_id, shown.request_id) + ":" + event.event_type
            pipe.set(flag, 1, nx=True, ex=self.window_s)
        firsts = await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for (event, shown), first in zip(hits, firsts, strict=True):
            if first:
                self._count(pipe, shown, event.event_type)
        await pipe.execute()


def _patience(event: Event, *, found: bool) -> float:
    """How long an event not attributed yet may wait for its impression to be read: one that
    names an impression not read yet waits for it; one whose named impression did not show its
    item never matches; one naming none waits a little for a newer last impression."""
    if event.request_id is None:
        return WAIT_FOR_LAST_IMPRESSION_S
    return 0.0 if found else WAIT_FOR_IMPRESSION_S
