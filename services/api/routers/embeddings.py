"""POST /v1/embeddings: OpenAI's embeddings API, answered by the hippocampus's embedder
(the vectors npllm stores and retrieves memories by)."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from npllm.errors import RequestError
from services.api.deps import ServiceDep
from services.api.schemas import Open
from services.api.service import MAX_EMBED_INPUTS
from services.api.spec import errors

router = APIRouter(responses=errors(413))


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request; unknown fields are ignored, as OpenAI's servers do."""

    model_config = ConfigDict(extra="ignore", strict=True)
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description=f"A text or up to {MAX_EMBED_INPUTS} texts; each is cut to the "
        "embedder's window (256 tokens for all-MiniLM-L6-v2). Token ids are refused."
    )
    model: str | None = Field(None, description="Ignored: npllm embeds with its embedder.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector as little-endian float32 bytes."
    )
    dimensions: int | None = Field(
        None, description="Must be the embedder's dimension (384) if given."
    )
    user: str | None = Field(None, description="Ignored.")


def texts(given: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    """The inputs as a list of texts; token ids are refused with a reason."""
    if isinstance(given, str):
        return [given]
    if given and not all(isinstance(item, str) for item in given):
        raise RequestError(
            "input holds token ids; npllm embeds text only (its embedder has its own "
            "tokenizer): send a string or a list of strings",
            param="input",
        )
    return [item for item in given if isinstance(item, str)]


class Embedding(Open):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 (encoding_format).")


class EmbeddingUsage(Open):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Open):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


@router.post("/v1/embeddings", response_model=None, responses={200: {"model": EmbeddingList}})
async def embeddings(body: EmbeddingRequest, service: ServiceDep) -> dict[str, Any]:
    embedded = await service.embed(texts(body.input), dimensions=body.dimensions)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
            for i, v in enumerate(embedded.vectors)
        ],
        "model": service.awake.embedder.model_id,
        "usage": {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens},
    }


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]
