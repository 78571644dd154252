"""Sentence embeddings for memories and queries (default: all-MiniLM-L6-v2, 384-dim)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from npllm.config import Settings
from npllm.errors import ModelError
from npllm.llm import device_for
from npllm.weights import ModelSource, resolve

# The database column is vector(384) (sql/001_init.sql).
DATABASE_DIM = 384


@dataclass
class Embedder:
    """A loaded sentence-transformers model producing L2-normalised float32 vectors."""

    model: Any
    source: ModelSource
    load_seconds: float

    @property
    def model_id(self) -> str:
        return self.source.model_id

    @property
    def dim(self) -> int:
        getter = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        return int(getter())

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit length."""
        vectors = self.model.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def load_embedder(settings: Settings) -> Embedder:
    """Load models.embedder; its dimension must match the database's vector(384)."""
    from sentence_transformers import SentenceTransformer

    started = time.perf_counter()
    source = resolve(settings.models.embedder, "models.embedder")
    if source.kind == "gguf":
        raise ModelError(
            f"models.embedder = {settings.models.embedder!r} is a GGUF file; the embedder must "
            "be a sentence-transformers directory"
        )
    try:
        model = SentenceTransformer(
            str(source.path), device=device_for(settings.models.device), local_files_only=True
        )
    except Exception as exc:
        raise ModelError(
            f"models.embedder = {settings.models.embedder!r}: cannot load {source.path}: {exc}"
        ) from exc
    embedder = Embedder(model=model, source=source, load_seconds=time.perf_counter() - started)
    if embedder.dim != DATABASE_DIM:
        raise ModelError(
            f"models.embedder = {settings.models.embedder!r} makes {embedder.dim}-dim vectors "
            f"but the database stores {DATABASE_DIM}-dim ones; use a {DATABASE_DIM}-dim model"
        )
    return embedder
