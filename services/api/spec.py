"""The OpenAPI document (/openapi.json) says what the API really accepts and answers.

FastAPI derives most of it from the routes' models; this module adds what it cannot know:

- **Errors.** Every error is npllm's one JSON shape (:class:`ErrorResponse`, OpenAI's), with
  the status codes each route can answer (:func:`errors`); under /api/ (Ollama's API) it is
  Ollama's (:class:`OllamaError`, :func:`ollama_errors`). FastAPI's default 422 is gone:
  npllm answers a body or parameter that does not validate with 400.
- **Text PostgreSQL can store.** Every string (body, query, path) carries the pattern
  :data:`STORABLE`: no NUL character (npllm/text.py; the body guard refuses it with 400).
- **Links** (OpenAPI 3 ``links``) from an answer to what it names: a completion's
  ``interaction_id`` to POST /v1/feedback, a stored memory's id to its DELETE, a dataset's
  name to its export and deletion, an adapter's name to its rollback and deletion.
  Clients (and the fuzzer, tests/e2e/test_fuzz.py) follow them to reach those routes.

Constraints that the code checks with its own messages (names, max_tokens against the
server's cap, feedback events) are stated with ``json_schema_extra`` beside the field, so
the message stays npllm's while the schema says the same thing.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from npllm import adapters
from npllm.config import Settings
from npllm.embeddings import DATABASE_DIM
from npllm.feedback import EVENTS
from npllm.replay import TIERS

# Written in the syntax JSON Schema (ECMA-262) and Python's re share.
STORABLE = "^[^\\x00]*$"
NAME = f"^{adapters.NAME.pattern}$"  # the name rule of npllm/adapters.py


class ErrorDetail(BaseModel):
    message: str = Field(description="One sentence naming what is wrong and how to fix it.")
    type: str = Field(
        description="invalid_request_error, not_found_error, server_busy, storage_error, "
        "server_error"
    )
    param: str | None = Field(description="The field or parameter at fault, if one is.")
    code: str | None = Field(description="A machine-readable reason, for some errors.")


class ErrorResponse(BaseModel):
    """Every error npllm answers, in OpenAI's shape."""

    error: ErrorDetail


class OllamaError(BaseModel):
    """Every error of Ollama's API (/api/*), in Ollama's shape."""

    error: str = Field(description="One sentence naming what is wrong and how to fix it.")


WHY = {
    400: "The request is invalid (names the parameter).",
    404: "What the request names does not exist.",
    401: "Over TCP: no API key or a wrong one (Authorization: Bearer <key>; `npllm key`).",
    403: "Over TCP: a Host or Origin that is not this machine (DNS rebinding, other sites).",
    405: "The path does not take this method (the Allow header lists those it takes).",
    415: "The body is not declared application/json (dataset imports: application/x-ndjson).",
    409: "The daemon's current state does not allow it.",
    413: "The body is larger than server.max_body_bytes (or max_import_bytes).",
    503: "Busy (every generation slot taken; Retry-After) or the database is unavailable.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer these error codes."""
    return {code: {"model": ErrorResponse, "description": WHY[code]} for code in codes}


def ollama_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The same for a route of Ollama's API (services/api/errors.py gives its errors
    Ollama's shape); it replaces the app's OpenAI-shaped 400, 405 and 503."""
    return {
        code: {"model": OllamaError, "description": WHY[code]} for code in (400, 405, 503, *codes)
    }


def jsonl(description: str) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route answering JSON Lines."""
    return {
        200: {
            "description": description,
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    }


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve the finished document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = finish(document, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def finish(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for (model, field), extra in constraints(settings).items():
        _constrain(schemas[model]["properties"][field], extra)
    for (path, method, name), extra in PARAMETERS.items():
        for parameter in document["paths"][path][method].get("parameters", []):
            if parameter["name"] == name:
                _constrain(parameter["schema"], extra)
    for operations in document["paths"].values():
        for operation in operations.values():
            # npllm answers 400 (listed on every route by create_app's `responses=`).
            operation["responses"].pop("422", None)
    # Over TCP every route needs the key; the Unix socket none (services/api/guard.py).
    document["components"]["securitySchemes"] = {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "Over TCP: the key `npllm key` shows. The Unix socket needs none.",
        }
    }
    document["security"] = [{"apiKey": []}, {}]
    _storable(document)
    _link(document)
    return document


def constraints(settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    """What the code checks with its own messages, stated in the schema: (model, field) →
    JSON Schema keywords for the field's non-null form."""
    tokens = {"minimum": 1, "maximum": settings.server.max_tokens_cap}
    return {
        ("ChatCompletionRequest", "max_tokens"): tokens,
        ("ChatCompletionRequest", "max_completion_tokens"): tokens,
        ("ChatCompletionRequest", "stop"): {"minLength": 1, "maxItems": 4},
        ("CompletionRequest", "max_tokens"): tokens,
        ("CompletionRequest", "max_completion_tokens"): tokens,
        ("CompletionRequest", "stop"): {"minLength": 1, "maxItems": 4},
        ("NpllmOptions", "adapters"): {"maxItems": 3, "items": {"type": "string", "pattern": NAME}},
        ("FeedbackIn", "event"): {"enum": list(EVENTS)},
        ("FeedbackIn", "rating"): {"minimum": -1, "maximum": 1},
        ("FeedbackIn", "text"): {"minLength": 1},
        ("PublishIn", "centroid"): {"minItems": DATABASE_DIM, "maxItems": DATABASE_DIM},
        ("PublishIn", "dataset"): {"pattern": NAME},
        ("MemoryIn", "text"): {"pattern": "^[^\\x00]*[^\\s\\x00][^\\x00]*$"},
    }


# (path, method, parameter) → JSON Schema keywords, as for constraints().
PARAMETERS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("/v1/replay/examples", "get", "tier"): {"items": {"type": "string", "enum": list(TIERS)}},
    ("/v1/adapters/{name}/versions", "post", "name"): {"pattern": NAME},
    ("/v1/adapters/{name}/rollback", "post", "name"): {"pattern": NAME},
    ("/v1/adapters/{name}/retire", "post", "name"): {"pattern": NAME},
    ("/v1/adapters/{name}", "delete", "name"): {"pattern": NAME},
    ("/v1/datasets/{name}", "post", "name"): {"pattern": NAME},
    ("/v1/datasets/{name}", "delete", "name"): {"pattern": NAME},
    ("/v1/datasets/{name}/examples", "get", "name"): {"pattern": NAME},
}


def _constrain(field: dict[str, Any], extra: dict[str, Any]) -> None:
    """Add `extra` to each non-null branch of `field` (string keywords to strings, array
    keywords to arrays, numeric ones to numbers)."""
    branches = field.get("anyOf", [field])
    for branch in branches:
        kind = branch.get("type")
        if kind in (None, "null"):
            continue
        for key, value in extra.items():
            if key in ("minLength", "pattern", "enum") and kind == "string":
                branch[key] = value
            elif key in ("minItems", "maxItems", "items") and kind == "array":
                branch[key] = value if key != "items" else {**branch.get("items", {}), **value}
            elif key in ("minimum", "maximum") and kind in ("integer", "number"):
                branch[key] = value
        if kind == "array" and "minLength" in extra:
            branch.setdefault("items", {})["minLength"] = extra["minLength"]


def _storable(node: Any) -> None:
    """Every free-text string schema says it holds no NUL."""
    if isinstance(node, dict):
        if node.get("type") == "string" and not {"pattern", "enum", "const", "format"} & set(node):
            node["pattern"] = STORABLE
        for value in node.values():
            _storable(value)
    elif isinstance(node, list):
        for value in node:
            _storable(value)


def _operation_id(document: dict[str, Any], path: str, method: str) -> str:
    return str(document["paths"][path][method]["operationId"])


# (from path, method, status) → {link name: (to path, method, parameters, requestBody)}
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str], Any]]] = {
    ("/v1/chat/completions", "post", "200"): {
        "feedback": (
            "/v1/feedback",
            "post",
            {},
            {"interaction_id": "$response.body#/npllm/interaction_id", "event": "accepted"},
        ),
    },
    ("/v1/memories", "post", "201"): {
        "delete": (
            "/v1/memories/{memory_id}",
            "delete",
            {"memory_id": "$response.body#/data/0/id"},
            None,
        ),
    },
    ("/v1/datasets/{name}", "post", "201"): {
        "export": ("/v1/datasets/{name}/examples", "get", {"name": "$request.path.name"}, None),
        "delete": ("/v1/datasets/{name}", "delete", {"name": "$request.path.name"}, None),
    },
    ("/v1/adapters/{name}/versions", "post", "201"): {
        "rollback": ("/v1/adapters/{name}/rollback", "post", {"name": "$request.path.name"}, None),
        "delete": ("/v1/adapters/{name}", "delete", {"name": "$request.path.name"}, None),
    },
}


def _link(document: dict[str, Any]) -> None:
    for (path, method, status), links in LINKS.items():
        response = document["paths"][path][method]["responses"].setdefault(
            status, {"description": "Success"}
        )
        out = response.setdefault("links", {})
        for name, (to_path, to_method, parameters, body) in links.items():
            link: dict[str, Any] = {"operationId": _operation_id(document, to_path, to_method)}
            if parameters:
                link["parameters"] = parameters
            if body is not None:
                link["requestBody"] = body
            out[name] = link
