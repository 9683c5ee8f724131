"""The web console at ``/console``: a static page (plain HTML and JavaScript, shipped as package
data) and the admin JSON endpoints it reads and acts through.

Every JSON endpoint here requires the admin token (``Authorization: Bearer``), as the other
admin endpoints do: they expose versions, consumer groups and users' session signals, or act.
Version ids are strings in JSON (JavaScript numbers lose digits above 2^53).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import orjson
import pydantic
from aiohttp import web
from confluent_kafka import Producer
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import JsonSchemaMode

from tandem.api import metrics, openapi
from tandem.api.exceptions import BadRequest, Conflict, NotFound
from tandem.api.explain import Explanation, Models, explain
from tandem.api.handlers import _device, _k, _require_admin, _store
from tandem.api.keys import ADMIN, PRODUCER, REDIS, SERVICE, SETTINGS
from tandem.api.lag import DEFAULT_GROUPS, GroupLag, LagReader
from tandem.api.latency import Latency, LiveWindow
from tandem.api.models import VersionId, version_id
from tandem.contracts.domain import Device
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.ids import check_id, check_version
from tandem.contracts.versions import State, announce
from tandem.store.admin import VersionNotFound
from tandem.store.exceptions import PromoteConflict, StoreError
from tandem.store.keys import Keys
from tandem.store.online import OnlineReader
from tandem.store.registry import VersionInfo, now_ms

STATIC_DIR = Path(__file__).parent / "console_static"
ASSETS = {"console.js": "application/javascript", "console.css": "text/css"}  # name: type
# States a version may be made live from by hand: those that passed the gates and were live
# before. Not an ingested version: the registry does not record whether it was gated (the
# materializer skips the gates of a version older than the live one), so it goes live through
# the materializer's gates. Rejected, aborted, retired and unfinished versions never can.
CUTOVER_FROM = frozenset({State.BACKUP, State.SUPERSEDED, State.ROLLED_BACK})
GATES_PASSED = frozenset({State.LIVE, State.BACKUP, State.SUPERSEDED, State.ROLLED_BACK})
GATES_FAILED = frozenset({State.REJECTED, State.ABORTED})
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# -- JSON shapes ------------------------------------------------------------------------------


class Model(BaseModel):
    """The JSON models of the console's endpoints (frozen, no extra fields)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Gates(Model):
    """A version's quality-gate result: ``passed`` None while undecided (or unknown)."""

    passed: bool | None
    reasons: list[str]
    metrics: dict[str, float]


class VersionRow(Model):
    """One version as the registry records it."""

    version: str
    state: str
    count: int
    checksum: str | None
    partitions: int
    created_ms: int
    updated_ms: int
    age_s: float
    gates: Gates
    can_cutover: bool


class StoreView(Model):
    """One store: its pointers and every recorded version, newest first."""

    store: str
    live: str | None
    backup: str | None
    versions: list[VersionRow]


class Overview(Model):
    """GET /v1/admin/overview"""

    now_ms: int
    stores: list[StoreView]
    lag: list[GroupLag]
    latency: Latency


class CutoverIn(Model):
    """POST /v1/admin/stores/{store}/cutover body."""

    version: VersionId


class CutoverOut(Model):
    """POST /v1/admin/stores/{store}/cutover answer."""

    store: str
    live: str
    previous: str | None


MODELS: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
    (Overview, "serialization"),
    (CutoverIn, "validation"),
    (CutoverOut, "serialization"),
    (Explanation, "serialization"),
)


def operations() -> list[openapi.Operation]:
    """The console's routes for the OpenAPI document (their schemas come from MODELS)."""
    Op = openapi.Operation
    query = (
        {"name": "user", "in": "query", "required": True, "schema": openapi.ID_SCHEMA},
        {"name": "k", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
        {"name": "device", "in": "query", "schema": {"enum": sorted(Device)}},
    )
    cutover = {
        "required": True,
        "content": {openapi.JSON: {"schema": {"$ref": openapi.REF.format(model="CutoverIn")}}},
    }
    admin = (401, 403, 404, 503)
    return [
        Op("get", "/console", "consolePage", "The web console", (200, None), text="text/html"),
        *(
            Op("get", f"/console/{name}", f"console{name.split('.')[1].title()}",
               f"The console's {'script' if name.endswith('js') else 'style sheet'}",
               (200, None), text=media)
            for name, media in sorted(ASSETS.items())
        ),
        Op(
            "get", "/v1/admin/overview", "adminOverview",
            "Versions of every store, consumer lag, live latency and degraded share",
            (200, "Overview"), admin, admin=True,
        ),
        Op(
            "post", "/v1/admin/stores/{store}/cutover", "adminCutover",
            "Make a verified version of a store live (announced on tandem.versions)",
            (200, "CutoverOut"), (400, *admin, 409), (openapi.STORE_PARAM,), admin=True,
            body=cutover,
        ),
        Op(
            "get", "/v1/admin/explain", "adminExplain",
            "Why these items: candidates, sources, session signals, feature contributions",
            (200, "Explanation"), (400, *admin), query, admin=True,
        ),
    ]  # fmt: skip


# -- state ------------------------------------------------------------------------------------


@dataclass
class ConsoleState:
    """What the console keeps between requests; ``groups`` are the consumer groups whose lag
    it shows (role -> group id)."""

    groups: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_GROUPS))
    window: LiveWindow = field(default_factory=lambda: LiveWindow(metrics.REQUESTS))
    models: Models = field(default_factory=Models)
    lags: LagReader | None = None
    reader: OnlineReader | None = None


CONSOLE = web.AppKey("console", ConsoleState)


def _json(model: BaseModel) -> web.Response:
    return web.Response(
        body=orjson.dumps(model.model_dump(mode="json")),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


# -- the page ---------------------------------------------------------------------------------


async def page(_request: web.Request) -> web.FileResponse:
    """GET /console: the page (it holds no data: everything it shows needs the token)."""
    return web.FileResponse(STATIC_DIR / "index.html", headers=SECURITY_HEADERS)


async def asset(request: web.Request) -> web.FileResponse:
    """GET /console/console.js and /console/console.css: the page's script and style sheet."""
    name = request.path.rsplit("/", 1)[-1]
    if name not in ASSETS:
        raise NotFound(f"no console file {name!r}")
    headers = {**SECURITY_HEADERS, "Content-Type": ASSETS[name]}
    return web.FileResponse(STATIC_DIR / name, headers=headers)


# -- overview ---------------------------------------------------------------------------------


def gates_of(info: VersionInfo) -> Gates:
    """The gate result a version's state and record tell."""
    passed = True if info.state in GATES_PASSED else False if info.state in GATES_FAILED else None
    raw = info.metadata.get("metrics")
    found = raw if isinstance(raw, dict) else {}
    numbers = {
        str(k): float(v)
        for k, v in found.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return Gates(passed=passed, reasons=list(info.reasons), metrics=numbers)


def version_row(info: VersionInfo, live: int | None, at_ms: int) -> VersionRow:
    """One registry record as the console shows it."""
    return VersionRow(
        version=str(info.version),
        state=info.state.value,
        count=info.count,
        checksum=info.checksum,
        partitions=info.partitions,
        created_ms=info.created_ms,
        updated_ms=info.updated_ms,
        age_s=round(max(0, at_ms - info.created_ms) / 1000, 1),
        gates=gates_of(info),
        can_cutover=info.state in CUTOVER_FROM and info.version != live,
    )


async def _stores(request: web.Request, at_ms: int) -> list[StoreView]:
    views = []
    for store in sorted(request.app[SETTINGS].stores):
        found = await request.app[ADMIN].versions(store)
        views.append(
            StoreView(
                store=store,
                live=version_id(found.live),
                backup=version_id(found.backup),
                versions=[version_row(i, found.live, at_ms) for i in reversed(found.versions)],
            )
        )
    return views


async def _lags(state: ConsoleState) -> list[GroupLag]:
    """Every group's lag, read side by side (each bounded by the reader's timeout)."""
    reader = state.lags
    if reader is None:
        return [
            GroupLag(role=r, group=g, lag=None, error="not started")
            for r, g in state.groups.items()
        ]
    reads = (asyncio.to_thread(reader.lag, role, group) for role, group in state.groups.items())
    return list(await asyncio.gather(*reads))


async def overview(request: web.Request) -> web.Response:
    """GET /v1/admin/overview: versions of every store, consumer lag, live latency (admin)."""
    _require_admin(request)
    state = request.app[CONSOLE]
    at_ms = now_ms()
    lags, stores = await asyncio.gather(_lags(state), _stores(request, at_ms))
    body = Overview(now_ms=at_ms, stores=stores, lag=lags, latency=state.window.read())
    return _json(body)


# -- actions ----------------------------------------------------------------------------------


async def _cutover_body(request: web.Request) -> int:
    try:
        body = CutoverIn.model_validate_json(await request.read())
        return check_version(body.version)
    except pydantic.ValidationError as e:
        raise BadRequest('send {"version": "<id>"}', field="version") from e
    except ValidationError as e:
        raise BadRequest(str(e), field="version") from e


async def cutover(request: web.Request) -> web.Response:
    """POST /v1/admin/stores/{store}/cutover: make a verified version live (admin); announced
    on tandem.versions like every cutover."""
    _require_admin(request)
    store = _store(request)
    version = await _cutover_body(request)
    admin = request.app[ADMIN]
    try:
        info = await admin.show(store, version)
    except VersionNotFound as e:
        raise NotFound(str(e), field="version") from e
    if info.state not in CUTOVER_FROM:
        allowed = ", ".join(sorted(s.value for s in CUTOVER_FROM))
        raise Conflict(f"{store} v{version} is {info.state.value}; only {allowed} can go live")
    try:
        previous = await admin.lifecycle.promote(
            store, version, expected=await admin.lifecycle.live(store)
        )
    except PromoteConflict as e:
        raise Conflict(f"{e}; reload and try again") from e
    except StoreError as e:  # not materialized any more
        raise Conflict(str(e)) from e
    announcer = cast(Producer, request.app[PRODUCER].announcer)
    announce(announcer, store, version, State.LIVE, cutover_from=previous, by="console")
    announcer.poll(0)
    return _json(CutoverOut(store=store, live=str(version), previous=version_id(previous)))


# -- why these items? -------------------------------------------------------------------------


def _user(request: web.Request) -> str:
    try:
        return check_id(request.query.get("user"), "user")
    except ValidationError as e:
        raise BadRequest(str(e), field="user") from e


async def explanation(request: web.Request) -> web.Response:
    """GET /v1/admin/explain?user=&k=&device=: how the answer to a user is made (admin)."""
    _require_admin(request)
    user, k, device = _user(request), _k(request), _device(request)
    state = request.app[CONSOLE]
    if state.reader is None:
        raise NotFound("the console is not started")
    rules = request.app[SERVICE].rules
    return _json(await explain(state.reader, state.models, rules, user, k, device))


# -- wiring -----------------------------------------------------------------------------------


async def _clients(app: web.Application) -> AsyncIterator[None]:
    state = app[CONSOLE]
    lags = state.lags = LagReader(app[SETTINGS])
    state.reader = OnlineReader(app[REDIS], Keys(app[SETTINGS].key_prefix))
    yield
    state.lags, state.reader = None, None
    await asyncio.to_thread(lags.close)


def register(app: web.Application) -> None:
    """Add the console's page and endpoints to ``app`` (after its own clients are opened)."""
    app[CONSOLE] = ConsoleState()
    app.cleanup_ctx.append(_clients)
    app.router.add_get("/console", page)
    for name in sorted(ASSETS):
        app.router.add_get(f"/console/{name}", asset)
    app.router.add_get("/v1/admin/overview", overview)
    app.router.add_post("/v1/admin/stores/{store}/cutover", cutover)
    app.router.add_get("/v1/admin/explain", explanation)
