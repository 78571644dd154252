"""POST /v1/chat/completions: OpenAI's chat completions, whole or streamed."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from services.api import openai
from services.api.deps import ServiceDep
from services.api.pending import PendingAnswer
from services.api.routers.chat_models import ChatCompletionRequest
from services.api.schemas import ChatCompletion
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
    adapters = body.npllm.adapters if body.npllm else None
    memory = body.npllm.memory if body.npllm else True
    pending = PendingAnswer.submit(
        service, response_id, messages, params, adapters, body.stream, memory=memory
    )
    if not body.stream:
        answer = await pending.whole()
        request.scope["state"]["npllm_log"] = openai.log_fields(answer)
        return JSONResponse(openai.completion(answer, response_id, model_id, created))
    # Streaming: wait until the prompt is assembled so that errors up to then are 4xx.
    await pending.started()
    stream = openai.stream(pending, request, response_id, created, model_id)
    return StreamingResponse(stream, media_type="text/event-stream")


@router.post("/v1/chat/completions/{response_id}/cancel", responses=errors(404))
async def cancel_completion(response_id: str, service: ServiceDep) -> dict[str, Any]:
    """Stop an answer in progress (its id is the completion's, sent in the first streamed
    chunk): the stream ends with finish_reason "cancelled" and the interaction id, so the
    answer can still be rated; a stop asked for is not recorded as abandoned."""
    service.stop_answer(response_id)
    return {"id": response_id, "cancelled": True}
