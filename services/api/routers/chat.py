"""POST /v1/chat/completions: OpenAI's chat completions, whole or streamed."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from services.api import openai
from services.api.deps import ServiceDep
from services.api.routers.chat_models import ChatCompletionRequest
from services.api.schemas import ChatCompletion
from services.api.service import Cancel
from services.api.spec import errors

router = APIRouter()


SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "A chat.completion.chunk as JSON; the last event is [DONE].",
        }
    },
}
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ChatCompletion,
        "description": "The completion, or with stream=true its chunks as server-sent events.",
        # Before OpenAPI 3.2 (itemSchema) the schema of an event stream describes one event.
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    }
}


@router.post("/v1/chat/completions", response_model=None, responses={**STREAMED, **errors(413)})
async def chat_completions(
    body: ChatCompletionRequest, request: Request, service: ServiceDep
) -> JSONResponse | StreamingResponse:
    messages = openai.messages(body)
    params = openai.params(body, service.settings)
    model_id = service.awake.engine.model_id
    response_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    cancel = Cancel()

    def emit(kind: str, text: str = "") -> None:
        loop.call_soon_threadsafe(events.put_nowait, (kind, text))

    adapters = body.npllm.adapters if body.npllm else None
    memory = body.npllm.memory if body.npllm else True
    future = service.chat(
        response_id, messages, params, adapters, emit, cancel, body.stream, memory=memory
    )
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
        request.scope["state"]["npllm_log"] = openai.log_fields(answer)
        return JSONResponse(openai.completion(answer, response_id, model_id, created))
    # Streaming: wait until the prompt is assembled so that errors up to then are 4xx.
    first, _ = await events.get()
    if first == "done":
        service.in_flight.pop(response_id, None)
        await future  # raises the RequestError (or other) as a proper JSON error
    stream = openai.stream(service, request, response_id, created, model_id, events, future, cancel)
    return StreamingResponse(stream, media_type="text/event-stream")


@router.post("/v1/chat/completions/{response_id}/cancel", responses=errors(404))
async def cancel_completion(response_id: str, service: ServiceDep) -> dict[str, Any]:
    """Stop an answer in progress (its id is the completion's, sent in the first streamed
    chunk): the stream ends with finish_reason "cancelled" and the interaction id, so the
    answer can still be rated; a stop asked for is not recorded as abandoned."""
    service.stop_answer(response_id)
    return {"id": response_id, "cancelled": True}
