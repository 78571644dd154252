"""OpenAI's chat completion format: the request as npllm's generation parameters and
messages, and the answer as a completion or as server-sent chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import Request

from npllm.awake import Answer
from npllm.config import Settings
from npllm.errors import NpllmError, RequestError
from npllm.generation import GenerationParams
from services.api.routers.chat_models import ChatCompletionRequest, ContentPart, Sampling

if TYPE_CHECKING:
    from services.api.pending import PendingAnswer


def params(
    body: Sampling, settings: Settings, default_max_tokens: int | None = None
) -> GenerationParams:
    """The request's sampling options, the server's defaults filling the gaps."""
    cap = settings.server.max_tokens_cap
    given = body.max_completion_tokens if body.max_tokens is None else body.max_tokens
    param = "max_tokens" if body.max_tokens is not None else "max_completion_tokens"
    if default_max_tokens is None:
        default_max_tokens = settings.server.default_max_tokens
    max_tokens = default_max_tokens if given is None else given
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


def messages(body: ChatCompletionRequest) -> list[dict[str, str]]:
    """The conversation as plain role/content pairs; it must end with a user's question.
    What npllm cannot do is refused by name, never silently dropped: tools, tool results,
    images and other non-text parts, JSON modes, more than one choice."""
    if body.tools and body.tool_choice != "none":
        raise RequestError(
            "tools are not supported: npllm answers in text and calls no tools (send the "
            'request without tools, or with tool_choice "none")',
            param="tools",
        )
    if body.response_format is not None and body.response_format.get("type") != "text":
        raise RequestError(
            f"response_format {body.response_format.get('type')!r} is not supported: npllm "
            'answers in plain text (omit response_format or use {"type": "text"})',
            param="response_format",
        )
    if body.n != 1:
        raise RequestError(f"n must be 1 (one answer per request), got {body.n}", param="n")
    found = []
    for i, m in enumerate(body.messages):
        if m.role in ("tool", "function"):
            raise RequestError(
                f"messages.{i}: role {m.role!r} (a tool's result) is not supported: npllm "
                "calls no tools",
                param=f"messages.{i}.role",
            )
        role = "system" if m.role == "developer" else m.role
        found.append({"role": role, "content": _text(m.content, i)})
    if found[-1]["role"] != "user":
        raise RequestError(
            "the last message must come from the user", param=f"messages.{len(found) - 1}.role"
        )
    if not found[-1]["content"].strip():
        raise RequestError(
            "the last user message is empty", param=f"messages.{len(found) - 1}.content"
        )
    return found


def _text(content: str | list[ContentPart] | None, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    pieces = []
    for j, part in enumerate(content):
        if part.type != "text":
            raise RequestError(
                f"messages.{i}.content.{j}: {part.type!r} parts are not supported: the base "
                "model reads text only (send the content as text parts or a string)",
                param=f"messages.{i}.content.{j}.type",
            )
        if part.text is None:
            raise RequestError(
                f"messages.{i}.content.{j}: a text part needs its text",
                param=f"messages.{i}.content.{j}.text",
            )
        pieces.append(part.text)
    return "".join(pieces)


def completion(answer: Answer, response_id: str, model: str, created: int) -> dict[str, Any]:
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
        "usage": usage(answer),
        "npllm": answer.metadata(),
    }


def usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def chunk(response_id: str, model: str, created: int, delta: dict[str, str], **extra: Any) -> str:
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


def log_fields(answer: Answer) -> dict[str, Any]:
    """What the request log line adds for an answer (see middleware.BodyGuard)."""
    return {
        "interaction_id": answer.interaction_id,
        "tokens": answer.completion_tokens,
        "memories": len(answer.memories),
        "cached": answer.cached,
        **answer.timings,
    }


async def stream(
    pending: PendingAnswer, request: Request, response_id: str, created: int, model: str
) -> AsyncIterator[str]:
    """The answer as server-sent chunks, as the model thread emits its text."""
    try:
        yield chunk(response_id, model, created, {"role": "assistant", "content": ""})
        async for text in pending.pieces():
            yield chunk(response_id, model, created, {"content": text})
        try:
            answer = await pending.future
        except NpllmError as exc:
            error = {"error": {"message": str(exc), "type": "server_error"}}
            yield f"data: {json.dumps(error)}\n\n"
            return
        request.scope["state"]["npllm_log"] = log_fields(answer)
        yield chunk(
            response_id,
            model,
            created,
            {},
            finish_reason=answer.finish_reason,
            usage=usage(answer),
            npllm=answer.metadata(),
        )
        yield "data: [DONE]\n\n"
    finally:
        pending.close()  # the client went away or we finished: stop generating for it
