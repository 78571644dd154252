"""Every error as JSON in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``,
or under /api/ (Ollama's API, services/api/ollama.py) in Ollama's ``{"error": "message"}``:
one handler per kind of npllm error, and none of them takes the daemon down."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from npllm.errors import (
    AdapterError,
    ConflictError,
    NotFoundError,
    QueueFull,
    RequestError,
    StorageError,
)

log = logging.getLogger("npllm.api")

# Paths of Ollama's API: their errors take Ollama's shape.
OLLAMA_PATHS = "/api/"


class ErrorJSON(JSONResponse):
    """An error in OpenAI's shape, or in Ollama's under OLLAMA_PATHS. The path decides when
    the answer is sent, so the body guard's refusals (made before any route runs) and the
    handlers' answers both take the shape of the API the client speaks."""

    def __init__(self, message: str, body: dict[str, Any], status: int, headers: Any) -> None:
        super().__init__(body, status_code=status, headers=headers)
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not scope["path"].startswith(OLLAMA_PATHS):
            await super().__call__(scope, receive, send)
            return
        kept = {
            k: v for k, v in self.headers.items() if k not in ("content-length", "content-type")
        }
        ollama = JSONResponse({"error": self.message}, status_code=self.status_code, headers=kept)
        await ollama(scope, receive, send)


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return ErrorJSON(message, body, status, headers)


def validation_message(err: dict[str, Any]) -> tuple[str, str | None]:
    """One pydantic error as a sentence naming the field, and that field (the param)."""
    if err["type"] == "json_invalid":
        return f"request body is not valid JSON: {err.get('ctx', {}).get('error', '')}", None
    loc = [str(p) for p in err["loc"] if p != "body"]
    param = ".".join(loc) or None
    got = err.get("input")
    shown = (
        f" (got {json.dumps(got, default=str)[:80]})"
        if got is not None and not isinstance(got, dict)
        else ""
    )
    return f"{param or 'body'}: {err['msg']}{shown}", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        message, param = validation_message(errors[0]) if errors else ("invalid request", None)
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem(s))"
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        # Starlette's 405 carries the Allow header (RFC 9110 requires it); keep it.
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, str(exc.detail), type_=type_, headers=headers)

    @app.exception_handler(RequestError)
    async def _request(_: Request, exc: RequestError) -> JSONResponse:
        return error_response(400, str(exc), param=exc.param)

    @app.exception_handler(AdapterError)
    async def _adapter(_: Request, exc: AdapterError) -> JSONResponse:
        return error_response(400, str(exc), param="path", code="bad_adapter")

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return error_response(404, str(exc), type_="not_found_error", param=exc.param)

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return error_response(409, str(exc), code="conflict")

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull) -> JSONResponse:
        request.app.state.service.metrics.queue_full.inc()
        return error_response(
            503,
            f"npllm is busy: {exc}; retry in a few seconds",
            type_="server_busy",
            code="queue_full",
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(StorageError)
    async def _storage(_: Request, exc: StorageError) -> JSONResponse:
        return error_response(503, str(exc), type_="storage_error")

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {exc}", type_="server_error")
