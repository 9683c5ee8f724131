"""The aiohttp application: routes, error and metric middleware, resources in cleanup_ctx."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import orjson
from aiohttp import web
from confluent_kafka import KafkaException, Producer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from redis.exceptions import RedisError

from tandem.api import handlers, metrics
from tandem.api.exceptions import ApiError, Unavailable
from tandem.api.keys import ADMIN, OUTCOME, PRODUCER, REDIS, SERVICE, SETTINGS
from tandem.api.producer import AsyncProducer
from tandem.api.service import Budget, RecommendationService
from tandem.contracts.settings import Settings
from tandem.store.admin import VersionAdmin
from tandem.store.connect import connect
from tandem.store.keys import Keys
from tandem.store.online import OnlineReader

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer tandem errors as JSON with their status; time every request by route. An answer
    from a bug is a JSON 500 counted as ``outcome="error"``."""
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    outcome = "ok"
    try:
        response = await handler(request)
        outcome = request.get(OUTCOME, "ok")
        return response
    except (RedisError, OSError) as e:  # Redis went away under an endpoint without a fallback
        error: ApiError = Unavailable(f"Redis is unreachable ({type(e).__name__}); retry shortly")
        outcome = str(error.status)
        return _problem(error)
    except KafkaException as e:  # the broker refused a lifecycle record (admin endpoints)
        error = Unavailable(f"the broker did not take a record ({e}); retry shortly")
        outcome = str(error.status)
        return _problem(error)
    except ApiError as e:
        outcome = "error" if e.status >= 500 and not e.retriable else str(e.status)
        return _problem(e)
    except web.HTTPException as e:
        outcome = "error" if e.status == 500 else str(e.status)
        raise
    except asyncio.CancelledError:
        outcome = "cancelled"  # the client went away
        raise
    except Exception:
        outcome = "error"
        log.exception("%s %s failed", request.method, request.path)
        return _problem(ApiError("internal error; see the server log"))
    except BaseException:
        outcome = "error"
        raise
    finally:
        metrics.REQUESTS.labels(route, outcome).observe(time.perf_counter() - started)


def _problem(error: ApiError) -> web.Response:
    body = {"error": str(error), "field": error.field, "index": error.index, **error.details}
    return web.Response(
        body=orjson.dumps(body),
        status=error.status,
        content_type="application/json",
        headers=error.headers or None,
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
    app[SERVICE] = RecommendationService(OnlineReader(redis, keys), budget, executor)
    app[PRODUCER] = AsyncProducer(settings, asyncio.get_running_loop())
    # Lifecycle records go through the current producer, whichever that is after a recreation.
    app[ADMIN] = VersionAdmin(settings, redis, cast(Producer, app[PRODUCER].announcer))
    yield
    await app[SERVICE].drain()
    await asyncio.to_thread(app[PRODUCER].close)
    executor.shutdown(wait=False, cancel_futures=True)
    await redis.aclose()


def create_app(settings: Settings) -> web.Application:
    """The API with its routes; clients are opened when it starts."""
    app = web.Application(middlewares=[errors_and_metrics], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_clients)
    app.router.add_get("/v1/recommendations/{user_id}", handlers.recommendations)
    app.router.add_post("/v1/events", handlers.post_events)
    app.router.add_get("/v1/stores", handlers.stores)
    app.router.add_get("/v1/stores/{store}/versions", handlers.store_versions)
    app.router.add_post("/v1/stores/{store}/rollback", handlers.rollback)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/openapi.json", handlers.openapi)
    return app
