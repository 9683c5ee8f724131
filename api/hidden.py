"""Hiding items: an operator hides an item from every answer (admin), a user hides one for
themself. Both take effect from the next request of every API process (see api/rules.py)."""

from __future__ import annotations

import orjson
from aiohttp import web
from pydantic import BaseModel, Field
from pydantic.json_schema import JsonSchemaMode

from tandem.api import openapi
from tandem.api.exceptions import BadRequest, Conflict
from tandem.api.handlers import _require_admin
from tandem.api.keys import HIDDEN
from tandem.api.models import Model
from tandem.contracts.exceptions import ValidationError
from tandem.contracts.ids import check_id
from tandem.store.hidden import HiddenFull


class HiddenChange(Model):
    """An item's hidden state after the request."""

    item_id: str
    hidden: bool
    changed: bool = Field(description="false when the item already was in that state")


class UserHiddenChange(HiddenChange):
    """An item's hidden state for one user after the request."""

    user_id: str


class HiddenList(Model):
    """Every item hidden from all answers."""

    items: list[str]
    count: int


MODELS: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
    (HiddenChange, "serialization"),
    (UserHiddenChange, "serialization"),
    (HiddenList, "serialization"),
)


def _id(request: web.Request, name: str) -> str:
    try:
        return check_id(request.match_info[name], name)
    except ValidationError as e:
        raise BadRequest(str(e), field=name) from e


def _answer(body: dict[str, object]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _change(request: web.Request, user: str | None) -> web.Response:
    item = _id(request, "item_id")
    hidden = request.method == "PUT"
    store = request.app[HIDDEN]
    try:
        if user is None:
            changed = await store.hide(item, hidden=hidden)
        else:
            changed = await store.hide_for_user(user, item, hidden=hidden)
    except HiddenFull as e:
        raise Conflict(str(e)) from e
    body: dict[str, object] = {"item_id": item, "hidden": hidden, "changed": changed}
    return _answer(body if user is None else {**body, "user_id": user})


async def change_hidden(request: web.Request) -> web.Response:
    """PUT or DELETE /v1/admin/hidden/{item_id} (admin): hide an item from every answer."""
    _require_admin(request)
    return await _change(request, None)


async def list_hidden(request: web.Request) -> web.Response:
    """GET /v1/admin/hidden (admin)"""
    _require_admin(request)
    items = sorted(await request.app[HIDDEN].items())
    return _answer({"items": items, "count": len(items)})


async def change_user_hidden(request: web.Request) -> web.Response:
    """PUT or DELETE /v1/users/{user_id}/hidden/{item_id}: a user hides an item for themself."""
    return await _change(request, _id(request, "user_id"))


def register(app: web.Application) -> None:
    """Add the routes (the store of hidden items is opened with the app's clients)."""
    admin_item, user_item = "/v1/admin/hidden/{item_id}", "/v1/users/{user_id}/hidden/{item_id}"
    for method in ("PUT", "DELETE"):
        app.router.add_route(method, admin_item, change_hidden)
        app.router.add_route(method, user_item, change_user_hidden)
    app.router.add_get("/v1/admin/hidden", list_hidden)


def operations() -> list[openapi.Operation]:
    """The routes for the OpenAPI document (their schemas come from MODELS)."""
    Op = openapi.Operation
    item = {"name": "item_id", "in": "path", "required": True, "schema": openapi.ID_SCHEMA}
    user = {"name": "user_id", "in": "path", "required": True, "schema": openapi.ID_SCHEMA}
    admin = (400, 401, 403, 404, 503)
    return [
        Op("get", "/v1/admin/hidden", "listHiddenItems", "Items hidden from every answer",
           (200, "HiddenList"), admin[1:], admin=True),
        Op("put", "/v1/admin/hidden/{item_id}", "hideItem",
           "Hide an item from every answer (within a second, cached answers included)",
           (200, "HiddenChange"), (*admin, 409), (item,), admin=True),
        Op("delete", "/v1/admin/hidden/{item_id}", "unhideItem", "Recommend a hidden item again",
           (200, "HiddenChange"), admin, (item,), admin=True),
        Op("put", "/v1/users/{user_id}/hidden/{item_id}", "hideItemForUser",
           "A user hides an item: it is never recommended to them again",
           (200, "UserHiddenChange"), (400, 409, 503), (user, item)),
        Op("delete", "/v1/users/{user_id}/hidden/{item_id}", "unhideItemForUser",
           "A user takes back the hide of an item", (200, "UserHiddenChange"), (400, 503),
           (user, item)),
    ]  # fmt: skip
