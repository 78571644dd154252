"""The ASGI middleware in front of every route: the body guard and the request log."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from npllm.text import NUL, NUL_MESSAGE, shown, unstorable
from services.api.errors import error_response

log = logging.getLogger("npllm.api")


# What may decode to something the database cannot store: \u0000, a surrogate escape
# (lone ones are refused; pairs decode to one character and pass), NaN and ±Infinity.
SUSPICIOUS = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]|NaN|Infinity")


def unstorable_request(scope: Scope, body: bytes) -> JSONResponse | None:
    """A 400 naming the first field the database could not store (npllm/text.py): a NUL
    in a string of the path, the query or the JSON body, or a NaN/Infinity in the body.
    Dataset bodies (JSON Lines) are checked per line by their import instead."""
    problem = unstorable(scope["path"], "path")
    query = scope.get("query_string", b"")
    if problem is None and b"%00" in query:
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if NUL in key or NUL in value:
                problem = (shown(key), NUL_MESSAGE)
                break
    if (
        problem is None
        and body
        and not scope["path"].startswith("/v1/datasets/")
        and SUSPICIOUS.search(body)
    ):
        try:
            problem = unstorable(json.loads(body))
        except ValueError:
            problem = None  # not JSON: the route's own validation says so
    if problem is None:
        return None
    where, what = problem
    return error_response(400, f"{where} {what}", param=where, code="unstorable_value")


JSON_TYPES = ("application/json",)
LINES_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines")


def wrong_content_type(scope: Scope) -> JSONResponse | None:
    """A 415 unless the body is declared as what the route reads: JSON (a dataset import:
    JSON Lines). Checked, never rewritten: a browser may send text/plain and form bodies to
    any site without asking first, so a body that is not declared JSON is refused before
    it is read; so is a body with no type at all, which a page may send as freely (FastAPI's
    strict_content_type). An empty body needs none: POST /v1/sleep, rollbacks."""
    headers = scope.get("headers") or []
    declared = next((v for k, v in headers if k == b"content-type"), None)
    if declared is None:
        length = next((v for k, v in headers if k == b"content-length"), b"0")
        chunked = any(k == b"transfer-encoding" for k, _ in headers)
        if length.strip() in (b"", b"0") and not chunked:
            return None  # no body, nothing to declare
    mime = (declared or b"").decode("latin-1").split(";", 1)[0].strip().lower()
    accepted: tuple[str, ...] = JSON_TYPES
    if scope["path"].startswith("/v1/datasets/"):
        accepted = (*LINES_TYPES, *JSON_TYPES)
    if mime in accepted or (mime.startswith("application/") and mime.endswith("+json")):
        return None
    shown_type = f"Content-Type {mime}" if mime else "a body without a Content-Type"
    return error_response(
        415,
        f"{shown_type} is not accepted here: send {' or '.join(accepted)} "
        "(curl: --json DATA, or -H 'Content-Type: application/json' -d DATA)",
        param="Content-Type",
        code="unsupported_media_type",
    )


class BodyGuard:
    """ASGI middleware: refuse bodies not declared JSON (415), over the size limit (413),
    JSON that is not UTF-8 (400) and values the database cannot store (400, npllm/text.py)
    before they reach a route, and log one JSON line per request with its timings."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        max_import_bytes: int,
        observe: Callable[[str, str, int, float], None] | None = None,
    ) -> None:
        self.app = app
        self.observe = observe  # services/metrics.py: Metrics.observe_request
        self.max_bytes = max_bytes
        self.max_import_bytes = max_import_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope.setdefault("state", {})
        status = {"code": 0}

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self._log(scope, status["code"], started)
                if self.observe is not None:
                    # The route's template (/v1/adapters/{name}), never the raw path: one
                    # series per route, whatever names are asked for.
                    route = getattr(scope.get("route"), "path", None) or "unmatched"
                    seconds = time.perf_counter() - started
                    self.observe(route, scope["method"], status["code"], seconds)

        refusal = None
        body = b""
        if scope["method"] in ("POST", "PUT", "PATCH"):
            refusal = wrong_content_type(scope)
            if refusal is None:
                body, refusal = await self._read(scope, receive)
        if refusal is None:
            refusal = unstorable_request(scope, body)
        if refusal is not None:
            await refusal(scope, receive, send_logged)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(
            scope, replay if scope["method"] in ("POST", "PUT", "PATCH") else receive, send_logged
        )

    async def _read(self, scope: Scope, receive: Receive) -> tuple[bytes, Any]:
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        limit, key = self.max_bytes, "server.max_body_bytes"
        if scope["path"].startswith("/v1/datasets/"):
            limit, key = self.max_import_bytes, "server.max_import_bytes"

        def too_big() -> JSONResponse:
            message = f"request body is larger than {key} ({limit} bytes)"
            return error_response(413, message, code="body_too_large")

        if declared is not None and declared.isdigit() and int(declared) > limit:
            return b"", too_big()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_big()
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return b"", error_response(
                400, f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_utf8"
            )
        return body, None

    @staticmethod
    def _log(scope: Scope, status: int, started: float) -> None:
        entry = {
            "event": "request",
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
        entry.update(scope["state"].get("npllm_log", {}))
        # Reads that worked are debug: `npllm sleep --follow` polls every second.
        quiet = scope["method"] in ("GET", "HEAD") and status < 400
        log.log(logging.DEBUG if quiet else logging.INFO, json.dumps(entry))
