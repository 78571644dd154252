"""The body of POST /v1/chat/completions: OpenAI's chat completion request, plus npllm's
own options in its "npllm" object."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ContentPart(BaseModel):
    """One part of a message's content; only text parts are read (openai.messages refuses
    the others by name: the base LLM reads text only)."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool", "function"] = Field(
        description="developer is taken as system; tool and function are refused (npllm "
        "calls no tools)."
    )
    content: str | list[ContentPart] | None = None


class Sampling(BaseModel):
    """The sampling options chat and text completions share (openai.params reads them)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = Field(None, description="Ignored: npllm serves its configured base LLM.")
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
    n: int = Field(1, description="Only 1.")
    npllm: NpllmOptions | None = None


class ChatCompletionRequest(Sampling):
    """OpenAI's chat completion request; unknown fields are ignored, as OpenAI's servers do."""

    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = Field(
        None, description='Refused unless tool_choice is "none": npllm calls no tools.'
    )
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = Field(
        None, description='Only {"type": "text"}; JSON modes are refused.'
    )


class CompletionRequest(Sampling):
    """OpenAI's (legacy) text completion request, as editors' autocomplete sends it."""

    prompt: str | list[str] = Field(description="The text to continue (one string).")
    suffix: str | None = Field(
        None,
        description="The text after the cursor: fill-in-the-middle, for base models with FIM "
        "tokens (else 400).",
    )
    echo: bool = Field(False, description="Only false.")
    logprobs: int | None = Field(None, description="Not supported (400).")
    best_of: int | None = Field(None, description="Only 1.")


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
    memory: bool = Field(
        True, description="false: answer without recalling memories (the adapters alone)."
    )
