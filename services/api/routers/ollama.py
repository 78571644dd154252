"""Ollama's API (/api/*): chat and generate through the awake path (memories, adapters,
feedback), embeddings by the hippocampus's embedder, and the served model as Ollama lists
models; a tool configured for Ollama works against npllm unchanged. Errors take Ollama's
shape {"error": "..."} (services/api/errors.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from services.api import ollama, openai
from services.api.deps import ServiceDep
from services.api.ollama import NDJSON
from services.api.pending import PendingAnswer
from services.api.routers.ollama_models import (
    OllamaChatReply,
    OllamaChatRequest,
    OllamaEmbeddingReply,
    OllamaEmbeddingsRequest,
    OllamaEmbedReply,
    OllamaEmbedRequest,
    OllamaGenerateReply,
    OllamaGenerateRequest,
    OllamaModelList,
    OllamaRequest,
    OllamaShowReply,
    OllamaShowRequest,
    OllamaVersion,
)
from services.api.schemas import documented
from services.api.service import Service
from services.api.spec import ollama_errors

router = APIRouter(tags=["ollama"], responses=ollama_errors(413))


def streamed(model: type) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route answering one object, or with stream (the default)
    newline-delimited objects: its pieces, then a final one with done true."""
    return {
        200: {
            "model": model,
            "description": "The answer; streamed (the default) as newline-delimited JSON "
            "objects of this shape, the last with done true.",
            "content": {NDJSON: {"schema": {"type": "string"}}},
        }
    }


@router.post("/api/chat", response_model=None, responses=streamed(OllamaChatReply))
async def chat(
    body: OllamaChatRequest, request: Request, service: ServiceDep
) -> JSONResponse | StreamingResponse:
    ollama.refuse_unsupported(body)
    messages = ollama.chat_messages(body)
    return await _answer(body, messages, request, service, ollama.chat_reply)


@router.post("/api/generate", response_model=None, responses=streamed(OllamaGenerateReply))
async def generate(
    body: OllamaGenerateRequest, request: Request, service: ServiceDep
) -> JSONResponse | StreamingResponse:
    ollama.refuse_unsupported(body)
    messages = ollama.generate_messages(body)
    if (body.raw or body.suffix) and (body.prompt or body.suffix):
        # Completed as it is (fill-in-the-middle with a suffix): what editors'
        # autocomplete sends; no chat template, memory or record (npllm/completion.py).
        raw = (body.prompt, body.suffix)
        return await _answer(body, messages, request, service, ollama.generate_reply, raw)
    return await _answer(
        body, messages if body.prompt else [], request, service, ollama.generate_reply
    )


async def _answer(
    body: OllamaRequest,
    messages: list[dict[str, str]],
    request: Request,
    service: Service,
    reply: Callable[[str], dict[str, Any]],
    raw: tuple[str, str | None] | None = None,
) -> JSONResponse | StreamingResponse:
    """One answer through the awake path, whole or streamed, in the shape `reply` gives
    the text (chat's message or generate's response); `raw` (prompt, suffix): completed
    as it is instead."""
    started = time.perf_counter()
    model = ollama.model_name(service.awake.engine.model_id)
    params = ollama.params(body, service.settings)
    adapters = body.npllm.adapters if body.npllm else None
    answer_id = f"ollama-{uuid.uuid4().hex}"
    if raw is not None:
        pending = PendingAnswer.submit_completion(
            service, answer_id, raw[0], raw[1], params, adapters, body.stream
        )
    else:
        if not messages:
            return JSONResponse(ollama.loaded(model, reply))
        ollama.last_turn_is_a_question(messages)
        pending = PendingAnswer.submit(service, answer_id, messages, params, adapters, body.stream)
    if not body.stream:
        answer = await pending.whole()
        request.scope["state"]["npllm_log"] = openai.log_fields(answer)
        return JSONResponse(ollama.whole(answer, model, started, reply))
    await pending.started()
    return StreamingResponse(
        ollama.stream(pending, request, model, started, reply), media_type=NDJSON
    )


@router.get("/api/tags", responses=documented(OllamaModelList))
async def tags(service: ServiceDep) -> dict[str, Any]:
    """The one model npllm serves: its base LLM."""
    card = await asyncio.to_thread(lambda: service.base_card)
    return {"models": [ollama.listed(service.awake.engine.model_id, card)]}


@router.get("/api/ps", responses=documented(OllamaModelList))
async def running(service: ServiceDep) -> dict[str, Any]:
    """The base LLM, always loaded."""
    card = await asyncio.to_thread(lambda: service.base_card)
    engine = service.awake.engine
    listed = ollama.listed(engine.model_id, card)
    always = {"expires_at": "9999-12-31T23:59:59Z", "size_vram": 0}
    return {"models": [{**listed, **always, "context_length": engine.context_length}]}


@router.post("/api/show", responses=documented(OllamaShowReply))
async def show(body: OllamaShowRequest, service: ServiceDep) -> dict[str, Any]:
    """The base LLM, whatever the name asked (npllm serves one model)."""
    card = await asyncio.to_thread(lambda: service.base_card)
    engine = service.awake.engine
    details = ollama.details(card)
    return {
        "modelfile": f"# npllm serves one model\nFROM {engine.model_id}\n",
        "parameters": f"num_ctx {engine.context_length}",
        "template": "",
        "details": details,
        "model_info": {
            "general.architecture": card.family,
            "general.parameter_count": card.parameter_count,
            f"{card.family}.context_length": engine.context_length,
        },
        "capabilities": ["completion"],
        "modified_at": ollama.listed(engine.model_id, card)["modified_at"],
    }


@router.get("/api/version", responses=documented(OllamaVersion))
async def version() -> dict[str, str]:
    return {"version": ollama.API_VERSION}


@router.post("/api/embed", responses=documented(OllamaEmbedReply))
async def embed(body: OllamaEmbedRequest, service: ServiceDep) -> dict[str, Any]:
    texts = [body.input] if isinstance(body.input, str) else body.input
    embedded = await service.embed(texts, truncate=body.truncate, dimensions=body.dimensions)
    return {
        "model": service.awake.embedder.model_id,
        "embeddings": embedded.vectors.tolist(),
        "total_duration": int(embedded.seconds * 1e9),
        "load_duration": 0,
        "prompt_eval_count": embedded.tokens,
    }


@router.post("/api/embeddings", responses=documented(OllamaEmbeddingReply))
async def embeddings(body: OllamaEmbeddingsRequest, service: ServiceDep) -> dict[str, Any]:
    """Ollama's older embeddings route: one prompt, one vector (none for an empty one)."""
    if not body.prompt:
        return {"embedding": []}
    embedded = await service.embed([body.prompt])
    return {"embedding": embedded.vectors[0].tolist()}
