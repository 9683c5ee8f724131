"""The OpenAPI 3.1 document, generated from the models of ``api/models.py`` (a test checks it
against the routes, and schemathesis checks the server against it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from tandem.api import models
from tandem.api.exceptions import PROBLEM_TYPES
from tandem.contracts.schemas import EventBody

JSON = "application/json"
PROBLEM = "application/problem+json"
REF = "#/components/schemas/{model}"
ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]
ID_SCHEMA = {"type": "string", "pattern": models.REQUEST_ID_PATTERN}
REQUEST_ID_HEADER = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "echoed in the response and in every log line of the request; made when absent",
    "schema": ID_SCHEMA,
}
STORE_PARAM = {
    "name": "store",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": models.STORE_PATTERN},
}
ERRORS = {
    400: "bad input: `field` (and `index` in a batch) name what failed",
    401: "no bearer token, or one that cannot be one (with a WWW-Authenticate challenge)",
    403: "wrong bearer token",
    404: "unknown, or admin endpoints off",
    409: "refused in the current state (for example, no backup to roll back to)",
    413: "body larger than 1 MiB",
    503: "a dependency is unavailable; retry after `Retry-After` seconds",
}
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    models.Recommendations,
    models.EventsAccepted,
    models.Stores,
    models.StoreVersions,
    models.RolledBack,
    models.CanaryStarted,
    models.CanaryPromoted,
    models.CanaryAborted,
    models.Health,
    models.Ready,
    models.Problem,
    models.EventsProblem,
)


@dataclass(frozen=True)
class Operation:
    """One documented route."""

    method: str
    path: str
    operation_id: str
    summary: str
    ok: tuple[int, str | None]  # status, model name (None: not JSON)
    errors: tuple[int, ...] = ()
    params: tuple[dict[str, Any], ...] = ()
    admin: bool = False
    body: dict[str, Any] | None = None
    text: str = "text/plain"  # the media type of an answer that is not JSON
    problem_models: dict[int, str] = field(default_factory=dict)


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Query parameters from a model's fields (a query has no null: an optional one is absent)."""
    params = []
    for name, prop in model.model_json_schema(ref_template=REF)["properties"].items():
        schema = {k: v for k, v in prop.items() if k not in ("title", "description")}
        options = [option for option in schema.pop("anyOf", []) if option != {"type": "null"}]
        if options:
            schema = {**options[0], **schema}
        if schema.get("default", 0) is None:
            del schema["default"]
        description = prop.get("description", "")
        params.append({"name": name, "in": "query", "description": description, "schema": schema})
    return params


def _operations() -> list[Operation]:
    user = {"name": "user_id", "in": "path", "required": True, "schema": ID_SCHEMA}
    events_body = {
        "required": True,
        "content": {JSON: {"schema": {"$ref": REF.format(model="EventsRequest")}}},
    }
    admin_errors = (401, 403, 404)
    canary_body: dict[str, Any] = {
        "required": True,
        "content": {JSON: {"schema": {"$ref": REF.format(model="CanaryRequest")}}},
    }
    return [
        Operation(
            "get", "/v1/recommendations/{user_id}", "getRecommendations",
            "Re-ranked recommendations for a user, within the deadline",
            (200, "Recommendations"), (400, 503),
            (user, *_query_params(models.RecommendationsQuery)),
        ),
        Operation(
            "post", "/v1/events", "postEvents",
            "Ingest one event or a list of up to 1,000; 202 once the broker acknowledged all",
            (202, "EventsAccepted"), (400, 413, 503), body=events_body,
            problem_models={503: "EventsProblem"},
        ),
        Operation(
            "get", "/v1/stores", "listStores", "Stores with live and backup versions",
            (200, "Stores"), (*admin_errors, 503), admin=True,
        ),
        Operation(
            "get", "/v1/stores/{store}/versions", "listStoreVersions", "Versions of a store",
            (200, "StoreVersions"), (400, *admin_errors, 503), (STORE_PARAM,), admin=True,
        ),
        Operation(
            "post", "/v1/stores/{store}/rollback", "rollbackStore",
            "Flip a store back to its backup version",
            (200, "RolledBack"), (400, *admin_errors, 409, 503), (STORE_PARAM,), admin=True,
        ),
        Operation(
            "post", "/v1/stores/{store}/canary", "startCanary",
            "Serve a validated version to a share of users beside the live one",
            (200, "CanaryStarted"), (400, *admin_errors, 409, 503), (STORE_PARAM,), admin=True,
            body=canary_body,
        ),
        Operation(
            "post", "/v1/stores/{store}/canary/promote", "promoteCanary",
            "Make the store's canary live",
            (200, "CanaryPromoted"), (400, *admin_errors, 409, 503), (STORE_PARAM,), admin=True,
        ),
        Operation(
            "post", "/v1/stores/{store}/canary/abort", "abortCanary",
            "End the store's canary without making it live",
            (200, "CanaryAborted"), (400, *admin_errors, 409, 503), (STORE_PARAM,), admin=True,
        ),
        Operation("get", "/healthz", "getHealth", "Process alive", (200, "Health")),
        Operation(
            "get", "/readyz", "getReadiness",
            "Redis and broker reachable, events accepted now, a live version known",
            (200, "Ready"), problem_models={503: "Ready"}, errors=(503,),
        ),
        Operation("get", "/metrics", "getMetrics", "Prometheus metrics", (200, None)),
        Operation("get", "/openapi.json", "getOpenApi", "This document", (200, "OpenAPI")),
    ]  # fmt: skip


def _headers(status: int) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "X-Request-ID": {"description": "the request's id", "schema": ID_SCHEMA}
    }
    if status == 503:
        headers["Retry-After"] = {
            "required": True,
            "description": "seconds",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    if status == 401:
        headers["WWW-Authenticate"] = {"required": True, "schema": {"type": "string"}}
    return headers


def _content(model: str | None, media: str = JSON) -> dict[str, Any]:
    if model is None:
        return {media: {"schema": {"type": "string"}}}
    if model == "OpenAPI":
        return {JSON: {"schema": {"type": "object"}}}
    return {media: {"schema": {"$ref": REF.format(model=model)}}}


def _path_item(op: Operation) -> dict[str, Any]:
    status, model = op.ok
    responses: dict[str, Any] = {
        str(status): {
            "description": "ok",
            "headers": _headers(status),
            "content": _content(model, op.text if model is None else JSON),
        }
    }
    for code in sorted({*op.errors, 400, 404, 405}):  # 400: a malformed X-Request-ID
        problem = op.problem_models.get(code, "Problem")
        media = JSON if problem == "Ready" else PROBLEM
        responses[str(code)] = {
            "description": ERRORS.get(code, "method not allowed" if code == 405 else "not ready"),
            "headers": _headers(code),
            "content": _content(problem, media),
        }
    item: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "parameters": [*op.params, REQUEST_ID_HEADER],
        "responses": responses,
    }
    if op.admin:
        item["security"] = ADMIN
    if op.body is not None:
        item["requestBody"] = op.body
    return item


def _schemas(extra: Sequence[tuple[type[BaseModel], JsonSchemaMode]]) -> dict[str, Any]:
    _, top = models_json_schema(
        [(m, "serialization") for m in RESPONSE_MODELS]
        + [(EventBody, "validation"), (models.CanaryRequest, "validation"), *extra],
        ref_template=REF,
    )
    schemas: dict[str, Any] = top["$defs"]
    events = TypeAdapter(models.EventsRequest).json_schema(ref_template=REF)
    schemas.update(events.pop("$defs"))
    schemas["EventsRequest"] = events
    return schemas


@cache
def document_bytes() -> bytes:
    """The document as JSON, made once."""
    return orjson.dumps(document())


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    from tandem.api import console, hidden  # their modules import this one

    paths: dict[str, Any] = {}
    for op in [*_operations(), *console.operations(), *hidden.operations()]:
        paths.setdefault(op.path, {})[op.method] = _path_item(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tandem",
            "version": "0.1.0",
            "description": (
                "Two-stage recommendation serving. Errors are RFC 7807 problem documents; "
                "version ids are strings of digits (they exceed 2^53). Problem types: "
                + ", ".join(sorted(PROBLEM_TYPES))
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas((*console.MODELS, *hidden.MODELS)),
        },
        "paths": paths,
    }
