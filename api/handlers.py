"""HTTP handlers. Clients live in the application's AppKeys (see api/app.py)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from tandem.api import metrics
from tandem.api.exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
)
from tandem.api.keys import ADMIN, OUTCOME, PRODUCER, REDIS, SERVICE, SETTINGS
from tandem.api.openapi import document
from tandem.api.producer import AsyncProducer
from tandem.contracts.domain import DEVICES
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.ids import check_id, check_store
from tandem.contracts.schemas import Event, parse_event
from tandem.store.exceptions import RollbackRefused

log = logging.getLogger(__name__)

MAX_K = 200
MAX_EVENTS = 1000
EVENTS_ACK_TIMEOUT_S = 5.0


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _k(request: web.Request) -> int:
    raw = request.query.get("k", "20")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3) or not 1 <= int(raw) <= MAX_K:
        raise BadRequest(f"k must be an integer from 1 to {MAX_K}", field="k")
    return int(raw)


def _device(request: web.Request) -> str | None:
    device = request.query.get("device")
    if device is not None and device not in DEVICES:
        raise BadRequest("device must be one of " + ", ".join(sorted(DEVICES)), field="device")
    return device


async def recommendations(request: web.Request) -> web.Response:
    """GET /v1/recommendations/{user_id}?k=20&device=mobile"""
    try:
        user = check_id(request.match_info["user_id"], "user_id")
    except ValidationError as e:
        raise BadRequest(str(e), field="user_id") from e
    answer = await request.app[SERVICE].recommend(user, _k(request), _device(request))
    request[OUTCOME] = answer.outcome
    return web.Response(body=answer.body, content_type="application/json")


async def post_events(request: web.Request) -> web.Response:
    """POST /v1/events: one event object or a list of at most 1,000."""
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"body is not valid JSON: {e}", field="body") from e
    batch = payload if isinstance(payload, list) else [payload]
    if not 1 <= len(batch) <= MAX_EVENTS:
        raise BadRequest(f"send 1 to {MAX_EVENTS} events per request", field="body")
    now_ms = time.time_ns() // 1_000_000
    events = []
    for index, item in enumerate(batch):
        try:
            events.append(parse_event(item, now_ms))
        except ValidationError as e:
            raise BadRequest(f"event {index}: {e}", field=e.field, index=index) from e
    acks = await _acknowledged(request.app[PRODUCER], events)
    accepted = [e.event_id for e, ok in zip(events, acks, strict=True) if ok]
    if len(accepted) < len(events):
        unconfirmed = [e.event_id for e, ok in zip(events, acks, strict=True) if not ok]
        metrics.EVENTS.inc(len(accepted))
        raise Unavailable(
            f"{len(unconfirmed)} of {len(events)} events were not acknowledged by the broker "
            f"within {EVENTS_ACK_TIMEOUT_S:g} s; they may still arrive: send them again with the "
            "same event_id (a repeated event_id is counted once)",
            details={"accepted_event_ids": accepted, "unconfirmed_event_ids": unconfirmed},
        )
    metrics.EVENTS.inc(len(events))
    return _json({"accepted": len(events), "event_ids": accepted}, 202)


async def _acknowledged(producer: AsyncProducer, events: list[Event]) -> list[bool]:
    """Send ``events``; which of them the broker acknowledged within the answer's bound."""
    futures: list[asyncio.Future[None]] = []
    try:
        for event in events:
            futures.append(producer.send_event(event.user_id, event.to_json()))  # noqa: PERF401 - keep what was queued before a refusal
    except Unavailable as e:
        log.warning("events not queued: %s", e)
    if futures:
        await asyncio.wait(futures, timeout=EVENTS_ACK_TIMEOUT_S)
    acks = []
    for future in futures:
        if future.done():
            acks.append(future.exception() is None)
        else:  # the producer keeps it; whatever happens later is only logged
            acks.append(False)
            future.add_done_callback(_settled_late)
    return acks + [False] * (len(events) - len(futures))


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
    # A header that is not UTF-8 arrives with surrogates: it is simply a wrong token.
    offered = given[7:].encode("utf-8", "surrogateescape")
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
    body = [{"store": s.store, "live": s.live, "backup": s.backup} for s in overview]
    return _json({"stores": body})


async def store_versions(request: web.Request) -> web.Response:
    """GET /v1/stores/{store}/versions (admin)"""
    _require_admin(request)
    return _json((await request.app[ADMIN].versions(_store(request))).to_dict())


async def rollback(request: web.Request) -> web.Response:
    """POST /v1/stores/{store}/rollback (admin)"""
    _require_admin(request)
    store = _store(request)
    try:
        rolled_back, live = await request.app[ADMIN].rollback(store)
    except RollbackRefused as e:
        raise Conflict(str(e)) from e
    return _json({"store": store, "rolled_back": rolled_back, "live": live})


async def healthz(_request: web.Request) -> web.Response:
    """GET /healthz: the process is alive."""
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: Redis and the broker answer, and some store has a live version."""
    checks: dict[str, bool] = {}
    try:
        checks["redis"] = bool(await asyncio.wait_for(request.app[REDIS].ping(), 1.0))
        overview = await request.app[ADMIN].overview()
        checks["live_version"] = any(s.live is not None for s in overview)
    except (RedisError, OSError, TimeoutError):
        checks["redis"] = False
        checks["live_version"] = False
    checks["broker"] = await asyncio.to_thread(request.app[PRODUCER].broker_reachable)
    ready = all(checks.values())
    return _json({"ready": ready, "checks": checks}, 200 if ready else 503)


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json"""
    return _json(document())
