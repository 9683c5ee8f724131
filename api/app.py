"""The aiohttp application: routes, error and metric middleware, resources in cleanup_ctx."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import orjson
from aiohttp import web
from confluent_kafka import KafkaException, Producer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from redis.exceptions import RedisError

from tandem.api import console, handlers, hidden, metrics, models
from tandem.api.exceptions import ApiError, BadRequest, Unavailable
from tandem.api.impressions import ImpressionLog
from tandem.api.keys import ADMIN, HIDDEN, OUTCOME, PRODUCER, REDIS, SERVICE, SETTINGS
from tandem.api.producer import AsyncProducer
from tandem.api.service import Budget, RecommendationService
from tandem.contracts.logctx import REQUEST_ID
from tandem.contracts.settings import Settings
from tandem.store.admin import VersionAdmin
from tandem.store.connect import connect
from tandem.store.hidden import HiddenItems
from tandem.store.keys import Keys
from tandem.store.online import OnlineReader

log = logging.getLogger(__name__)
access = logging.getLogger("tandem.access")

MAX_BODY_BYTES = 1 << 20
MIN_GZIP_BYTES = 1024
PROBLEM_JSON = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(models.REQUEST_ID_PATTERN)
CORS_ALLOWED_HEADERS = "Authorization, Content-Type, X-Request-ID"
CORS_EXPOSED_HEADERS = "X-Request-ID, Retry-After, WWW-Authenticate"
CORS_MAX_AGE_S = 600
HIDDEN_REFRESH_S = 0.5  # how stale the hidden items may be in a process no request reaches

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def contract(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer: an ``X-Request-ID`` (the client's, or a new one) set for the request's log
    lines, errors as RFC 7807 problems, CORS for the configured origins, gzip when asked, a
    latency metric by route and outcome, and one ``tandem.access`` line."""
    started = time.perf_counter()
    given = request.headers.get(REQUEST_ID_HEADER)
    valid = given is not None and _REQUEST_ID_RE.fullmatch(given) is not None
    request_id = given if valid and given is not None else secrets.token_hex(16)
    token = REQUEST_ID.set(request_id)
    status, outcome = 500, "error"
    response: web.StreamResponse
    try:
        if given is not None and not valid:
            error = BadRequest(
                f"{REQUEST_ID_HEADER} must be 1-{models.REQUEST_ID_MAX_LEN} characters of "
                "A-Z a-z 0-9 . _ : @ -",
                field=REQUEST_ID_HEADER,
            )
            response, outcome = _problem(error), "400"
        else:
            response, outcome = await _answer(request, handler)
        status = response.status
        _finish(request, response, request_id)
        return response
    except asyncio.CancelledError:
        status, outcome = 499, "cancelled"  # the client went away
        raise
    finally:
        elapsed_s = time.perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics.REQUESTS.labels(route, outcome).observe(elapsed_s)
        if access.isEnabledFor(logging.INFO):
            _log_access(request, status, elapsed_s, request_id)
        REQUEST_ID.reset(token)


def _log_access(request: web.Request, status: int, elapsed_s: float, request_id: str) -> None:
    # The path as sent (still percent-encoded): a decoded %0A could forge a text log line.
    path = request.rel_url.raw_path
    duration_ms = round(elapsed_s * 1000, 3)
    access.info(
        "%s %s %d %.1fms %s",
        request.method,
        path,
        status,
        duration_ms,
        request_id,
        extra={
            "method": request.method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
        },
    )


async def _answer(request: web.Request, handler: Handler) -> tuple[web.StreamResponse, str]:
    """The handler's answer and its outcome label; any error becomes a problem document. An
    answer from a bug is a 500 counted as ``outcome="error"``."""
    try:
        preflight = _preflight(request)
        if preflight is not None:
            return preflight, "ok"
        response = await handler(request)
        return response, request.get(OUTCOME, "ok")
    except (RedisError, OSError) as e:  # Redis went away under an endpoint without a fallback
        error: ApiError = Unavailable(f"Redis is unreachable ({type(e).__name__}); retry shortly")
        return _problem(error), str(error.status)
    except KafkaException as e:  # the broker refused a lifecycle record (admin endpoints)
        error = Unavailable(f"the broker did not take a record ({e}); retry shortly")
        return _problem(error), str(error.status)
    except ApiError as e:
        return _problem(e), "error" if e.status >= 500 and not e.retriable else str(e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _http_problem(e), "error" if e.status >= 500 else str(e.status)
    except Exception:
        log.exception("%s %s failed", request.method, request.rel_url.raw_path)
        return _problem(ApiError("internal error; see the server log")), "error"


def _problem(error: ApiError) -> web.Response:
    return web.Response(
        body=orjson.dumps({**error.problem(), "request_id": REQUEST_ID.get()}),
        status=error.status,
        content_type=PROBLEM_JSON,
        headers=error.headers or None,
    )


def _http_problem(e: web.HTTPException) -> web.Response:
    """aiohttp's own errors (no route, wrong method, body too large) as problem documents,
    keeping their headers (``Allow`` of a 405)."""
    body = {
        "type": "about:blank",
        "title": e.reason,
        "status": e.status,
        "detail": e.text if e.text and e.text != f"{e.status}: {e.reason}" else e.reason,
        "request_id": REQUEST_ID.get(),
    }
    headers = {k: v for k, v in e.headers.items() if k not in ("Content-Type", "Content-Length")}
    if e.status == 503:
        headers.setdefault("Retry-After", "1")
    return web.Response(
        body=orjson.dumps(body), status=e.status, content_type=PROBLEM_JSON, headers=headers
    )


def _finish(request: web.Request, response: web.StreamResponse, request_id: str) -> None:
    """Headers every answer carries, and gzip when the client asks for it."""
    response.headers[REQUEST_ID_HEADER] = request_id
    origin = request.headers.get("Origin")
    if origin is not None and _origin_allowed(request, origin):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")
    if isinstance(response, web.Response) and not response.prepared:
        body = response.body
        if isinstance(body, bytes) and len(body) >= MIN_GZIP_BYTES:
            response.headers.add("Vary", "Accept-Encoding")
            if _accepts_gzip(request.headers.get("Accept-Encoding")):
                response.enable_compression(web.ContentCoding.gzip)


def _accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (by name or ``*``, with q > 0)."""
    if not header:
        return False
    for part in header.lower().split(","):
        name, _, params = part.partition(";")
        if name.strip() in ("gzip", "*"):
            q = params.strip()
            return not q.startswith("q=") or _quality(q[2:]) > 0
    return False


def _quality(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _origin_allowed(request: web.Request, origin: str) -> bool:
    allowed = request.app[SETTINGS].cors_origins
    return origin in allowed or "*" in allowed


def _preflight(request: web.Request) -> web.Response | None:
    """The answer to a CORS preflight from an allowed origin for a method the path has; None
    for anything else (the router answers it, a 405 for OPTIONS)."""
    if request.method != "OPTIONS":
        return None
    origin = request.headers.get("Origin")
    wanted = request.headers.get("Access-Control-Request-Method")
    failed = request.match_info.http_exception
    if origin is None or wanted is None or not isinstance(failed, web.HTTPMethodNotAllowed):
        return None
    if wanted not in failed.allowed_methods or not _origin_allowed(request, origin):
        return None
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": ", ".join(sorted(failed.allowed_methods)),
            "Access-Control-Allow-Headers": CORS_ALLOWED_HEADERS,
            "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
        },
    )


async def prometheus(_request: web.Request) -> web.Response:
    """GET /metrics: this process's metrics, or every API process's under ``serve --workers``."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(metrics.REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _clients(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    redis = connect(settings, timeout_s=settings.redis_timeout_s)
    keys = Keys(settings.key_prefix)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rerank")
    budget = Budget(
        settings.api_deadline_ms, settings.api_redis_timeout_ms, settings.api_cache_ttl_s
    )
    app[REDIS] = redis
    app[HIDDEN] = HiddenItems(redis, keys)
    app[SERVICE] = RecommendationService(
        OnlineReader(redis, keys),
        budget,
        executor,
        seen_types=settings.excluded_types(),
        hidden_items=app[HIDDEN],
    )
    app[PRODUCER] = AsyncProducer(settings, asyncio.get_running_loop())
    impressions = ImpressionLog(
        app[PRODUCER], settings.impressions_sample, settings.impressions_buffer
    )
    if settings.impressions_sample > 0:
        impressions.start()
        app[SERVICE].impressions = impressions
    # Lifecycle records go through the current producer, whichever that is after a recreation.
    app[ADMIN] = VersionAdmin(settings, redis, cast(Producer, app[PRODUCER].announcer))
    stop_refresh = asyncio.Event()
    refresher = asyncio.ensure_future(app[SERVICE].refresh_hidden(HIDDEN_REFRESH_S, stop_refresh))
    yield
    stop_refresh.set()
    await refresher
    await app[SERVICE].drain()
    await impressions.close()
    await asyncio.to_thread(app[PRODUCER].close)
    executor.shutdown(wait=False, cancel_futures=True)
    await redis.aclose()


def create_app(settings: Settings) -> web.Application:
    """The API with its routes; clients are opened when it starts."""
    app = web.Application(middlewares=[contract], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_clients)
    app.router.add_get("/v1/recommendations/{user_id}", handlers.recommendations)
    app.router.add_post("/v1/events", handlers.post_events)
    app.router.add_get("/v1/stores", handlers.stores)
    app.router.add_get("/v1/stores/{store}/versions", handlers.store_versions)
    app.router.add_post("/v1/stores/{store}/rollback", handlers.rollback)
    app.router.add_post("/v1/stores/{store}/canary", handlers.start_canary)
    app.router.add_post("/v1/stores/{store}/canary/promote", handlers.promote_canary)
    app.router.add_post("/v1/stores/{store}/canary/abort", handlers.abort_canary)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/openapi.json", handlers.openapi)
    console.register(app)
    hidden.register(app)
    return app
