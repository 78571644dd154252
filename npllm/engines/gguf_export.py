"""Adapters for llama.cpp: a peft LoRA written as a GGUF LoRA, and checked, not trusted.

The trainer learns on the dequantised GGUF (npllm/llm.py), whose values are exactly the
quantised weights llama.cpp computes with, so a LoRA trained there applies unchanged to
the quantised model; only its file format changes. What llama.cpp expects (its own
``convert_lora_to_gguf.py`` and ``src/llama-adapter.cpp`` were the reference; this is our
own writer):

- tensors ``blk.N.<module>.weight.lora_a`` of shape (r, d_in) and ``…lora_b`` of shape
  (d_out, r), the same matrices as peft's ``lora_A.weight`` / ``lora_B.weight``;
- metadata ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``;
  llama.cpp scales the product by scale · alpha / r, as peft does;
- q and k rows permuted back: llama.cpp's converter permutes the rows of q_proj and k_proj
  (by heads, to its rotary layout), and transformers un-permutes them when it loads a GGUF;
  a LoRA trained on the un-permuted weights must have its ``lora_b`` rows (the output
  side) permuted the same way, with the heads of ``<arch>.attention.head_count[_kv]``.

A conversion is then verified against peft itself (``compare``): greedy tokens and
next-token probabilities on a probe chat, computed once by the process that holds the
fp32 model (``reference``) and once by llama.cpp.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npllm.artifacts import write_file_atomically
from npllm.errors import AdapterError

GGUF_FILE = "adapter.gguf"  # beside the peft files of a version
REFERENCE_FILE = "reference.json"  # peft's answer to the probe chat, on the dequantised base
PARITY_MARK = ".parity-ok"  # written once llama.cpp has matched the reference

# peft module name → llama.cpp tensor name inside block N (llama-family architectures).
MODULES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
# Architectures whose q/k rows llama.cpp's converter permutes (its LlamaModel.permute).
PERMUTED = {"llama"}
_PEFT_KEY = re.compile(
    r"base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight"
)
# The probe chat of the parity check and how much of the answer it compares.
PROBE_CHAT = [
    {"role": "system", "content": "You are a concise coding assistant."},
    {"role": "user", "content": "How do I reverse a list in Python?"},
]
PROBE_TOKENS = 12
TOP_K = 5  # the reference's tokens compared at each step
LLAMA_TOP_K = 20  # how many llama.cpp lists, so that those 5 are in its list
# Tolerances of the parity check (see compare), on probabilities. Calibrated on the shipped
# GGUF, teacher-forced along torch's answer: the bare base differs by up to 0.018 on average
# over a 32-token answer; the adapters the test suite trains, correctly converted, by
# 0.004-0.048, at most 0.14 of the adapter's own effect (the largest ratios where the
# effect itself was tiny); the same adapters with q/k rows left unpermuted by 0.021-0.41, at
# least 0.17 of their effect. An adapter whose whole effect is within the bare engines'
# difference passes whatever its conversion (it changes answers less than llama.cpp does).
ABS_TOLERANCE = 0.025
REL_TOLERANCE = 0.15


@dataclass(frozen=True)
class BaseInfo:
    """What a conversion needs to know of the base GGUF."""

    path: Path
    architecture: str
    layers: int
    heads: int
    kv_heads: int
    context_length: int


def gguf_field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(value).decode()
    return value.tolist()[0] if hasattr(value, "tolist") else value


def base_info(path: Path) -> BaseInfo:
    """Architecture, layer and head counts and context length of a base GGUF (its header
    only: the file is memory-mapped, nothing is loaded)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:
        raise AdapterError(f"cannot read the base GGUF {path}: {exc}") from exc
    arch = gguf_field(reader, "general.architecture")
    heads = gguf_field(reader, f"{arch}.attention.head_count")
    layers = gguf_field(reader, f"{arch}.block_count")
    if not arch or heads is None or layers is None:
        raise AdapterError(f"{path} lacks general.architecture / head_count / block_count")
    kv_heads = gguf_field(reader, f"{arch}.attention.head_count_kv") or heads
    ctx = gguf_field(reader, f"{arch}.context_length") or 2048
    return BaseInfo(path, str(arch), int(layers), int(heads), int(kv_heads), int(ctx))


def permute_rows(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's q/k permutation of the rows (the output side) of a matrix:
    per head, the two rotary halves are interleaved. ``weights``: (d_out, cols)."""
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def check_expressible(config: dict[str, Any]) -> None:
    """Refuse what a GGUF LoRA cannot express, with the reason."""
    problems = []
    if config.get("use_dora"):
        problems.append("DoRA (use_dora) rescales the weight's columns")
    if config.get("use_rslora"):
        problems.append("rsLoRA (use_rslora) scales by alpha/sqrt(r), llama.cpp by alpha/r")
    if config.get("modules_to_save"):
        problems.append("modules_to_save replaces whole modules")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        problems.append("per-module ranks or alphas (rank_pattern / alpha_pattern)")
    unknown = sorted(set(_targets(config)) - set(MODULES))
    if unknown:
        problems.append(f"target modules {unknown} have no llama.cpp name")
    if problems:
        raise AdapterError(
            "this adapter cannot be served by llama.cpp: " + "; ".join(problems) + ". Train it "
            "as a plain LoRA (npllm's trainer does), or use models.engine = 'transformers'."
        )


def _targets(config: dict[str, Any]) -> list[str]:
    targets = config.get("target_modules") or []
    return list(targets) if isinstance(targets, list) else [targets]


def convert(peft_dir: Path, base: BaseInfo, target: Path, permute: bool = True) -> Path:
    """Write the peft adapter in `peft_dir` as a GGUF LoRA at `target`, atomically (temp
    file, fsync, rename). `permute=False` exists only to show the check catches it."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((peft_dir / "adapter_config.json").read_text())
    check_expressible(config)
    tensors = load_file(str(peft_dir / "adapter_model.safetensors"))
    written = 0

    def write(path: Path) -> None:
        nonlocal written
        writer = gguf.GGUFWriter(str(path), base.architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
        for key in sorted(tensors):
            match = _PEFT_KEY.fullmatch(key)
            if match is None:
                raise AdapterError(f"{peft_dir}: tensor {key!r} is not a LoRA matrix of a layer")
            layer, module, side = int(match[1]), match[2], match[3]
            data = np.ascontiguousarray(tensors[key], dtype=np.float32)
            qk = module in ("q_proj", "k_proj") and base.architecture in PERMUTED
            if side == "B" and permute and qk:
                data = permute_rows(data, base.heads if module == "q_proj" else base.kv_heads)
            name = f"blk.{layer}.{MODULES[module]}.weight.lora_{side.lower()}"
            writer.add_tensor(name, np.ascontiguousarray(data))
            written += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    write_file_atomically(target, write)
    if written == 0:
        raise AdapterError(f"{peft_dir} holds no LoRA tensors")
    return target


def check_file(path: Path, base: BaseInfo, config: dict[str, Any]) -> None:
    """Read a GGUF LoRA back before llama.cpp sees it: complete, every tensor of a layer
    the base has, with the shapes of the rank. A truncated or foreign file is refused here
    with the reason (llama.cpp itself would only log it)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:
        raise AdapterError(f"{path} is not a readable GGUF file: {exc}") from exc
    if (
        gguf_field(reader, "general.type") != "adapter"
        or gguf_field(reader, "adapter.type") != "lora"
    ):
        raise AdapterError(f"{path} is not a GGUF LoRA adapter (general.type / adapter.type)")
    expected = 2 * base.layers * len(_targets(config))
    if len(reader.tensors) != expected:
        raise AdapterError(
            f"{path} holds {len(reader.tensors)} tensors; a LoRA on {base.layers} layers × "
            f"{len(_targets(config))} modules has {expected}"
        )
    rank = int(config["r"])
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # numpy order
        side = tensor.name.rsplit("_", 1)[-1]
        if (side == "a" and shape[0] != rank) or (side == "b" and shape[-1] != rank):
            raise AdapterError(f"{path}: tensor {tensor.name} has shape {shape}, rank is {rank}")
        if len(tensor.data.reshape(-1)) != math.prod(shape):
            raise AdapterError(f"{path}: tensor {tensor.name} is truncated")


# ---- the parity check ---------------------------------------------------------------------


def _cache_name(model: Any) -> str:
    """What this transformers calls the KV cache, argument and output: `cache` since it
    renamed `past_key_values` (which now raises a FutureWarning, and goes in 5.40)."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(causal.forward).parameters else "past_key_values"


def reference(
    model: Any,
    tokenizer: Any,
    chat: list[dict[str, str]] | None = None,
    tokens: int = PROBE_TOKENS,
) -> dict[str, Any]:
    """peft's (or the bare base's) greedy answer to `chat` (the probe chat by default) and,
    at each of its positions, the top-k next-token probabilities: what llama.cpp must
    reproduce. With a peft model, also the bare base's probabilities of the same tokens at
    the same positions (``bare``): how much the adapter itself moves them."""
    import torch

    from npllm.generation import encode_chat

    prompt = encode_chat(tokenizer, chat or PROBE_CHAT)
    ids = list(prompt)
    cache = _cache_name(model)
    with torch.inference_mode():
        past, step_ids = None, ids  # greedy, one token at a time, with the KV cache
        for _ in range(tokens):
            out = model(input_ids=torch.tensor([step_ids]), use_cache=True, **{cache: past})
            past, token = getattr(out, cache), int(out.logits[0, -1].argmax())
            ids.append(token)
            step_ids = [token]
            if token == tokenizer.eos_token_id:
                break
        # The probabilities at every answer position, teacher-forced along it (one pass).
        probs = _probs(model, ids, len(prompt))  # (answer, vocab)
        bare = None
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                bare = _probs(model, ids, len(prompt))
    steps: list[dict[str, Any]] = []
    for step, row in enumerate(probs):
        top = torch.topk(row, TOP_K)
        pairs = [[int(i), float(q)] for q, i in zip(top.values, top.indices, strict=True)]
        want: dict[str, Any] = {"top": pairs}
        if bare is not None:
            want["bare"] = [float(bare[step][t]) for t, _ in pairs]
        steps.append(want)
    return {"prompt_ids": prompt, "eos": tokenizer.eos_token_id, "tokens": ids[len(prompt) :],
            "steps": steps}  # fmt: skip


def _probs(model: Any, ids: list[int], start: int) -> Any:
    """Next-token probabilities at positions start-1 … len(ids)-2: those that predict the
    tokens from `start` on. (answer tokens, vocab)"""
    import torch

    tensor = torch.tensor([ids])  # (1, seq)
    logits = model(input_ids=tensor, attention_mask=torch.ones_like(tensor)).logits
    return torch.softmax(logits[0, start - 1 : len(ids) - 1].float(), dim=-1)


def compare(
    ref: dict[str, Any], probs: Sequence[dict[int, float]]
) -> tuple[str | None, dict[str, float]]:
    """Compare llama.cpp's next-token probabilities, teacher-forced along peft's greedy
    answer (`probs[i]`: token → probability after the prompt and the answer's first i
    tokens), with peft's reference. Returns (None or the reason, the figures).

    At each position the error is the largest gap over peft's top-5 tokens; a conversion
    passes when the mean error is within ABS_TOLERANCE (the engines' own difference on the
    bare base, which comes from llama.cpp quantising activations where torch computes in
    fp32) or within REL_TOLERANCE of the adapter's own effect (the same gap between peft
    with and without the adapter): a strongly trained adapter amplifies that arithmetic
    difference, a wrong conversion changes what the adapter does."""
    errors, effects = [], []
    for step, want in enumerate(ref["steps"]):
        got = probs[step] if step < len(probs) else {}
        if not got and want["top"][0][0] == ref.get("eos"):
            continue  # llama.cpp lists nothing when it stops there
        floor = min(got.values(), default=0.0)  # a token left out of its list is below it
        errors.append(max(abs(p - got.get(t, min(floor, p))) for t, p in want["top"]))
        if "bare" in want:
            effects.append(
                max(abs(p - b) for (_, p), b in zip(want["top"], want["bare"], strict=True))
            )
    error = sum(errors) / max(len(errors), 1)
    effect = sum(effects) / max(len(effects), 1)
    figures = {"error": round(error, 4), "effect": round(effect, 4)}
    if error <= ABS_TOLERANCE or error <= REL_TOLERANCE * effect:
        return None, figures
    return (
        f"llama.cpp's next-token probabilities differ from peft's by {error:.3f} on average "
        f"over the probe answer; allowed: {ABS_TOLERANCE} or {REL_TOLERANCE:.0%} of the "
        f"adapter's own effect ({effect:.3f})",
        figures,
    )


# ---- the cerebellum as a GGUF model ---------------------------------------------------------


def merge_model(base: BaseInfo, peft_dir: Path, target: Path) -> Path:
    """Write the base GGUF with the LoRA in `peft_dir` merged in, as a standalone GGUF model
    (llama.cpp's speculative draft): every key/value (tokenizer and chat template included)
    and every untouched tensor copied as they are, quantisation kept; each adapted matrix
    dequantised, W + (alpha/r)·B·A added in llama.cpp's row order, and stored as F16.
    Written atomically."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((peft_dir / "adapter_config.json").read_text())
    check_expressible(config)
    scale = float(config["lora_alpha"]) / float(config["r"])
    lora = load_file(str(peft_dir / "adapter_model.safetensors"))
    deltas: dict[str, np.ndarray] = {}
    for key, b in lora.items():
        match = _PEFT_KEY.fullmatch(key)
        if match is None or match[3] != "B":
            continue
        a = lora[key.replace("lora_B", "lora_A")]  # (r, d_in)
        layer, module = int(match[1]), match[2]
        if module in ("q_proj", "k_proj") and base.architecture in PERMUTED:
            b = permute_rows(b, base.heads if module == "q_proj" else base.kv_heads)
        delta = scale * (b @ a)  # (d_out, d_in)
        if not np.isfinite(delta).all():
            raise AdapterError(f"{peft_dir} holds NaN/inf weights ({key}); it seems broken")
        deltas[f"blk.{layer}.{MODULES[module]}.weight"] = delta
    reader = gguf.GGUFReader(str(base.path))

    def write(path: Path) -> None:
        writer = gguf.GGUFWriter(str(path), base.architecture)
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            kind = field.types[0]
            sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
        merged: dict[str, np.ndarray] = {}
        for tensor in reader.tensors:
            if tensor.name in deltas:
                weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type)  # (out, in)
                merged[tensor.name] = (weight + deltas[tensor.name]).astype(np.float16)
                data = merged[tensor.name]
                writer.add_tensor_info(
                    tensor.name, data.shape, data.dtype, data.nbytes, gguf.GGMLQuantizationType.F16
                )
            else:
                writer.add_tensor_info(
                    tensor.name,
                    tensor.data.shape,
                    tensor.data.dtype,
                    tensor.data.nbytes,
                    tensor.tensor_type,
                )
        if len(merged) != len(deltas):
            missing = sorted(set(deltas) - set(merged))[:3]
            raise AdapterError(f"the base GGUF has no tensors {missing} that {peft_dir} adapts")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:
            writer.write_tensor_data(merged.get(tensor.name, tensor.data))
        writer.close()

    write_file_atomically(target, write)
    return target
