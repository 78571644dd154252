"""Ollama's API format (its docs/api.md): a request as npllm's messages and generation
parameters, and the answer as Ollama's objects, whole or streamed as newline-delimited
JSON. What npllm cannot do is refused by name (400), never silently ignored."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import Request

from npllm.awake import Answer
from npllm.config import Settings
from npllm.errors import NpllmError, RequestError
from npllm.generation import GenerationParams
from npllm.model_card import ModelCard
from services.api import openai
from services.api.pending import PendingAnswer
from services.api.routers.ollama_models import (
    ROLES,
    OllamaChatRequest,
    OllamaGenerateRequest,
    OllamaMessage,
    OllamaOptions,
    OllamaRequest,
)

NDJSON = "application/x-ndjson"
# The Ollama API version whose shapes npllm follows (GET /api/version).
API_VERSION = "0.9.0"


def model_name(model_id: str) -> str:
    """The served base LLM as Ollama names models (name:tag)."""
    return model_id if ":" in model_id else f"{model_id}:latest"


def now() -> str:
    """Ollama's created_at: RFC 3339 in UTC."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# ---- requests -------------------------------------------------------------------------


def refuse_unsupported(body: OllamaRequest) -> None:
    """Options a client may rely on that npllm cannot honour: a 400 naming each."""
    if body.format not in (None, ""):
        raise RequestError(
            "format (JSON mode / structured output) is not supported by npllm; leave it out "
            "and ask for JSON in the prompt",
            param="format",
        )
    if body.think not in (None, False):
        raise RequestError(
            "think is not supported: npllm's base model does not think; leave it out",
            param="think",
        )
    if body.logprobs:
        raise RequestError("logprobs are not supported by npllm; leave them out", "logprobs")


def chat_messages(body: OllamaChatRequest) -> list[dict[str, str]]:
    """The conversation as role/content pairs; it must end with a user's question."""
    if body.tools:
        raise RequestError(
            "tools are not supported: npllm answers in text and never calls tools; leave tools out",
            param="tools",
        )
    if body.messages is None:
        raise RequestError("messages is required: the conversation, ending with a user message")
    return [_message(m, f"messages.{i}") for i, m in enumerate(body.messages)]


def _message(message: OllamaMessage, where: str) -> dict[str, str]:
    if message.role == "tool":
        raise RequestError(
            f"{where}.role is 'tool': npllm does not call tools, so it takes no tool results",
            param=f"{where}.role",
        )
    if message.role not in ROLES:
        raise RequestError(
            f"{where}.role is {message.role!r}; it must be one of {', '.join(ROLES)}",
            param=f"{where}.role",
        )
    if message.images:
        raise RequestError(
            f"{where}.images: npllm's base model reads text only; leave images out",
            param=f"{where}.images",
        )
    if message.tool_calls:
        raise RequestError(
            f"{where}.tool_calls: npllm does not call tools; leave tool_calls out",
            param=f"{where}.tool_calls",
        )
    return {"role": message.role, "content": message.content}


def generate_messages(body: OllamaGenerateRequest) -> list[dict[str, str]]:
    """The prompt (and system message) as a one-turn conversation (not for raw prompts or
    a suffix: those are completed as they are, routers/ollama.py)."""
    if body.template:
        raise RequestError(
            "template is not supported: npllm uses its model's own chat template; leave it out",
            param="template",
        )
    if body.images:
        raise RequestError("images: npllm's base model reads text only; leave them out", "images")
    system = [{"role": "system", "content": body.system}] if body.system else []
    return [*system, {"role": "user", "content": body.prompt}]


def last_turn_is_a_question(messages: list[dict[str, str]]) -> None:
    last = len(messages) - 1
    if messages[last]["role"] != "user":
        raise RequestError(
            "the last message must come from the user", param=f"messages.{last}.role"
        )
    if not messages[last]["content"].strip():
        raise RequestError("the last user message is empty", param=f"messages.{last}.content")


def params(body: OllamaRequest, settings: Settings) -> GenerationParams:
    """Ollama's options as npllm's generation parameters, the server's defaults filling the
    gaps. num_predict is capped, not refused: Ollama's own default is "no limit"."""
    options = body.options or OllamaOptions()
    server = settings.server
    wanted = options.num_predict
    if wanted == 0:
        raise RequestError(
            "num_predict is 0; give at least 1 (or -1 for as many as the server allows)",
            param="options.num_predict",
        )
    if wanted is None:
        wanted = server.default_max_tokens
    elif wanted < 0 or wanted > server.max_tokens_cap:
        wanted = server.max_tokens_cap
    stop = options.stop or []
    if any(not s for s in stop):
        raise RequestError("options.stop takes non-empty strings", param="options.stop")
    own = body.npllm.repeat_penalty if body.npllm else None
    return GenerationParams(
        max_new_tokens=wanted,
        temperature=_given(options.temperature, 0.0),
        top_p=_given(options.top_p, 1.0),
        stop=tuple(stop),
        seed=options.seed,
        frequency_penalty=_given(options.frequency_penalty, server.frequency_penalty),
        presence_penalty=_given(options.presence_penalty, server.presence_penalty),
        repeat_penalty=_given(options.repeat_penalty, _given(own, server.repeat_penalty)),
        repeat_last_n=(
            server.repeat_last_n if options.repeat_last_n is None else options.repeat_last_n
        ),
    )


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


# ---- answers --------------------------------------------------------------------------


def _ns(ms: float) -> int:
    return int(ms * 1_000_000)


def statistics(answer: Answer, started: float) -> dict[str, Any]:
    """The final object's figures, in nanoseconds as Ollama gives them. The prompt's
    evaluation by the engine is inside eval_duration; prompt_eval_duration is npllm's work
    before it (embedding, retrieval, routing, assembling the prompt)."""
    t = answer.timings
    before = sum(t.get(k, 0.0) for k in ("embed_ms", "retrieve_ms", "route_ms", "prompt_ms"))
    return {
        "done_reason": answer.finish_reason,
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": 0,  # the model is always loaded
        "prompt_eval_count": answer.prompt_tokens,
        "prompt_eval_duration": _ns(before),
        "eval_count": answer.completion_tokens,
        "eval_duration": _ns(t.get("generate_ms", 0.0)),
        "npllm": answer.metadata(),
    }


def loaded(model: str, reply: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """The answer to an empty conversation or prompt: the model is loaded (it always is)."""
    return {"model": model, "created_at": now(), **reply(""), "done": True, "done_reason": "load"}


def chat_reply(text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}}


def generate_reply(text: str) -> dict[str, Any]:
    return {"response": text}


def whole(
    answer: Answer, model: str, started: float, reply: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": now(),
        **reply(answer.text),
        "done": True,
        **statistics(answer, started),
    }


def _line(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False) + "\n"


async def stream(
    pending: PendingAnswer,
    request: Request,
    model: str,
    started: float,
    reply: Callable[[str], dict[str, Any]],
) -> AsyncIterator[str]:
    """The answer as Ollama streams it: one object per piece of text, then a final one
    with done true and the figures. An error after the 200 is an {"error"} line, which
    Ollama's clients raise."""
    try:
        async for text in pending.pieces():
            yield _line({"model": model, "created_at": now(), **reply(text), "done": False})
        try:
            answer = await pending.future
        except NpllmError as exc:
            yield _line({"error": str(exc)})
            return
        request.scope["state"]["npllm_log"] = openai.log_fields(answer)
        final = {"model": model, "created_at": now(), **reply(""), "done": True}
        yield _line({**final, **statistics(answer, started)})
    finally:
        pending.close()


# ---- models ---------------------------------------------------------------------------


def details(card: ModelCard) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": card.format,
        "family": card.family,
        "families": [card.family],
        "parameter_size": card.parameter_size,
        "quantization_level": card.quantization_level,
    }


def listed(model_id: str, card: ModelCard) -> dict[str, Any]:
    """The served base LLM as /api/tags and /api/ps list a model."""
    name = model_name(model_id)
    return {
        "name": name,
        "model": name,
        "modified_at": card.modified_at.isoformat().replace("+00:00", "Z"),
        "size": card.size,
        "digest": card.digest,
        "details": details(card),
    }
