"""HTTP handlers. Clients live in the application's AppKeys (see api/app.py)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from tandem.api import metrics, models
from tandem.api.exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
)
from tandem.api.keys import ADMIN, OUTCOME, PRODUCER, REDIS, SERVICE, SETTINGS
from tandem.api.openapi import document_bytes
from tandem.api.producer import AsyncProducer
from tandem.api.rules import parse_exclude
from tandem.contracts.domain import DEVICES
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.ids import check_id, check_store, check_version
from tandem.contracts.schemas import Event, parse_event
from tandem.store.admin import StoreVersions
from tandem.store.exceptions import RollbackRefused, StoreError

log = logging.getLogger(__name__)

MAX_K = models.MAX_K
MAX_EVENTS = models.MAX_EVENTS
EVENTS_ACK_TIMEOUT_S = 5.0
_DEFAULT_K = str(models.DEFAULT_K)


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _k(request: web.Request) -> int:
    """``k`` of :class:`models.RecommendationsQuery`, checked by hand: this is the hot path."""
    raw = request.query.get("k", _DEFAULT_K)
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3) or not 1 <= int(raw) <= MAX_K:
        raise BadRequest(f"k must be an integer from 1 to {MAX_K}", field="k")
    return int(raw)


def _device(request: web.Request) -> str | None:
    device = request.query.get("device")
    if device is not None and device not in DEVICES:
        raise BadRequest("device must be one of " + ", ".join(sorted(DEVICES)), field="device")
    return device


async def recommendations(request: web.Request) -> web.Response:
    """GET /v1/recommendations/{user_id}?k=20&device=mobile&exclude=i1,i2"""
    try:
        user = check_id(request.match_info["user_id"], "user_id")
    except ValidationError as e:
        raise BadRequest(str(e), field="user_id") from e
    exclude = parse_exclude(request.query.get("exclude"))
    answer = await request.app[SERVICE].recommend(user, _k(request), _device(request), exclude)
    request[OUTCOME] = answer.outcome
    return web.Response(body=answer.body, content_type="application/json")


async def post_events(request: web.Request) -> web.Response:
    """POST /v1/events: one event object or a list of at most 1,000."""
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"body is not valid JSON: {e}", field="body") from e
    many = isinstance(payload, list)
    batch = payload if many else [payload]
    if not 1 <= len(batch) <= MAX_EVENTS:
        raise BadRequest(f"send 1 to {MAX_EVENTS} events per request", field="body")
    now_ms = time.time_ns() // 1_000_000
    events = []
    for index, item in enumerate(batch):
        try:
            events.append(parse_event(item, now_ms))
        except ValidationError as e:
            where = f"event {index}" if many else "event"
            raise BadRequest(f"{where}: {e}", field=e.field, index=index if many else None) from e
    refusals = await _acknowledged(request.app[PRODUCER], events)
    accepted = [e.event_id for e, why in zip(events, refusals, strict=True) if why is None]
    metrics.EVENTS.inc(len(accepted))
    if len(accepted) < len(events):
        unconfirmed = [e.event_id for e, why in zip(events, refusals, strict=True) if why]
        reason = next(why for why in refusals if why)
        raise Unavailable(
            f"{len(unconfirmed)} of {len(events)} events were not acknowledged by the broker "
            f"({reason}); they may still arrive: send them again with the same event_id (a "
            "repeated event_id is counted once)",
            details={"accepted_event_ids": accepted, "unconfirmed_event_ids": unconfirmed},
        )
    return _json({"accepted": len(events), "event_ids": accepted}, 202)


async def _acknowledged(producer: AsyncProducer, events: list[Event]) -> list[str | None]:
    """Send ``events``; for each, None if the broker acknowledged it within the answer's bound,
    else why not. Never waits longer than ``EVENTS_ACK_TIMEOUT_S``."""
    futures: list[asyncio.Future[None]] = []
    refused: str | None = None
    try:
        for event in events:
            futures.append(producer.send_event(event.user_id, event.to_json()))  # noqa: PERF401 - keep what was queued before a refusal
    except Unavailable as e:
        log.warning("events not queued: %s", e)
        refused = str(e)
    if futures:
        await asyncio.wait(futures, timeout=EVENTS_ACK_TIMEOUT_S)
    refusals: list[str | None] = []
    for future in futures:
        if not future.done():  # the producer keeps it; whatever happens later is only logged
            refusals.append(f"not within {EVENTS_ACK_TIMEOUT_S:g} s")
            future.add_done_callback(_settled_late)
        elif future.cancelled():
            refusals.append("cancelled")
        else:
            error = future.exception()
            refusals.append(None if error is None else str(error))
    return refusals + [refused or "not queued"] * (len(events) - len(futures))


def _settled_late(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("an event answered with 503 was not delivered: %s", future.exception())


def _require_admin(request: web.Request) -> None:
    token = request.app[SETTINGS].admin_token
    if token is None:
        raise NotFound("admin endpoints are off: set TANDEM_ADMIN_TOKEN to enable them")
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer "):
        raise Unauthorized("send Authorization: Bearer <token>")
    # A header that is not UTF-8 arrives with surrogates (aiohttp decodes it so): no token can
    # look like that.
    try:
        offered = given[7:].encode("utf-8")
    except UnicodeEncodeError:
        raise Unauthorized(
            "the bearer token is not UTF-8; send Authorization: Bearer <token>",
            error="invalid_token",
        ) from None
    if not hmac.compare_digest(offered, token.get_secret_value().encode()):
        raise Forbidden("wrong admin token")


def _store(request: web.Request) -> str:
    try:
        store = check_store(request.match_info["store"])
    except ValidationError as e:
        raise BadRequest(str(e), field="store") from e
    if store not in request.app[SETTINGS].stores:
        raise NotFound(f"unknown store {store!r}")
    return store


async def stores(request: web.Request) -> web.Response:
    """GET /v1/stores (admin)"""
    _require_admin(request)
    overview = await request.app[ADMIN].overview()
    return _json({"stores": [_pointers(s) for s in overview]})


def _pointers(found: StoreVersions) -> dict[str, object]:
    return {
        "store": found.store,
        "live": models.version_id(found.live),
        "backup": models.version_id(found.backup),
    }


async def store_versions(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/versions (admin)"""
    _require_admin(request)
    found = await request.app[ADMIN].versions(_store(request))
    versions = [{**info.to_dict(), "version": str(info.version)} for info in found.versions]
    return _json({**_pointers(found), "versions": versions})


async def rollback(request: web.Request) -> web.Response:
    """POST /v1/stores/{store}/rollback (admin)"""
    _require_admin(request)
    store = _store(request)
    try:
        rolled_back, live = await request.app[ADMIN].rollback(store)
    except RollbackRefused as e:
        raise Conflict(str(e)) from e
    return _json(
        {
            "store": store,
            "rolled_back": models.version_id(rolled_back),
            "live": models.version_id(live),
        }
    )


def _canary_body(body: object) -> tuple[int, float, bool]:
    """The version, share (0-1, or a percentage) and shadow flag of a canary request."""
    if not isinstance(body, dict):
        raise BadRequest('send {"version": "…", "share": 0.1}', field="body")
    try:
        version = check_version(int(str(body.get("version"))))
    except (ValueError, ValidationError) as e:
        raise BadRequest("version must be a version id (digits)", field="version") from e
    share = body.get("share", 0.1)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 100:
        raise BadRequest("share must be above 0 and at most 1 (or a percentage)", field="share")
    shadow = body.get("shadow", False)
    if not isinstance(shadow, bool):
        raise BadRequest("shadow must be true or false", field="shadow")
    return version, float(share), shadow


async def start_canary(request: web.Request) -> web.Response:
    """POST /v1/stores/{store}/canary {"version", "share", "shadow"} (admin)"""
    _require_admin(request)
    store = _store(request)
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"body is not valid JSON: {e}", field="body") from e
    version, share, shadow = _canary_body(payload)
    try:
        canary = await request.app[ADMIN].start_canary(store, version, share, shadow=shadow)
    except StoreError as e:
        raise Conflict(str(e)) from e
    return _json(
        {"store": store, "canary": str(canary.version), "share": canary.share, "shadow": shadow}
    )


async def promote_canary(request: web.Request) -> web.Response:
    """POST /v1/stores/{store}/canary/promote (admin)"""
    _require_admin(request)
    store = _store(request)
    try:
        live = await request.app[ADMIN].promote_canary(store, "promoted through the API")
    except StoreError as e:
        raise Conflict(str(e)) from e
    return _json({"store": store, "live": str(live)})


async def abort_canary(request: web.Request) -> web.Response:
    """POST /v1/stores/{store}/canary/abort (admin)"""
    _require_admin(request)
    store = _store(request)
    try:
        info = await request.app[ADMIN].abort_canary(store, ["aborted through the API"])
    except StoreError as e:
        raise Conflict(str(e)) from e
    return _json({"store": store, "aborted": str(info.version), "reasons": list(info.reasons)})


async def healthz(_request: web.Request) -> web.Response:
    """GET /healthz: the process is alive."""
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: ready when events can be accepted right now (the producer is usable and the
    broker leads every partition of the events topic), candidates can be read (Redis answers)
    and some store has a live version."""
    producer = request.app[PRODUCER]
    (redis, live), broker = await asyncio.gather(
        _redis_checks(request), asyncio.to_thread(producer.broker_reachable)
    )
    problem = producer.problem()
    if problem is not None:
        log.warning("not ready for events: %s", problem)
    checks = {
        "redis": redis,
        "live_version": live,
        "broker": broker,
        "events": broker and problem is None,
    }
    ready = all(checks.values())
    if ready:
        return _json({"ready": True, "checks": checks})
    return _json({"ready": False, "checks": checks}, 503, {"Retry-After": "1"})


async def _redis_checks(request: web.Request) -> tuple[bool, bool]:
    """Whether Redis answers, and whether some store has a live version."""
    try:
        answered = bool(await asyncio.wait_for(request.app[REDIS].ping(), 1.0))
        overview = await asyncio.wait_for(request.app[ADMIN].overview(), 1.0)
    except (RedisError, OSError, TimeoutError):
        return False, False
    return answered, any(s.live is not None for s in overview)


async def openapi(_request: web.Request) -> web.Response:
    """GET /openapi.json"""
    return web.Response(body=document_bytes(), content_type="application/json")
