"""Sentence embeddings for memories and queries (default: all-MiniLM-L6-v2, 384-dim).

The model is loaded with sentence-transformers (torch). For the awake path, a model made of
a transformer, mean pooling and normalisation (MiniLM is) is exported once to ONNX and run
with ONNX Runtime on one thread: twice as fast as torch on one thread for a short question
(docs/performance.md), and its threads are not OpenMP's, which llama.cpp's decoding shares
with torch in the daemon. The export is kept in the model cache beside its source's
fingerprint and used only when it gives the torch model's vectors on a fixed set
(``PARITY_TOLERANCE``); otherwise torch serves, and the log says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npllm.artifacts import write_file_atomically
from npllm.config import Settings
from npllm.errors import ModelError
from npllm.llm import device_for
from npllm.weights import ModelSource, resolve

log = logging.getLogger(__name__)

# The database column is vector(384) (sql/001_init.sql).
DATABASE_DIM = 384
# Largest difference allowed between an ONNX vector and torch's, per component (unit
# vectors; measured ~1e-7 for MiniLM).
PARITY_TOLERANCE = 1e-4
PARITY_TEXTS = [
    "  leading and trailing spaces  ",
    # longer than MiniLM's 256-token window: truncated alike by both
    " ".join(f"step {i}: run the migration, then restart the worker." for i in range(60)),
    "How does git rebase differ from git merge?",
    "The Kestrel gateway listens on port 4471.",
    "Write a SQL query that finds duplicate emails in a users table.",
    "ok",
    "Déjà vu: naïve café — 東京 and emoji 🚀 in one line.",
    "A much longer memory about deployment: the staging cluster is rebuilt every night at "
    "two, the database is restored from the last snapshot, and the smoke tests run before "
    "anyone is paged, so a failure there is read in the morning by the on-call engineer.",
]


@dataclass
class Embedder:
    """A loaded sentence-transformers model producing L2-normalised float32 vectors; with
    `session`, its ONNX export answers instead of torch."""

    model: Any
    source: ModelSource
    load_seconds: float
    session: Any = None  # an onnxruntime.InferenceSession, or None: torch
    runtime: str = "torch"
    onnx_file: Path | None = None

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
        if self.session is not None:
            return self._onnx(texts)
        return self.torch_embed(texts)

    def torch_embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    def _onnx(self, texts: list[str], batch: int = 32) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch):
            encoded = self.model.tokenizer(
                texts[start : start + batch],
                padding=True,
                truncation=True,
                max_length=self.model.max_seq_length,
                return_tensors="np",
            )
            feed = {
                "input_ids": encoded["input_ids"].astype(np.int64),
                "attention_mask": encoded["attention_mask"].astype(np.int64),
            }
            out.append(self.session.run(None, feed)[0])
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    @property
    def window(self) -> int:
        """The tokens of a text that count (special ones included); the rest is cut off."""
        return int(self.model.max_seq_length)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Each text's tokens before it is cut to `window`, special tokens included."""
        encoded = self.model.tokenizer(texts, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]


def load_embedder(settings: Settings, runtime: str | None = None) -> Embedder:
    """Load models.embedder; its dimension must match the database's vector(384).
    `runtime` (default models.embedder_runtime): 'auto', 'onnxruntime' or 'torch'."""
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
    embedder = Embedder(model=model, source=source, load_seconds=0.0)
    if embedder.dim != DATABASE_DIM:
        raise ModelError(
            f"models.embedder = {settings.models.embedder!r} makes {embedder.dim}-dim vectors "
            f"but the database stores {DATABASE_DIM}-dim ones; use a {DATABASE_DIM}-dim model"
        )
    wanted = runtime or settings.models.embedder_runtime
    if wanted != "torch" and device_for(settings.models.device) == "cpu":
        try:
            embedder.session, embedder.onnx_file = _onnx_session(
                embedder, settings.model_cache_path
            )
            embedder.runtime = "onnxruntime"
        except _NotExportable as exc:
            if wanted == "onnxruntime":
                raise ModelError(f"models.embedder_runtime = 'onnxruntime': {exc}") from exc
            log.info(json.dumps({"event": "embedder_on_torch", "reason": str(exc)}))
    embedder.load_seconds = time.perf_counter() - started
    return embedder


class _NotExportable(Exception):
    """The embedder cannot be served by ONNX Runtime (the reason is the message)."""


def _fingerprint(path: Path) -> str:
    """Names the embedder's weights (path, sizes and times of its weight files)."""
    digest = hashlib.sha256(str(path.resolve()).encode())
    for weight in sorted(path.rglob("*")):
        if weight.suffix in (".safetensors", ".bin", ".json", ".txt"):
            stat = weight.stat()
            digest.update(f"{weight.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def _onnx_session(embedder: Embedder, cache_root: Path) -> tuple[Any, Path]:
    """The ONNX Runtime session of the embedder's export (made now if not cached), checked
    against torch on PARITY_TEXTS, and the export's file."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise _NotExportable(f"onnxruntime is not installed ({exc})") from exc
    modules = [type(m).__name__ for m in embedder.model]
    pooling = embedder.model[1] if len(modules) > 1 else None
    mean = getattr(pooling, "pooling_mode", None) == "mean" or getattr(
        pooling, "pooling_mode_mean_tokens", False
    )  # sentence-transformers 5+ / before
    if modules != ["Transformer", "Pooling", "Normalize"] or not mean:
        raise _NotExportable(f"its modules are {modules}, not a transformer with mean pooling")
    try:
        target = cache_root / "embedders" / f"{_fingerprint(embedder.source.path)}.onnx"
    except OSError as exc:
        raise _NotExportable(f"cannot read its files: {exc}") from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # a question is a few dozen tokens: one core is enough
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    problem = ""
    for _attempt in (1, 2):  # a cached export that fails is made again, once
        if not target.exists():
            _export(embedder, target)
        try:
            session = onnxruntime.InferenceSession(
                str(target), options, providers=["CPUExecutionProvider"]
            )
            probe = Embedder(embedder.model, embedder.source, 0.0, session, "onnxruntime")
            got, want = probe.embed(PARITY_TEXTS), embedder.torch_embed(PARITY_TEXTS)
            error = float(np.abs(got - want).max())
            if error <= PARITY_TOLERANCE:
                return session, target
            problem = f"its ONNX export differs from torch by {error:.2e}"
        except Exception as exc:  # onnxruntime raises its own types
            problem = f"ONNX Runtime cannot run {target}: {exc}"
        target.unlink(missing_ok=True)
    raise _NotExportable(problem)


def _export(embedder: Embedder, target: Path) -> None:
    """Export the embedder to ONNX at `target` (whole or not at all)."""
    import torch

    class Pooled(torch.nn.Module):
        """The transformer with mean pooling and normalisation, as one traced module."""

        def __init__(self, transformer: Any) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    started = time.perf_counter()
    module = Pooled(embedder.model[0].auto_model).eval()
    sample = embedder.model.tokenizer(["an example sentence"], return_tensors="pt")
    axes = {0: "batch", 1: "tokens"}

    def export(path: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (sample["input_ids"], sample["attention_mask"]),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes},
                opset_version=17,
                dynamo=False,
            )

    try:
        write_file_atomically(target, export)
    except Exception as exc:
        raise _NotExportable(f"its ONNX export failed: {exc}") from exc
    log.info(json.dumps({"event": "embedder_exported", "file": str(target),
                         "s": round(time.perf_counter() - started, 1)}))  # fmt: skip
