"""One LoRA trainer for every adapter (and, later, the sleep cycle).

Reads like a training script top to bottom: tokenise chat examples (loss on the
final assistant turn only), wrap the frozen base in a fresh LoRA adapter of the
shared shape, AdamW with gradient accumulation, report progress, save the adapter
(safetensors, fp32). The base model's own weights are hashed before and after to
prove they were not touched.

Steps: ceil(examples / (batch_size × grad_accumulation)) optimizer steps per epoch,
times `epochs` (training.* in config).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from consolidation import mas
from npllm.adapters import AdapterShape
from npllm.config import TrainingConfig
from npllm.llm import weights_sha256

IGNORE = -100  # label of tokens the loss skips (prompt and padding)


@dataclass(frozen=True)
class Progress:
    step: int
    steps: int
    loss: float
    elapsed_s: float
    resumed_at: int = 0  # steps done before this process started (from a checkpoint)

    @property
    def eta_s(self) -> float:
        done = self.step - self.resumed_at
        return self.elapsed_s / done * (self.steps - self.step) if done > 0 else 0.0


@dataclass
class TrainResult:
    steps: int
    examples: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    seconds: float = 0.0
    base_sha256_before: str = ""
    base_sha256_after: str = ""
    resumed_at: int = 0  # optimizer steps done before (from a checkpoint), 0 for a fresh run
    tokens: int = 0  # tokens (prompt + answer, no padding) this process trained on

    def metrics(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "resumed_at_step": self.resumed_at,
            "tokens": self.tokens,
            "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else None,
            "examples": self.examples,
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": self.losses[-1] if self.losses else None,
            "losses": [round(x, 5) for x in self.losses],
            "seconds": round(self.seconds, 2),
            "base_sha256_before": self.base_sha256_before,
            "base_sha256_after": self.base_sha256_after,
        }


def plan_steps(examples: int, config: TrainingConfig) -> int:
    """Optimizer steps for a dataset of `examples` (see the module docstring)."""
    per_step = config.batch_size * config.grad_accumulation
    return max(1, math.ceil(examples / per_step)) * config.epochs


def encode_example(
    tokenizer: Any, messages: list[dict[str, str]], system_prompt: str, max_len: int
) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one chat example; labels are IGNORE except the answer.

    Without a system message the serving system prompt is used, so the adapter learns
    in the context it will answer in."""
    *context, answer = messages
    if not any(m["role"] == "system" for m in context):
        context = [{"role": "system", "content": system_prompt}, *context]
    prompt = list(
        tokenizer.apply_chat_template(
            context, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )
    target = tokenizer.encode(answer["content"], add_special_tokens=False)
    target.append(tokenizer.eos_token_id)
    ids = (prompt + target)[-max_len:]
    labels = ([IGNORE] * len(prompt) + target)[-max_len:]
    return ids, labels


def _batch(
    encoded: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id)  # (batch, seq)
    labels = torch.full((len(encoded), width), IGNORE)  # (batch, seq)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)  # (batch, seq)
    for row, (x, y) in enumerate(encoded):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return ids, labels, mask


@torch.no_grad()
def chat_loss(
    model: Any,
    tokenizer: Any,
    examples: list[list[dict[str, str]]],
    system_prompt: str,
    max_len: int = 512,
    **forward: Any,
) -> float:
    """Mean loss on the answers of `examples` (validation and retention probes)."""
    was_training = model.training
    model.eval()
    losses = []
    for messages in examples:
        ids, labels = encode_example(tokenizer, messages, system_prompt, max_len)
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]), **forward)
        losses.append(float(out.loss))
    model.train(was_training)
    return sum(losses) / max(len(losses), 1)


def _anchor(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor
) -> torch.Tensor:
    """Mean KL(base ‖ adapted) of the next-token distributions at the prompt positions
    (system prompt and question: what the adapter is not trained to change)."""
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=ids, attention_mask=mask).logits  # (batch, seq, vocab)
    keep = torch.zeros_like(mask, dtype=torch.bool)  # (batch, seq): predicts a prompt token
    keep[:, :-1] = (labels[:, 1:] == IGNORE) & mask[:, 1:].bool()
    log_q = torch.log_softmax(logits[keep], dim=-1)  # (n, vocab)
    log_p = torch.log_softmax(base[keep], dim=-1)
    return torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


@contextlib.contextmanager
def yielding(model: torch.nn.Module, control: Callable[[], None] | None) -> Iterator[None]:
    """Call `control` at every block of the model's layer stacks, forward and backward, while
    inside: a paused cycle stops using the CPU within one block's compute (milliseconds)
    instead of at the end of its step (seconds; minutes on a 3B base), and a stopped one
    stops there. The blocks are the members of the model's ``nn.ModuleList`` s (a decoder's
    layers), so this holds for any architecture; the hooks stay through peft's wrapping
    and unloading, which replace modules inside the blocks, not the blocks."""
    if control is None:
        yield
        return

    def backward(grad: torch.Tensor) -> None:
        control()

    def forward(module: torch.nn.Module, args: Any, output: Any) -> None:
        control()
        hidden = output[0] if isinstance(output, tuple) else output
        if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(backward)

    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    handles = [block.register_forward_hook(forward) for stack in stacks for block in stack]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def latest_checkpoint(root: Path | None) -> Path | None:
    """The newest complete checkpoint under `root` (step-NNNNNN directories), if any."""
    if root is None or not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "state.pt").exists())
    return done[-1] if done else None


def _save_checkpoint(
    root: Path,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    order: list[int],
    result: TrainResult,
) -> None:
    """Write step-NNNNNN/ beside the others through a temporary name, then drop the older
    ones: a kill at any moment leaves at least one complete checkpoint."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp / "adapter"), safe_serialization=True)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "rng": rng.getstate(),
        "torch_rng": torch.get_rng_state(),
        "order": list(order),
        "losses": list(result.losses),
    }
    torch.save(state, tmp / "state.pt")
    for path in (tmp / "state.pt", *(tmp / "adapter").iterdir()):
        with path.open("rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    for old in root.glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def train_adapter(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: list[list[dict[str, str]]],
    config: TrainingConfig,
    shape: AdapterShape,
    out_dir: Path,
    system_prompt: str,
    on_progress: Callable[[Progress], None] | None = None,
    max_len: int = 512,
    seed: int = 0,
    init_from: Path | None = None,
    omega: mas.Matrices | None = None,
    control: Callable[[], None] | None = None,
    checkpoint: Path | None = None,
) -> TrainResult:
    """Train a LoRA adapter on chat `examples` and save it to `out_dir`.

    A fresh adapter, or — with `init_from` — the next version of an existing one. With
    `omega` (accumulated MAS importance of earlier cycles) the loss adds
    ``training.mas_lambda · Σ Ω·(ΔW − ΔW*)²``, ΔW* being the adapter at the start.
    `control` is called before every micro-batch and between the tensors of the base
    weights hash (it may wait, or raise to stop; `yielding` calls it inside the model too).
    With `checkpoint` (a directory) the run saves its state there every
    ``training.checkpoint_every`` optimizer steps and, when a checkpoint is already there,
    continues from it: same examples, same order, same optimizer and random state, so a
    run killed and resumed ends where an uninterrupted one would."""
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(seed)
    rng = random.Random(seed)
    encoded = [encode_example(tokenizer, m, system_prompt, max_len) for m in examples]
    steps = plan_steps(len(encoded), config)
    result = TrainResult(steps=steps, examples=len(encoded))
    result.base_sha256_before = weights_sha256(model, control)
    lora = LoraConfig(
        r=shape.r,
        lora_alpha=shape.alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(shape.target_modules),
        task_type="CAUSAL_LM",
        use_dora=False,
    )
    peft_model: Any
    if init_from is None:
        peft_model = get_peft_model(model, lora)
    else:
        peft_model = PeftModel.from_pretrained(model, str(init_from), is_trainable=True)
    theta_star = mas.snapshot(peft_model, "default") if omega else None
    saved = latest_checkpoint(checkpoint)
    if saved is not None:  # continue the killed run: its adapter replaces the start
        peft_model.unload()
        peft_model = PeftModel.from_pretrained(model, str(saved / "adapter"), is_trainable=True)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order: list[int] = []
    first = 1
    if saved is not None:
        state = torch.load(saved / "state.pt", weights_only=False)  # written by this code
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        order, result.losses = state["order"], state["losses"]
        result.resumed_at = first = state["step"]
        first += 1
    started = time.perf_counter()
    try:
        for step in range(first, steps + 1):
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(config.grad_accumulation):
                if control:
                    control()  # the sleep worker may pause or stop here (and inside the model)
                if len(order) < config.batch_size:
                    order += rng.sample(range(len(encoded)), len(encoded))
                picked, order = order[: config.batch_size], order[config.batch_size :]
                ids, labels, mask = _batch([encoded[i] for i in picked], pad_id)
                result.tokens += int(mask.sum())
                out = peft_model(input_ids=ids, attention_mask=mask, labels=labels)
                loss = out.loss
                if config.anchor_weight:
                    loss = loss + config.anchor_weight * _anchor(
                        peft_model, ids, mask, labels, out.logits
                    )
                if omega and theta_star is not None:
                    loss = loss + config.mas_lambda * mas.penalty(
                        peft_model, "default", omega, theta_star
                    )
                (loss / config.grad_accumulation).backward()
                step_loss += out.loss.detach().item() / config.grad_accumulation
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            result.losses.append(step_loss)
            every = config.checkpoint_every
            if checkpoint and every and step % every == 0 and step < steps:
                _save_checkpoint(checkpoint, step, peft_model, optimizer, rng, order, result)
            if on_progress:
                on_progress(
                    Progress(
                        step, steps, step_loss, time.perf_counter() - started, result.resumed_at
                    )
                )
        peft_model.eval()
        out_dir.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(out_dir), safe_serialization=True)
        result.seconds = time.perf_counter() - started
        result.base_sha256_after = weights_sha256(peft_model, control)
    finally:
        peft_model.unload()  # done, stopped or failed: the caller's model is as it was
    return result
