"""The body of POST /v1/chat/completions: OpenAI's chat completion request, plus npllm's
own options in its "npllm" object."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
    memory: bool = Field(
        True, description="false: answer without recalling memories (the adapters alone)."
    )
