"""POST /v1/completions: OpenAI's text completions, what editors' autocomplete calls
(fill-in-the-middle with `suffix`), whole or streamed. See npllm/completion.py for what it
shares with the chat path (engine, adapters, routing) and what not (memory, records)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from npllm.completion import Completion
from npllm.errors import NpllmError, RequestError
from services.api import openai
from services.api.deps import ServiceDep
from services.api.pending import PendingAnswer
from services.api.routers.chat_models import CompletionRequest
from services.api.spec import errors

router = APIRouter()

# OpenAI's documented default for text completions (autocomplete wants short answers).
DEFAULT_MAX_TOKENS = 16


def _prompt(body: CompletionRequest) -> str:
    if isinstance(body.prompt, str):
        return body.prompt
    if len(body.prompt) != 1:
        raise RequestError(
            f"prompt takes one string (one completion per request), got {len(body.prompt)}",
            param="prompt",
        )
    return body.prompt[0]


def _refuse_unsupported(body: CompletionRequest) -> None:
    if body.echo:
        raise RequestError("echo is not supported (echo must be false)", param="echo")
    if body.logprobs is not None:
        raise RequestError("logprobs are not supported", param="logprobs")
    if body.n != 1 or (body.best_of or 1) != 1:
        raise RequestError("n and best_of must be 1 (one completion per request)", param="n")


@router.post("/v1/completions", response_model=None, responses=errors(413))
async def completions(
    body: CompletionRequest, request: Request, service: ServiceDep
) -> JSONResponse | StreamingResponse:
    _refuse_unsupported(body)
    prompt = _prompt(body)
    params = openai.params(body, service.settings, DEFAULT_MAX_TOKENS)
    model = service.awake.engine.model_id
    response_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    adapters = body.npllm.adapters if body.npllm else None
    pending = PendingAnswer.submit_completion(
        service, response_id, prompt, body.suffix, params, adapters, body.stream
    )
    if not body.stream:
        done = await pending.whole()
        return JSONResponse(_object(done, done.text, response_id, model, created, final=True))
    await pending.started()  # errors up to the prompt's assembly are still 4xx
    return StreamingResponse(_stream(pending, response_id, model, created), media_type=SSE)


SSE = "text/event-stream"


def _object(
    done: Completion | None, text: str, response_id: str, model: str, created: int, final: bool
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "text": text,
                "index": 0,
                "logprobs": None,
                "finish_reason": done.finish_reason if done and final else None,
            }
        ],
    }
    if done is not None and final:
        payload["usage"] = {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
        }
        payload["npllm"] = done.metadata()
    return payload


async def _stream(
    pending: PendingAnswer, response_id: str, model: str, created: int
) -> AsyncIterator[str]:
    def sse(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    try:
        async for text in pending.pieces():
            yield sse(_object(None, text, response_id, model, created, final=False))
        try:
            done = await pending.future
        except NpllmError as exc:
            yield sse({"error": {"message": str(exc), "type": "server_error"}})
            return
        yield sse(_object(done, "", response_id, model, created, final=True))
        yield "data: [DONE]\n\n"
    finally:
        pending.close()  # the client went away or we finished
