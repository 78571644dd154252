"""The bodies of Ollama's API (/api/*) as npllm takes them, and the documented shapes of
its answers. Unknown fields and options are ignored, as Ollama does; what npllm cannot do
(tools, images, structured output, thinking) is declared so that it can be refused by name
(services/api/ollama.py) rather than silently ignored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.api.routers.chat_models import NpllmOptions
from services.api.schemas import NpllmAnswer, Open

ROLES = ["system", "user", "assistant"]
REFUSED = "Refused with 400 when set: npllm cannot do it."


class OllamaOptions(BaseModel):
    """Ollama's runtime options that npllm applies; any other (top_k, num_ctx, mirostat,
    ...) is ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)
    num_predict: int | None = Field(
        None,
        description="Most tokens to generate; default server.default_max_tokens. Above "
        "server.max_tokens_cap, or negative (Ollama's 'no limit'), it is the cap.",
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default 0: greedy.")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] | None = Field(None, description="Stop strings (non-empty).")
    repeat_penalty: float | None = Field(
        None, ge=1.0, le=2.0, description="Default server.repeat_penalty."
    )
    repeat_last_n: int | None = Field(None, ge=0, le=8192)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: str = Field(json_schema_extra={"enum": list[Any](ROLES)})
    content: str = ""
    images: list[str] | None = Field(None, description=REFUSED)
    tool_calls: list[Any] | None = Field(None, description=REFUSED)


class OllamaRequest(BaseModel):
    """What /api/chat and /api/generate share."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = Field(None, description="Ignored: npllm serves its configured base LLM.")
    stream: bool = Field(True, description="Newline-delimited JSON objects, as Ollama streams.")
    options: OllamaOptions | None = None
    format: Any = Field(None, description=f"{REFUSED} (JSON mode, structured output)")
    think: Any = Field(None, description="Refused with 400 unless false: npllm does not think.")
    logprobs: bool | None = Field(None, description="Refused with 400 when true.")
    keep_alive: Any = Field(None, description="Ignored: the model stays loaded.")
    npllm: NpllmOptions | None = Field(None, description="npllm's own options (adapters).")


class OllamaChatRequest(OllamaRequest):
    messages: list[OllamaMessage] | None = Field(
        None,
        description="The conversation, ending with a user message; [] only answers "
        "that the model is loaded (done_reason 'load'), as Ollama does.",
    )
    tools: list[Any] | None = Field(None, description=REFUSED)


class OllamaGenerateRequest(OllamaRequest):
    prompt: str = Field(
        "",
        description="Answered as a one-turn chat; empty only answers that the model is "
        "loaded (done_reason 'load'), as Ollama does.",
    )
    system: str | None = Field(None, description="A system message before the prompt.")
    suffix: str | None = Field(None, description="Refused with 400 (fill-in-the-middle).")
    raw: bool | None = Field(None, description="Refused with 400 when true.")
    template: str | None = Field(None, description=REFUSED)
    images: list[str] | None = Field(None, description=REFUSED)
    context: list[int] | None = Field(None, description="Ignored (deprecated by Ollama).")


class OllamaEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = Field(None, description="Ignored: npllm embeds with its embedder.")
    input: str | list[str] = Field(description="A text or a list of texts.")
    truncate: bool = Field(True, description="false: a text over the window is refused.")
    dimensions: int | None = Field(None, description="Must be the embedder's if given.")
    options: dict[str, Any] | None = Field(None, description="Ignored.")
    keep_alive: Any = Field(None, description="Ignored.")


class OllamaEmbeddingsRequest(BaseModel):
    """The legacy /api/embeddings body."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = Field(None, description="Ignored.")
    prompt: str = ""
    options: dict[str, Any] | None = Field(None, description="Ignored.")
    keep_alive: Any = Field(None, description="Ignored.")


class OllamaShowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = Field(None, description="Any name: npllm serves one model.")
    name: str | None = Field(None, description="Older name of model.")
    verbose: bool | None = None


# ---- answers (documentation only; the routes build their JSON themselves) ---------------


class OllamaReply(Open):
    model: str
    created_at: str
    done: bool
    done_reason: str | None = Field(None, description="stop, length or load (final object).")
    total_duration: int | None = Field(None, description="Nanoseconds (final object).")
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    npllm: NpllmAnswer | None = Field(
        None, description="In the final object: interaction_id for POST /v1/feedback."
    )


class OllamaReplyMessage(Open):
    role: Literal["assistant"]
    content: str


class OllamaChatReply(OllamaReply):
    message: OllamaReplyMessage


class OllamaGenerateReply(OllamaReply):
    response: str


class OllamaModelDetails(Open):
    parent_model: str
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class OllamaModel(Open):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: OllamaModelDetails


class OllamaModelList(Open):
    models: list[OllamaModel]


class OllamaShowReply(Open):
    modelfile: str
    parameters: str
    template: str
    details: OllamaModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class OllamaVersion(Open):
    version: str


class OllamaEmbedReply(Open):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class OllamaEmbeddingReply(Open):
    embedding: list[float]
