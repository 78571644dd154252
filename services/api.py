"""The socket API: OpenAI-compatible chat completions plus npllm's own endpoints.

Every error is JSON in the OpenAI shape ``{"error": {"message", "type", "param",
"code"}}`` and never takes the daemon down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import npllm
from consolidation import datasets
from consolidation.bookkeeping import cycle_running, recent_cycles
from npllm import modulator, replay
from npllm.adapters import CEREBELLUM, Registry, Version, check_name
from npllm.awake import Answer, AwakePath
from npllm.config import Settings
from npllm.db import Database, ServerVersions
from npllm.errors import (
    AdapterError,
    ConflictError,
    NotFoundError,
    NpllmError,
    RequestError,
    StorageError,
)
from npllm.llm import GenerationParams
from npllm.modulator import Modulator
from npllm.replay import TIERS
from services.feedback_writer import FeedbackWriter
from npllm.errors import QueueFull
from services.queue import GenerationQueue
from services.sleep import Sleeper

log = logging.getLogger("npllm.api")


# ---- request bodies -------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request; unknown fields are ignored, as OpenAI's servers do."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = Field(None, description="Ignored: npllm serves its configured base LLM.")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, description="Default: server.default_max_tokens.")
    max_completion_tokens: int | None = Field(None, description="Newer name of max_tokens.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy (the default).")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, description="Up to 4 stop strings.")
    seed: int | None = None
    frequency_penalty: float | None = Field(
        None,
        ge=-2.0,
        le=2.0,
        description="Lowers a token's logit by this much per time it occurs among the last "
        "server.repeat_last_n tokens. Default: server.frequency_penalty.",
    )
    presence_penalty: float | None = Field(
        None,
        ge=-2.0,
        le=2.0,
        description="Lowers a token's logit by this much once it occurs among the last "
        "server.repeat_last_n tokens. Default: server.presence_penalty.",
    )
    stream: bool = False
    npllm: NpllmOptions | None = None


class NpllmOptions(BaseModel):
    """npllm's own request options, in the body's "npllm" object."""

    model_config = ConfigDict(extra="forbid", strict=True)
    adapters: list[str] | None = Field(
        None,
        description="Adapters to use (at most 3, blended); [] = none; absent = the "
        "modulator chooses.",
    )
    repeat_penalty: float | None = Field(
        None,
        ge=1.0,
        le=2.0,
        description="llama.cpp's repetition penalty over the last server.repeat_last_n "
        "tokens (1 = off). Default: server.repeat_penalty.",
    )


class ModulatorIn(BaseModel):
    """A trained modulator version (stored by a sleep cycle) to route with."""

    model_config = ConfigDict(extra="forbid", strict=True)
    version: int = Field(ge=1, description="The npllm.modulator_versions version.")
    sleep_cycle: int | None = Field(
        None, description="The sleep cycle publishing it (refused if it is no longer running)."
    )


class PublishIn(BaseModel):
    """A trained adapter directory to publish as the next version."""

    model_config = ConfigDict(extra="forbid", strict=True)
    path: str = Field(min_length=1, description="Absolute path of a peft adapter directory.")
    description: str = Field("", max_length=2000, description="What the adapter is for.")
    tags: list[str] = Field(default_factory=list, description="Topic tags.")
    dataset: str | None = Field(
        None, description="Imported dataset it was trained on: its questions set the centroid."
    )
    centroid: list[float] | None = Field(
        None, description="Where to route (384 numbers), as computed by the sleep cycle."
    )
    metrics: dict[str, Any] = Field(default_factory=dict, description="Stored with the version.")
    sleep_cycle: int | None = Field(
        None,
        description="The sleep cycle publishing it: the switch happens only while that "
        "cycle's worker is still alive.",
    )


class SleepIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    now: bool = Field(description="Start a consolidation cycle as soon as no request runs.")
    seed: int | None = Field(None, description="Sampling seed of that cycle (default: time).")


class MemoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(min_length=1, description="A note, fact or whole document (chunked).")
    source: str = Field("user", min_length=1, max_length=200)
    kind: Literal["note", "fact", "document"] = "note"


class FeedbackIn(BaseModel):
    """Explicit feedback on one answer; event, rating and comment may each come alone."""

    model_config = ConfigDict(extra="forbid", strict=True)
    interaction_id: int = Field(ge=1, description="From the completion's npllm metadata.")
    event: str | None = Field(
        None,
        description="accepted|copied|applied|edited|regenerated|rejected|abandoned",
    )
    rating: float | None = Field(None, description="-1 (bad) .. 1 (good).")
    comment: str | None = Field(None, max_length=10_000, description="Free text; its tone counts.")
    text: str | None = Field(
        None, description="With event 'edited': the corrected answer, learned instead."
    )


# ---- errors ---------------------------------------------------------------------------------


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(err: dict[str, Any]) -> tuple[str, str | None]:
    if err["type"] == "json_invalid":
        return f"request body is not valid JSON: {err.get('ctx', {}).get('error', '')}", None
    loc = [str(p) for p in err["loc"] if p != "body"]
    param = ".".join(loc) or None
    got = err.get("input")
    shown = (
        f" (got {json.dumps(got)[:80]})" if got is not None and not isinstance(got, dict) else ""
    )
    return f"{param or 'body'}: {err['msg']}{shown}", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        message, param = _validation_message(errors[0]) if errors else ("invalid request", None)
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem(s))"
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), type_=type_)

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
    async def _full(_: Request, exc: QueueFull) -> JSONResponse:
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


# ---- body guard and request log -------------------------------------------------------------


class BodyGuard:
    """ASGI middleware: refuse bodies over the size limit (413) and JSON that is not UTF-8
    (400) before they reach a route, and log one JSON line per request with its timings."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_import_bytes: int) -> None:
        self.app = app
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

        refusal = None
        body = b""
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body, refusal = await self._read(scope, receive)
            # Every body here is JSON; accept it even when the client did not say so
            # (plain `curl -d` sends application/x-www-form-urlencoded).
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope["headers"] = [*headers, (b"content-type", b"application/json")]
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
        log.info(json.dumps(entry))


# ---- the service ----------------------------------------------------------------------------


@dataclass
class Service:
    """What the routes need: config, the awake path, the queue, and facts for /v1/status."""

    settings: Settings
    database: Database
    awake: AwakePath
    queue: GenerationQueue
    versions: ServerVersions
    feedback_writer: FeedbackWriter
    registry: Registry
    sleeper: Sleeper
    # The cerebellum's versions (None with cerebellum.role = off).
    cerebellum_registry: Registry | None = None
    # Why the sleep cycle cannot train for this base (None: it can); see llm.untrainable_reason.
    untrainable: str | None = None
    started_at: float = field(default_factory=time.time)
    in_flight: dict[str, threading.Event] = field(default_factory=dict)

    def cancel_all(self) -> None:
        """At shutdown: stop every running answer at its next token."""
        for event in self.in_flight.values():
            event.set()

    def swap(self, version: Version, reason: str, sleep_cycle: int | None = None) -> dict[str, Any]:
        """On the model thread, between requests: load `version` beside the old one, smoke
        test it, make it active in the database and in memory, unload the old one.

        A version published by a sleep cycle is switched to only if that cycle's worker
        is still alive: a worker killed mid-publish changes nothing."""
        started = time.perf_counter()
        adapters = self.awake.adapters
        adapters.load(version)
        try:
            smoke = adapters.smoke(version)
            self._check_cycle(sleep_cycle)
            # Checks the adapter cap, then flips the database (one transaction).
            self.registry.activate(version, reason)
        except Exception as exc:
            adapters.unload(version)
            self.registry.refuse(version, f"not published: {exc}", {})
            raise AdapterError(f"adapter {version.key} was not published: {exc}") from exc
        old = adapters.activate(version)
        self.awake.modulator.set_adapters({v.adapter: c for v, c in self.registry.active()})
        self.awake.cache.clear()
        return _swap_answer(version, old, started, **smoke)

    def _check_cycle(self, sleep_cycle: int | None) -> None:
        """A version from a sleep cycle is switched to only while that cycle runs with its
        worker alive: a worker killed mid-publish changes nothing."""
        if sleep_cycle is not None and not cycle_running(self.database.pool, sleep_cycle):
            raise AdapterError(
                f"its sleep cycle {sleep_cycle} ended before the switch (worker stopped "
                "or killed); the active version stays"
            )

    def delete_adapter(self, name: str) -> dict[str, Any]:
        """On the model thread: delete adapter `name` (rows and files), then stop serving
        and routing to it. Refused while a sleep cycle runs (it may be training it)."""
        pool = self.database.pool
        running = [c for c in recent_cycles(pool) if c["status"] == "running"]
        if running:
            raise ConflictError(
                f"sleep cycle {running[0]['id']} is running and may be training {name!r}; "
                "delete it after the cycle ends (`npllm sleep --status`)"
            )
        versions = self.registry.delete(name)
        served = self.awake.adapters.remove(name)
        self.awake.modulator.set_adapters({v.adapter: c for v, c in self.registry.active()})
        self.awake.cache.clear()
        return {"name": name, "deleted": True, "versions": versions, "was_served": served}

    def publish_cerebellum(self, version: Version, sleep_cycle: int | None) -> dict[str, Any]:
        """Build the draft model of `version` (off the model thread: it is a private
        copy), then switch to it between requests. Like an adapter's swap, a version
        from a sleep cycle whose worker died is refused; the active one stays."""
        started = time.perf_counter()
        cerebellum, registry = self.awake.cerebellum, self.cerebellum_registry
        assert cerebellum is not None and registry is not None
        try:
            draft = cerebellum.build(version)
            self._check_cycle(sleep_cycle)
        except Exception as exc:
            registry.refuse(version, f"not published: {exc}", {})
            raise AdapterError(f"cerebellum v{version.version} was not published: {exc}") from exc

        def switch() -> Version | None:
            registry.activate(version, "replaced by a newer version")
            self.awake.cache.clear()  # cached answers report the old draft model
            return cerebellum.activate(draft)

        old = self.queue.submit(switch, always=True).result()
        return _swap_answer(version, old, started, build_ms=draft.load_ms)

    def publish_modulator(self, version: int | None, sleep_cycle: int | None) -> dict[str, Any]:
        """Route with trained modulator `version` (None: the untrained one) from the next
        request on. Loaded and checked off the model thread; switched between requests,
        keeping the adapters it routes to."""
        started = time.perf_counter()
        pool = self.database.pool
        fresh = Modulator(self.settings.modulator)
        if version is not None:
            path = modulator.version_path(pool, version)
            try:
                fresh.load(path)
                self._check_cycle(sleep_cycle)
            except Exception as exc:
                modulator.refuse(pool, version, f"not published: {exc}")
                raise AdapterError(f"modulator v{version} was not published: {exc}") from exc

        def switch() -> int | None:
            fresh.set_adapters(self.awake.modulator.routable())
            old = modulator.activate(pool, version)
            self.awake.modulator, self.awake.modulator_version = fresh, version
            self.awake.cache.clear()  # cached answers report the old routing
            return old

        old = self.queue.submit(switch, always=True).result()
        return {
            "version": version,
            "replaced": old,
            "swap_ms": round((time.perf_counter() - started) * 1000, 1),
        }


def _swap_answer(
    version: Version, old: Version | None, started: float, **extra: Any
) -> dict[str, Any]:
    """What a publish or rollback answers: the version now served and the one it replaced."""
    return {
        "name": version.adapter,
        "version": version.version,
        "path": str(version.path),
        "replaced": None if old is None else old.version,
        "swap_ms": round((time.perf_counter() - started) * 1000, 1),
        **extra,
    }


def _params(body: ChatCompletionRequest, settings: Settings) -> GenerationParams:
    cap = settings.server.max_tokens_cap
    given = body.max_completion_tokens if body.max_tokens is None else body.max_tokens
    param = "max_tokens" if body.max_tokens is not None else "max_completion_tokens"
    max_tokens = settings.server.default_max_tokens if given is None else given
    if max_tokens <= 0:
        raise RequestError(f"{param} must be at least 1, got {max_tokens}", param=param)
    if max_tokens > cap:
        raise RequestError(
            f"{param} is {max_tokens}, above this server's cap of {cap} (server.max_tokens_cap)",
            param=param,
        )
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise RequestError("stop takes up to 4 non-empty strings", param="stop")
    server = settings.server
    own = body.npllm.repeat_penalty if body.npllm else None
    return GenerationParams(
        max_new_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=tuple(stop),
        seed=body.seed,
        frequency_penalty=_given(body.frequency_penalty, server.frequency_penalty),
        presence_penalty=_given(body.presence_penalty, server.presence_penalty),
        repeat_penalty=_given(own, server.repeat_penalty),
        repeat_last_n=server.repeat_last_n,
    )


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def _messages(body: ChatCompletionRequest) -> list[dict[str, str]]:
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    if messages[-1]["role"] != "user":
        raise RequestError(
            "the last message must come from the user", param=f"messages.{len(messages) - 1}.role"
        )
    if not messages[-1]["content"].strip():
        raise RequestError(
            "the last user message is empty", param=f"messages.{len(messages) - 1}.content"
        )
    return messages


def _completion(answer: Answer, response_id: str, model: str, created: int) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": _usage(answer),
        "npllm": answer.metadata(),
    }


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def _chunk(response_id: str, model: str, created: int, delta: dict[str, str], **extra: Any) -> str:
    finish = extra.pop("finish_reason", None)
    payload = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def create_app(service: Service) -> FastAPI:
    """The FastAPI application over one Service."""
    app = FastAPI(
        title="npllm",
        version=npllm.__version__,
        description="Local sleep-cycle memory daemon: OpenAI-compatible chat completions "
        "with retrieval over pgvector, plus memories and status.",
    )
    install_error_handlers(app)
    app.add_middleware(
        BodyGuard,
        max_bytes=service.settings.server.max_body_bytes,
        max_import_bytes=service.settings.server.max_import_bytes,
    )
    model_id = service.awake.engine.model_id

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest, request: Request
    ) -> JSONResponse | StreamingResponse:
        messages = _messages(body)
        params = _params(body, service.settings)
        response_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        cancel = threading.Event()

        def emit(kind: str, text: str = "") -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, text))

        def work() -> Answer:
            try:
                service.sleeper.wait_paused()  # a paused worker's cores are free first
                return service.awake.answer(
                    messages,
                    params,
                    on_text=(lambda t: emit("text", t)) if body.stream else None,
                    cancel=cancel,
                    on_start=lambda: emit("start"),
                    adapters=body.npllm.adapters if body.npllm else None,
                )
            finally:
                emit("done")

        service.in_flight[response_id] = cancel
        service.sleeper.on_request()  # wakes a sleeping daemon: training pauses
        try:
            future = asyncio.wrap_future(service.queue.submit(work))
        except QueueFull:
            service.in_flight.pop(response_id, None)
            service.sleeper.on_request_done()
            raise
        future.add_done_callback(lambda _: service.sleeper.on_request_done())
        if not body.stream:
            try:
                answer = await future
            except asyncio.CancelledError:
                # Nobody will read this answer (the daemon is stopping and its grace period
                # is over): stop generating it at the next token.
                cancel.set()
                raise
            finally:
                service.in_flight.pop(response_id, None)
            request.scope["state"]["npllm_log"] = _log_fields(answer)
            return JSONResponse(_completion(answer, response_id, model_id, created))
        # Streaming: wait until the prompt is assembled so that errors up to then are 4xx.
        first, _ = await events.get()
        if first == "done":
            service.in_flight.pop(response_id, None)
            await future  # raises the RequestError (or other) as a proper JSON error
        return StreamingResponse(
            _stream(service, request, response_id, created, model_id, events, future, cancel),
            media_type="text/event-stream",
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": model_id,
                    "object": "model",
                    "created": int(service.started_at),
                    "owned_by": "npllm",
                }
            ],
        }

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        # The latest cycle as the database records it: the daemon is awake once it ended.
        service.sleeper.observe(await asyncio.to_thread(recent_cycles, service.database.pool, 1))
        return await asyncio.to_thread(_status, service)

    @app.post("/v1/memories", status_code=201)
    def add_memory(body: MemoryIn) -> dict[str, Any]:
        if not body.text.strip():
            raise RequestError("text is only whitespace", param="text")
        return service.awake.remember(body.text, body.source, body.kind)

    @app.get("/v1/memories")
    def search_memories(
        query: Annotated[str, Query(min_length=1, description="What to look for.")],
        k: Annotated[int, Query(ge=1, le=100)] = 5,
        min_score: Annotated[float, Query(ge=-1.0, le=1.0)] = -1.0,
    ) -> dict[str, Any]:
        found = service.awake.memory.search(
            service.awake.embedder.embed_one(query), k=k, min_score=min_score
        )
        return {
            "object": "list",
            "data": [
                {
                    "id": m.id,
                    "text": m.text,
                    "score": round(float(m.score), 4),
                    "kind": m.kind,
                    "source": m.source,
                    "created_at": m.created_at.isoformat(),
                    "use_count": m.use_count,
                }
                for m in found
            ],
        }

    @app.delete("/v1/memories/{memory_id}")
    def delete_memory(memory_id: int) -> JSONResponse:
        if not service.awake.forget(memory_id):
            return error_response(
                404, f"no memory with id {memory_id}", type_="not_found_error", param="memory_id"
            )
        return JSONResponse({"id": memory_id, "deleted": True})

    @app.get("/v1/adapters")
    def list_adapters() -> dict[str, Any]:
        awake = service.awake
        return {
            "object": "list",
            "data": service.registry.listing(),
            "served": {name: v.version for name, v in awake.adapters.alias.items()},
            "modulator": _modulator_status(service),
        }

    @app.get("/v1/modulator")
    def modulator_status() -> dict[str, Any]:
        return {
            **_modulator_status(service),
            "versions": modulator.listing(service.database.pool),
        }

    @app.post("/v1/modulator/versions", status_code=201)
    async def publish_modulator(body: ModulatorIn) -> dict[str, Any]:
        return await asyncio.to_thread(service.publish_modulator, body.version, body.sleep_cycle)

    @app.post("/v1/modulator/rollback")
    async def rollback_modulator() -> dict[str, Any]:
        if service.awake.modulator_version is None:
            raise ConflictError(
                "no trained modulator is routing (it routes by adapter centroids); nothing "
                "to roll back"
            )
        previous = await asyncio.to_thread(modulator.previous, service.database.pool)
        return await asyncio.to_thread(service.publish_modulator, previous, None)

    @app.post("/v1/adapters/{name}/versions", status_code=201)
    async def publish_adapter(name: str, body: PublishIn) -> dict[str, Any]:
        check_name(name)
        path = Path(body.path)
        if not path.is_absolute():
            raise RequestError(f"path must be absolute, got {body.path!r}", param="path")
        if body.centroid is not None:
            if len(body.centroid) != 384:
                raise RequestError("centroid must have 384 numbers", param="centroid")
            centroid: Any = np.asarray(body.centroid, dtype=np.float32)
        else:
            centroid = await asyncio.to_thread(_centroid, service, body.dataset, body.description)
        version = await asyncio.to_thread(
            service.registry.add_version,
            name,
            path,
            description=body.description,
            tags=body.tags,
            centroid=centroid,
            dataset=body.dataset,
            metrics=body.metrics,
        )
        # Built and checked beside the served set while requests run; only the flip waits.
        await asyncio.to_thread(service.awake.adapters.stage, version)
        swap = service.queue.submit(
            lambda: service.swap(version, "replaced by a newer version", body.sleep_cycle),
            always=True,
        )
        return await asyncio.wrap_future(swap)

    @app.post("/v1/cerebellum/versions", status_code=201)
    async def publish_cerebellum(body: PublishIn) -> dict[str, Any]:
        registry = _cerebellum_registry(service)
        path = Path(body.path)
        if not path.is_absolute():
            raise RequestError(f"path must be absolute, got {body.path!r}", param="path")
        version = await asyncio.to_thread(
            registry.add_version,
            CEREBELLUM,
            path,
            description=body.description,
            metrics=body.metrics,
        )
        return await asyncio.to_thread(service.publish_cerebellum, version, body.sleep_cycle)

    @app.get("/v1/cerebellum")
    def cerebellum_status() -> dict[str, Any]:
        registry = _cerebellum_registry(service)
        assert service.awake.cerebellum is not None
        return {**service.awake.cerebellum.status(), "versions": registry.listing()}

    @app.delete("/v1/adapters/{name}")
    async def delete_adapter(name: str) -> dict[str, Any]:
        check_name(name)
        work = service.queue.submit(lambda: service.delete_adapter(name), always=True)
        return await asyncio.wrap_future(work)

    @app.post("/v1/adapters/prune")
    def prune_adapters() -> dict[str, Any]:
        """Remove the files of inactive versions beyond training.keep_versions (this also
        happens at every publish); the rows stay, status 'pruned'."""
        pruned = service.registry.prune_all()
        if service.cerebellum_registry is not None:
            pruned.update(service.cerebellum_registry.prune_all())
        return {"pruned": pruned}

    @app.post("/v1/adapters/{name}/rollback")
    async def rollback_adapter(name: str) -> dict[str, Any]:
        previous = await asyncio.to_thread(service.registry.previous, name)
        await asyncio.to_thread(service.awake.adapters.stage, previous)
        swap = service.queue.submit(lambda: service.swap(previous, "rolled back"), always=True)
        return await asyncio.wrap_future(swap)

    @app.get("/v1/sleep")
    async def sleep_status() -> dict[str, Any]:
        cycles = await asyncio.to_thread(recent_cycles, service.database.pool)
        service.sleeper.observe(cycles)  # a finished cycle: awake again at once
        machine, worker = service.sleeper.machine, service.sleeper.worker
        opening = machine.window.next_opening(datetime.now())
        return {
            "state": machine.state,
            "reason": machine.reason,
            "next_window": opening.isoformat() if opening else None,
            "worker_pid": worker.pid if worker else None,
            "latest_cycle": cycles[0]["id"] if cycles else None,
            "cycles": cycles,
        }

    @app.post("/v1/sleep")
    async def sleep_now(body: SleepIn) -> dict[str, Any]:
        status = await sleep_status()
        if body.now:
            await service.sleeper.force_when_free(status["cycles"], body.seed)
        return {"state": service.sleeper.state, "latest_cycle": status["latest_cycle"]}

    @app.post("/v1/feedback", status_code=201, response_model=None)
    async def feedback(body: FeedbackIn) -> JSONResponse:
        pending = service.awake.feedback.explicit_pending(
            body.interaction_id, body.event, body.rating, body.comment, body.text
        )
        result = await service.feedback_writer.submit(pending)
        return JSONResponse(result.to_dict(), status_code=201)

    @app.get("/v1/replay")
    def replay_overview() -> dict[str, Any]:
        with service.database.pool.connection() as conn:
            cur = conn.execute("SELECT * FROM npllm.replay_overview")
            names = [c.name for c in cur.description or []]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        for row in rows:
            for key in ("mean_reward", "mean_quality"):
                row[key] = None if row[key] is None else float(row[key])
        return {"object": "list", "data": rows}

    @app.get("/v1/replay/examples")
    def replay_export(
        tier: Annotated[list[str] | None, Query(description=f"One of {TIERS}; repeatable.")] = None,
        tag: Annotated[list[str] | None, Query(description="Topic tag; repeatable.")] = None,
    ) -> Response:
        examples = datasets.replay_examples(
            service.database.pool, tier or ("premium", "standard"), tag or ()
        )
        return _jsonl(examples)

    @app.get("/v1/datasets")
    def list_datasets() -> dict[str, Any]:
        return {"object": "list", "data": datasets.list_datasets(service.database.pool)}

    # {name:path} so that a name with a slash gets the name rule, not a bare 404.
    @app.post("/v1/datasets/{name:path}", status_code=201)
    async def import_dataset(name: str, request: Request) -> dict[str, Any]:
        data = await request.body()
        return await asyncio.to_thread(datasets.import_dataset, service.database.pool, name, data)

    @app.get("/v1/datasets/{name}/examples")
    def dataset_export(name: str) -> Response:
        return _jsonl(datasets.dataset_examples(service.database.pool, name))

    @app.delete("/v1/datasets/{name:path}")
    def delete_dataset(name: str) -> dict[str, Any]:
        datasets.delete_dataset(service.database.pool, name)
        return {"name": name, "deleted": True}

    return app


def _status(service: Service) -> dict[str, Any]:
    """GET /v1/status (blocking: runs in a worker thread)."""
    s = service.settings
    model_id = service.awake.engine.model_id
    return {
        "status": "ok",
        "version": npllm.__version__,
        "state": service.sleeper.state,
        "uptime_s": round(time.time() - service.started_at, 1),
        "base_model": model_id,
        "engine": service.awake.engine.info(),
        "training": {"trainable": service.untrainable is None, "reason": service.untrainable},
        "embedder": service.awake.embedder.model_id,
        "database": {
            "url": service.database.url,
            "embedded": service.database.embedded is not None,
            "postgresql": service.versions.postgresql,
            "pgvector": service.versions.pgvector,
        },
        "counts": service.awake.status_counts(),
        "replay": replay.tier_counts(service.database.pool),
        "adapters": {
            "served": {n: v.version for n, v in service.awake.adapters.alias.items()},
            "stale": service.registry.stale(),
        },
        "cerebellum": (
            {"role": "off"}
            if service.awake.cerebellum is None
            else service.awake.cerebellum.status()
        ),
        "queue": {
            "size": s.server.queue_size,
            "running": service.queue.running,
            "waiting": service.queue.waiting,
        },
        "socket": str(s.socket_path),
    }


def _modulator_status(service: Service) -> dict[str, Any]:
    awake = service.awake
    return {
        "parameters": awake.modulator.parameter_count,
        "routable": [n for n in awake.modulator.names if n is not None],
        "top_k": service.settings.modulator.top_k,
        "version": awake.modulator_version,  # None: untrained (centroid similarity alone)
        "train": service.settings.modulator.train,
    }


def _cerebellum_registry(service: Service) -> Registry:
    if service.cerebellum_registry is None or service.awake.cerebellum is None:
        raise ConflictError(
            'the cerebellum is off (cerebellum.role = "off"); set it to "draft" and '
            "restart to train and serve it"
        )
    return service.cerebellum_registry


def _centroid(service: Service, dataset: str | None, description: str) -> Any:
    """Where the modulator should send questions: the dataset's questions, else the
    description; None (only pinned use) when neither is given."""
    embedder = service.awake.embedder
    if dataset:
        return datasets.dataset_centroid(service.database.pool, embedder, dataset)
    if description.strip():
        return embedder.embed_one(description)
    return None


def _jsonl(examples: list[dict[str, Any]]) -> Response:
    body = "".join(datasets.to_jsonl(e) for e in examples)
    return Response(body, media_type="application/x-ndjson")


def _log_fields(answer: Answer) -> dict[str, Any]:
    return {
        "interaction_id": answer.interaction_id,
        "tokens": answer.completion_tokens,
        "memories": len(answer.memories),
        "cached": answer.cached,
        **answer.timings,
    }


async def _stream(
    service: Service,
    request: Request,
    response_id: str,
    created: int,
    model: str,
    events: asyncio.Queue[tuple[str, str]],
    future: Awaitable[Answer],
    cancel: threading.Event,
) -> AsyncIterator[str]:
    try:
        yield _chunk(response_id, model, created, {"role": "assistant", "content": ""})
        while True:
            kind, text = await events.get()
            if kind == "done":
                break
            if kind == "text":
                yield _chunk(response_id, model, created, {"content": text})
        try:
            answer = await future
        except NpllmError as exc:
            error = {"error": {"message": str(exc), "type": "server_error"}}
            yield f"data: {json.dumps(error)}\n\n"
            return
        request.scope["state"]["npllm_log"] = _log_fields(answer)
        yield _chunk(
            response_id,
            model,
            created,
            {},
            finish_reason=answer.finish_reason,
            usage=_usage(answer),
            npllm=answer.metadata(),
        )
        yield "data: [DONE]\n\n"
    finally:
        # The client went away or we finished: either way stop generating for it.
        cancel.set()
        service.in_flight.pop(response_id, None)
