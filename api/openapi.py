"""The OpenAPI 3 document of every endpoint (a test checks it against the routes)."""

from __future__ import annotations

from typing import Any

from tandem.contracts.domain import DEVICES, EVENT_TYPES

JSON = "application/json"
ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]


def _response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"type": "object"}}}}


def _error_responses(*codes: int) -> dict[str, Any]:
    text = {
        400: "bad input; `field` (and `index`) name what",
        401: "no or unreadable bearer token (with a WWW-Authenticate challenge)",
        403: "wrong bearer token",
        404: "unknown, or admin endpoints off",
        409: "refused (for example, no backup to roll back to)",
        503: "a dependency is unavailable; retry",
    }
    return {str(code): _response(text[code]) for code in codes}


EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["user_id", "item_id", "event_type"],
    "additionalProperties": False,
    "properties": {
        "user_id": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"},
        "item_id": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"},
        "event_type": {"enum": sorted(EVENT_TYPES)},
        "ts": {"oneOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}]},
        "event_id": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"},
        "device": {"enum": sorted(DEVICES)},
        "session_id": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"},
        "context": {"type": "object", "maxProperties": 16},
    },
}


def _admin_path(summary: str, method: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        method: {
            "summary": summary,
            "security": ADMIN,
            "parameters": params,
            "responses": {"200": _response("ok"), **_error_responses(401, 403, 404, 409)},
        }
    }


STORE_PARAM = {
    "name": "store",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"},
}


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    from tandem.api.console import openapi_paths  # the console's module imports this one

    found = _document()
    paths, schemas = openapi_paths()
    found["paths"].update(paths)
    found["components"]["schemas"].update(schemas)
    return found


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tandem",
            "version": "0.1.0",
            "description": "Two-stage recommendation serving.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Event": EVENT_SCHEMA},
        },
        "paths": {
            "/v1/recommendations/{user_id}": {
                "get": {
                    "summary": "Re-ranked recommendations for a user, within the deadline",
                    "parameters": [
                        {
                            "name": "user_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"},
                        },
                        {
                            "name": "k",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 200,
                                "default": 20,
                            },
                        },
                        {
                            "name": "device",
                            "in": "query",
                            "schema": {"enum": sorted(DEVICES)},
                        },
                    ],
                    "responses": {
                        "200": _response(
                            "items with scores and sources, versions used, "
                            "cached, degraded, took_ms"
                        ),
                        **_error_responses(400, 503),
                    },
                }
            },
            "/v1/events": {
                "post": {
                    "summary": "Ingest one event or a list of up to 1,000",
                    "requestBody": {
                        "required": True,
                        "content": {
                            JSON: {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Event"},
                                        {
                                            "type": "array",
                                            "maxItems": 1000,
                                            "items": {"$ref": "#/components/schemas/Event"},
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _response("every event acknowledged by the broker"),
                        **_error_responses(400, 503),
                    },
                }
            },
            "/v1/stores": _admin_path("Stores with live and backup versions", "get", []),
            "/v1/stores/{store}/versions": _admin_path("Versions of a store", "get", [STORE_PARAM]),
            "/v1/stores/{store}/rollback": _admin_path(
                "Flip a store back to its backup", "post", [STORE_PARAM]
            ),
            "/healthz": {
                "get": {"summary": "Process alive", "responses": {"200": _response("ok")}}
            },
            "/readyz": {
                "get": {
                    "summary": (
                        "Redis and broker reachable, events accepted now (producer usable, "
                        "every events partition led), a live version known"
                    ),
                    "responses": {"200": _response("ready"), "503": _response("not ready")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition"}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _response("OpenAPI 3")}}
            },
        },
    }
