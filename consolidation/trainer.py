"""One LoRA trainer for every adapter, the cerebellum and `npllm adapter train`.

Reads like a training script top to bottom: tokenise chat examples (loss on the
final assistant turn only), wrap the frozen base in a fresh LoRA adapter of the
shared shape (or continue a version), AdamW with gradient accumulation, report progress,
stop on a measured criterion, save the adapter (safetensors, fp32). The base model's own
weights are hashed before and after to prove they were not touched.

**The budget** (:func:`plan_budget`) comes from the data: ceil(examples / (batch_size ×
grad_accumulation)) optimizer steps per pass, times ``training.epochs`` for an adapter
trained afresh or ``training.incremental_epochs`` for the next version of one (its
earlier data is rehearsed, not learned anew: seed 003's initial vs incremental), at
least ``training.min_steps`` (a single correction is one example: it still needs a dozen
steps to stick) and at most ``training.max_steps``.

**Stopping.** Every ``training.recall_check_every`` steps the taught answers (the
examples in `recall`; all of them by default) are checked for exact recall: the greedy
choice at every answer position, teacher-forced, is the answer's own token, end of turn
included — exactly when greedy decoding would reproduce the answer from that prompt. With
a held-out set (an imported dataset of ``training.held_out_min_examples`` or more), its
loss is measured at the same checks and must also have stopped improving for
``training.patience`` checks (the best weights are kept). Training stops at the first
check where both hold, else when the budget is spent; :attr:`TrainResult.stop_reason`
says which. With `required`, the run waits only for those taught answers (a night: the
user's corrections); the others are trained, checked and counted, never waited for.

**The anchor** (``training.anchor_weight``): KL(base ‖ adapted) of the next-token
distributions at the prompt positions. The base is frozen, so its distributions are
computed once per example before the first step and reused (up to ``ANCHOR_CACHE_BYTES``;
past that, recomputed per batch with the adapter disabled).

One concept, over ~400 lines: the one LoRA training loop and its budget and stopping rule.
"""

from __future__ import annotations

import contextlib
import json
import math
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
from npllm.artifacts import write_atomically
from npllm.config import TrainingConfig
from npllm.engines import gguf_export
from npllm.generation import GenerationParams
from npllm.llm import penalise, weights_sha256

IGNORE = -100  # label of tokens the loss skips (prompt and padding)
ANCHOR_CACHE_BYTES = 512 * 1024 * 1024  # base distributions kept for the anchor


@dataclass(frozen=True)
class Budget:
    """The most optimizer steps a run may take, and how that number was reached."""

    steps: int
    reason: str


@dataclass(frozen=True)
class Sampler:
    """What the served path does to the next-token logits before its greedy choice, and the
    margin the right token must win by: the recall check judges a taught answer as it will be
    served, not as teacher forcing in fp32 would produce it.

    `params`: the served sampling settings; their penalties (npllm/llm.py: `penalise`)
    count the prompt too — measured on llama.cpp: a frequency penalty of 2 over the last
    64 tokens stopped a fact in the system message from being copied — so the words an
    answer must copy from its own question are penalised. `margin` covers what teacher
    forcing in torch cannot see: llama.cpp's quantised activations move logits by a little."""

    params: GenerationParams
    margin: float = 0.0

    def penalise(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """`logits` (vocab,) after the served penalties for the tokens `seen` before it."""
        return penalise(logits.clone(), seen, self.params)


@dataclass(frozen=True)
class Progress:
    step: int
    steps: int  # the budget: the run may stop before
    loss: float
    elapsed_s: float
    resumed_at: int = 0  # steps done before this process started (from a checkpoint)

    @property
    def eta_s(self) -> float:
        """Time left if the whole budget is spent (an early stop comes sooner)."""
        done = self.step - self.resumed_at
        return self.elapsed_s / done * (self.steps - self.step) if done > 0 else 0.0


@dataclass
class TrainResult:
    steps: int  # the budget
    examples: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step taken
    seconds: float = 0.0
    base_sha256_before: str = ""
    base_sha256_after: str = ""
    resumed_at: int = 0  # optimizer steps done before (from a checkpoint), 0 for a fresh run
    tokens: int = 0  # tokens (prompt + answer, no padding) this process trained on
    budget_reason: str = ""
    stop_reason: str = ""
    recalled: int | None = None  # taught answers reproduced exactly at the last full look
    to_recall: int = 0
    served: int | None = None  # taught answers the serving engine reproduced (last check)
    # Per taught answer, the serving engine's verdict on the weights saved (None: they were
    # not checked through it as they are).
    verified: list[bool] | None = None
    held_out_loss: float | None = None  # best held-out loss, with a held-out set

    def metrics(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "steps_done": len(self.losses),
            "budget": self.budget_reason,
            "stopped": self.stop_reason,
            "recalled": self.recalled,
            "to_recall": self.to_recall,
            "served": self.served,
            "held_out_loss": self.held_out_loss,
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


def plan_budget(examples: int, config: TrainingConfig, incremental: bool = False) -> Budget:
    """The step budget for `examples` training examples (see the module docstring)."""
    per_step = config.batch_size * config.grad_accumulation
    epochs = config.incremental_epochs if incremental else config.epochs
    from_data = max(1, math.ceil(examples / per_step)) * epochs
    steps = min(max(from_data, config.min_steps), config.max_steps)
    kind = "incremental" if incremental else "initial"
    reason = f"{kind}: ceil({examples} / {per_step}) x {epochs} epochs = {from_data}"
    if steps > from_data:
        reason += f", raised to training.min_steps = {steps}"
    elif steps < from_data:
        reason += f", capped at training.max_steps = {steps}"
    return Budget(steps, reason)


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
    batch: int = 8,
) -> float:
    """Mean over `examples` of each one's mean loss on its answer (validation and retention
    probes), `batch` examples per forward pass."""
    was_training = model.training
    model.eval()
    heads = _Heads(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [encode_example(tokenizer, m, system_prompt, max_len) for m in examples]
    losses: list[float] = []
    for start in range(0, len(encoded), batch):
        ids, labels, mask = _batch(encoded[start : start + batch], pad)
        states, full = heads.hidden(ids, mask)
        answer = _predicting(labels, mask, answer=True)  # (batch, seq - 1)
        logits = heads.logits(states[:, :-1][answer], full).float()  # (answer tokens, vocab)
        nll = torch.nn.functional.cross_entropy(logits, labels[:, 1:][answer], reduction="none")
        rows = answer.nonzero()[:, 0]
        for r in range(ids.shape[0]):
            losses.append(float(nll[rows == r].mean()))
    model.train(was_training)
    return sum(losses) / max(len(losses), 1)


class _Heads:
    """The causal LM as its decoder stack and its output layer, so that the vocabulary
    projection — the largest matrix of a small model, 49152 × 576 in SmolLM2 — is applied
    only where a loss needs it: the answer tokens and a sample of the anchor's prompt
    positions, not every position of every example. Models whose logits are more than
    ``lm_head(hidden)`` (soft-capping, scaling) take the plain full-logits path."""

    def __init__(self, model: Any) -> None:
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = causal.config
        plain = not getattr(config, "final_logit_softcapping", None) and getattr(
            config, "logit_scale", 1.0
        ) in (None, 1, 1.0)
        self.decoder = causal.get_decoder() if plain else None
        self.head = causal.get_output_embeddings()
        self.model = model

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(batch, seq, d) hidden states, or full (batch, seq, vocab) logits (True)."""
        if self.decoder is None:
            return self.model(input_ids=ids, attention_mask=mask).logits, True
        return self.decoder(input_ids=ids, attention_mask=mask).last_hidden_state, False

    def logits(self, states: torch.Tensor, full: bool) -> torch.Tensor:
        return states if full else self.head(states)


def _predicting(labels: torch.Tensor, mask: torch.Tensor, answer: bool) -> torch.Tensor:
    """(batch, seq - 1) bool over positions t that predict token t + 1: of the answer, or
    of the prompt (the anchor's positions)."""
    target, real = labels[:, 1:], mask[:, 1:].bool()
    return (target != IGNORE) if answer else (target == IGNORE) & real


@torch.no_grad()
def _base_distributions(
    model: Any, encoded: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> list[torch.Tensor] | None:
    """The frozen base's log-probabilities at each example's prompt positions, computed once
    (None when they would not fit in ANCHOR_CACHE_BYTES: then computed per batch)."""
    vocab = int(model.config.vocab_size)
    positions = sum(sum(1 for y in labels[1:] if y == IGNORE) for _, labels in encoded)
    if positions * vocab * 2 > ANCHOR_CACHE_BYTES:
        return None
    heads = _Heads(model)
    out = []
    for pair in encoded:
        ids, labels, mask = _batch([pair], pad_id)
        states, full = heads.hidden(ids, mask)
        logits = heads.logits(states[:, :-1][_predicting(labels, mask, answer=False)], full)
        out.append(torch.log_softmax(logits.float(), dim=-1).to(torch.bfloat16))  # (n, vocab)
    return out


def _anchor_sample(prompt: torch.Tensor, k: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Per row, the indices (into that row's prompt positions, in order) of at most `k` of
    them, drawn without replacement: the anchor's positions this step."""
    out = []
    for row in prompt:
        n = int(row.sum())
        pick = torch.randperm(n, generator=generator)[:k] if k and n > k else torch.arange(n)
        out.append(pick.sort().values)
    return out


def _losses(
    heads: _Heads,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    base: list[torch.Tensor] | None,
    anchor_k: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(task loss on the answers, anchor KL or None) of one micro-batch. The anchor is
    KL(base ‖ adapted) of the next-token distributions at up to `anchor_k` prompt positions
    per example (system prompt and question: what the adapter is not trained to change);
    `base`: the batch's cached base log-probabilities, else computed here with the adapter
    disabled. `anchor_k` 0: every prompt position; negative: no anchor."""
    states, full = heads.hidden(ids, mask)
    states = states[:, :-1]  # position t predicts token t + 1
    answer = _predicting(labels, mask, answer=True)
    logits = heads.logits(states[answer], full)  # (answer tokens, vocab)
    task = torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][answer])
    if anchor_k < 0:
        return task, None
    prompt = _predicting(labels, mask, answer=False)  # (batch, seq - 1)
    picks = _anchor_sample(prompt, anchor_k, generator)
    if not sum(len(p) for p in picks):
        return task, None
    rows = torch.cat([torch.full((len(p),), r) for r, p in enumerate(picks)])
    cols = torch.cat([prompt[r].nonzero().flatten()[p] for r, p in enumerate(picks)])
    log_q = torch.log_softmax(heads.logits(states[rows, cols], full).float(), dim=-1)
    if base is not None:
        log_p = torch.cat([base[r][p] for r, p in enumerate(picks)]).float()
    else:
        with torch.no_grad(), heads.model.disable_adapter():
            plain, plain_full = heads.hidden(ids, mask)
            log_p = torch.log_softmax(
                heads.logits(plain[:, :-1][rows, cols], plain_full).float(), dim=-1
            )
    kl = torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
    return task, kl


@torch.no_grad()
def reproduced(
    model: Any,
    encoded: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
    batch: int = 8,
    sampler: Sampler | None = None,
) -> list[bool]:
    """Per example: is every answer token (end of turn included) the model's greedy choice,
    teacher-forced — after `sampler`'s penalties and by its margin? Exactly when greedy
    decoding reproduces the answer from its prompt."""
    need = sampler.margin if sampler else 0.0
    return [m > need for m in margins(model, encoded, pad_id, batch, sampler)]


@torch.no_grad()
def margins(
    model: Any,
    encoded: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
    batch: int = 8,
    sampler: Sampler | None = None,
) -> list[float]:
    """Per example, the smallest margin over its answer positions by which the expected
    token beats every other (after `sampler`'s penalties): > 0 when greedy decoding picks it
    everywhere. See :func:`reproduced`."""
    was_training = model.training
    model.eval()
    heads = _Heads(model)
    out: list[float] = []
    for start in range(0, len(encoded), batch):
        chunk = encoded[start : start + batch]
        ids, labels, mask = _batch(chunk, pad_id)
        states, full = heads.hidden(ids, mask)
        answer = _predicting(labels, mask, answer=True)  # (batch, seq - 1)
        logits = heads.logits(states[:, :-1][answer], full).float()  # (answer tokens, vocab)
        rows, cols = answer.nonzero(as_tuple=True)
        worst = [math.inf] * len(chunk)
        for n, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
            row = logits[n]
            if sampler is not None:
                row = sampler.penalise(row, ids[r, : c + 1])
            target = labels[r, c + 1]
            best_other = torch.cat([row[:target], row[target + 1 :]]).max()
            worst[r] = min(worst[r], float(row[target] - best_other))
        out += worst
    model.train(was_training)
    return out


def _held_out_loss(
    model: Any, encoded: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        losses = []
        for pair in encoded:
            ids, labels, mask = _batch([pair], pad_id)
            losses.append(float(model(input_ids=ids, attention_mask=mask, labels=labels).loss))
    model.train(was_training)
    return sum(losses) / max(len(losses), 1)


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
    watch: _Watch,
) -> None:
    """Write step-NNNNNN/ beside the others through a temporary name, then drop the older
    ones: a kill at any moment leaves at least one complete checkpoint."""
    target = root / f"step-{step:06d}"
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "rng": rng.getstate(),
        "torch_rng": torch.get_rng_state(),
        "order": list(order),
        "losses": list(result.losses),
        "watch": watch.state(),
    }

    def write(directory: Path) -> None:
        model.save_pretrained(str(directory / "adapter"), safe_serialization=True)
        torch.save(state, directory / "state.pt")

    shutil.rmtree(target, ignore_errors=True)
    write_atomically(target, write)
    for old in root.glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


@dataclass
class _Watch:
    """The stopping criterion's memory across checks: the best held-out loss so far, at which
    step, its weights, and how many checks have not improved on it."""

    best: float = math.inf
    best_step: int = 0
    stale: int = 0
    weights: dict[str, torch.Tensor] | None = None

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "stale": self.stale,
                "weights": self.weights}  # fmt: skip

    @classmethod
    def of(cls, state: dict[str, Any] | None) -> _Watch:
        return cls(**state) if state else cls()


def _trainable(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


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
    held_out: list[list[dict[str, str]]] | None = None,
    recall: Sequence[int] | None = None,
    sampler: Sampler | None = None,
    verify: Callable[[Path], list[bool]] | None = None,
    margins_needed: Sequence[float] | None = None,
    required: Sequence[bool] | None = None,
    repeat: Sequence[int] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on chat `examples` and save it to `out_dir`.

    A fresh adapter, or — with `init_from` — the next version of an existing one. With
    `omega` (accumulated MAS importance of earlier cycles) the loss adds
    ``training.mas_lambda · Σ Ω·(ΔW − ΔW*)²``, ΔW* being the adapter at the start.
    The budget and the stopping criterion are the module docstring's; `recall` lists the
    examples that must be reproduced exactly (default: all of them when there is no
    `held_out` set, none when there is), `held_out` the examples whose loss must stop
    improving.
    `control` is called before every micro-batch and between the tensors of the base
    weights hash (it may wait, or raise to stop; `yielding` calls it inside the model too).
    With `checkpoint` (a directory) the run saves its state there every
    ``training.checkpoint_every`` optimizer steps and, when a checkpoint is already there,
    continues from it: same examples, same order, same optimizer and random state, so a
    run killed and resumed ends where an uninterrupted one would.
    `sampler`: the served path's penalties and the margin the recall check applies (or,
    per example of `recall`, `margins_needed`).
    `verify`: called with `out_dir` holding the adapter as it is (saved there) once the
    check passes; says, per example of `recall`, whether the serving engine answers it as
    taught (consolidation/served.py). Those it does not get a wider margin and training
    goes on; while some are missing when the budget is spent, it grows (at most twice, by
    half of it, within ``training.max_steps``).
    `required` (per example of `recall`; default all): the answers the run waits for. The
    others are checked, reported and widened the same way, but neither hold the run nor
    grow its budget: the night's corrections are what the user taught, and a liked answer
    the model gave itself must not spend their steps (docs/architecture.md).
    `repeat` (per example; default 1): how often it appears in each pass over the examples
    (its share of the batches)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(seed)
    rng = random.Random(seed)
    encoded = [encode_example(tokenizer, m, system_prompt, max_len) for m in examples]
    checked = [encode_example(tokenizer, m, system_prompt, max_len) for m in held_out or []]
    must = list(range(len(encoded))) if recall is None and not checked else list(recall or [])
    wait = [True] * len(must) if required is None else list(required)
    if len(wait) != len(must) or (repeat is not None and len(repeat) != len(encoded)):
        raise ValueError("required must match recall and repeat the examples, one per item")
    if repeat is not None and min(repeat, default=1) < 1:
        raise ValueError("repeat must be at least 1 for every example")
    # One pass: every example, `repeat` times, in a fresh random order.
    one_pass = [i for i in range(len(encoded)) for _ in range(1 if repeat is None else repeat[i])]
    budget = plan_budget(len(encoded), config, incremental=init_from is not None)
    steps = budget.steps
    result = TrainResult(steps=steps, examples=len(encoded), budget_reason=budget.reason)
    result.to_recall = len(must)
    result.base_sha256_before = weights_sha256(model, control)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    base = _base_distributions(model, encoded, pad_id) if config.anchor_weight else None
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
    heads = _Heads(peft_model)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    order: list[int] = []
    first = 1
    watch = _Watch()
    if saved is not None:
        state = torch.load(saved / "state.pt", weights_only=False)  # written by this code
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        order, result.losses = state["order"], state["losses"]
        watch = _Watch.of(state.get("watch"))
        result.resumed_at = first = state["step"]
        first += 1
    # Held-out losses are worth measuring about once a pass; recall is cheap to check.
    every = config.recall_check_every
    if checked and every:
        every = max(every, math.ceil(len(encoded) / (config.batch_size * config.grad_accumulation)))
    margin = 0.0 if sampler is None else sampler.margin
    need = list(margins_needed) if margins_needed is not None else [margin] * len(must)
    criterion = _Criterion(encoded, checked, must, pad_id, config, watch, result, sampler,
                           verify, out_dir, need, wait,
                           lambda: _save_weights(peft_model, out_dir))  # fmt: skip
    started = time.perf_counter()
    try:
        step = first - 1
        while step < steps:
            step += 1
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(config.grad_accumulation):
                if control:
                    control()  # the sleep worker may pause or stop here (and inside the model)
                if len(order) < config.batch_size:
                    order += rng.sample(one_pass, len(one_pass))
                picked, order = order[: config.batch_size], order[config.batch_size :]
                ids, labels, mask = _batch([encoded[i] for i in picked], pad_id)
                result.tokens += int(mask.sum())
                task, kl = _losses(
                    heads, ids, mask, labels,
                    None if base is None else [base[i] for i in picked],
                    config.anchor_positions if config.anchor_weight else -1,
                    torch.Generator().manual_seed(seed * 1_000_003 + step),
                )  # fmt: skip
                loss = task
                if kl is not None:
                    loss = loss + config.anchor_weight * kl
                if omega and theta_star is not None:
                    loss = loss + config.mas_lambda * mas.penalty(
                        peft_model, "default", omega, theta_star
                    )
                (loss / config.grad_accumulation).backward()
                step_loss += task.detach().item() / config.grad_accumulation
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            result.losses.append(step_loss)
            stop = False
            if every and (step % every == 0 or step == steps):
                stop = criterion.check(peft_model, step, steps)
                if not stop and step == steps:
                    steps = criterion.extend(steps)
            elif step == steps:
                result.stop_reason = f"budget spent: {steps} of {steps} steps"
            every_ckpt = config.checkpoint_every
            if checkpoint and every_ckpt and step % every_ckpt == 0 and step < steps and not stop:
                _save_checkpoint(checkpoint, step, peft_model, optimizer, rng, order, result, watch)
            if on_progress:
                on_progress(
                    Progress(
                        step, steps, step_loss, time.perf_counter() - started, result.resumed_at
                    )
                )
            if stop:
                break
        if watch.weights is not None and checked:  # the best held-out weights are kept
            with torch.no_grad():
                for name, param in peft_model.named_parameters():
                    if name in watch.weights:
                        param.copy_(watch.weights[name])
        # A verified adapter's weights are saved already, as they are.
        _snapshot(peft_model, tokenizer, out_dir, weights=not criterion.saved)
        result.steps = steps
        result.seconds = time.perf_counter() - started
        result.base_sha256_after = weights_sha256(peft_model, control)
    finally:
        peft_model.unload()  # done, stopped or failed: the caller's model is as it was
    return result


def _snapshot(model: Any, tokenizer: Any, out_dir: Path, weights: bool = True) -> None:
    """Save the adapter as it is to `out_dir` (`weights`), with what a serving engine must
    reproduce with it (its conversion check at publish, npllm/engines/gguf_export.py)."""
    was_training = model.training
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    if weights:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    (out_dir / gguf_export.REFERENCE_FILE).write_text(
        json.dumps(gguf_export.reference(model, tokenizer))
    )
    model.train(was_training)


def _save_weights(model: Any, out_dir: Path) -> None:
    """The adapter's weights alone, for the serving engine to check (no reference yet)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)


MARGIN_STEP = 1.0  # how much wider a taught answer's margin gets when the engine missed it
EXTENSIONS = 2  # how often a budget grows while taught answers are not served right


class _Criterion:
    """The stopping criterion (module docstring) across the checks of one run: the best
    held-out loss so far (`watch`), each taught answer's required margin, the served check."""

    def __init__(
        self,
        encoded: list[tuple[list[int], list[int]]],
        checked: list[tuple[list[int], list[int]]],
        must: list[int],
        pad_id: int,
        config: TrainingConfig,
        watch: _Watch,
        result: TrainResult,
        sampler: Sampler | None,
        verify: Callable[[Path], list[bool]] | None,
        out_dir: Path,
        need: list[float],
        wait: list[bool],
        snapshot: Callable[[], None],
    ) -> None:
        self.encoded, self.checked, self.must, self.pad_id = encoded, checked, must, pad_id
        self.config, self.watch, self.result, self.sampler = config, watch, result, sampler
        self.verify, self.out_dir, self.snapshot = verify, out_dir, snapshot
        self.need = need  # per taught answer, the margin it must win by
        self.wait = wait  # per taught answer, whether the run waits for it (`required`)
        self.extensions = 0
        self.saved = False  # the adapter in out_dir is the final one (verified)
        self.last_right: list[bool] | None = None  # the engine's last verdicts
        self.hit = [False] * len(must)  # per taught answer, its verdict when last looked at

    def check(self, model: Any, step: int, steps: int) -> bool:
        """One check; sets result.stop_reason when it says stop or the budget is spent."""
        config, result = self.config, self.result
        recalled = True
        if self.must:
            recalled = self.recalled(model, full=step == steps)
        plateau = True
        if self.checked:
            loss = _held_out_loss(model, self.checked, self.pad_id)
            watch = self.watch
            if loss < watch.best and recalled:  # best among weights that reproduce the taught
                watch.best, watch.best_step, watch.stale = loss, step, 0
                watch.weights = _trainable(model)
            else:
                watch.stale += 1
            result.held_out_loss = round(watch.best, 5) if watch.weights is not None else None
            plateau = watch.stale >= config.patience
        served = True
        if recalled and plateau and self.must and self.verify is not None:
            self.snapshot()
            right = self.verify_now()
            served = all(ok for ok, wait in zip(right, self.wait, strict=True) if wait)
            self.saved = served
            result.verified = right if served else None
        if recalled and plateau and served and (self.must or self.checked):
            result.stop_reason = f"stopped at step {step} of {steps}: " + "; ".join(self._parts())
            return True
        if step == steps:
            result.stop_reason = f"budget spent: {steps} of {steps} steps{self._counts()}"
        return False

    def recalled(self, model: Any, full: bool = False) -> bool:
        """Whether every answer the run waits for wins by its margin (teacher-forced).

        Fail fast: the required answers that missed when last looked at go first, a batch
        at a time, and the look ends at the first batch with a miss. Until the end of a run
        some answer still misses, and a full look at every taught answer is a forward pass
        over all of them: in the month benchmark's nights (25-45 taught answers, a look
        every 2 steps) the looks took more time than the training. The others (`wait`
        False) are looked at once every required one wins, for the count; `full`: look at
        all of them anyway (the budget's last step, whose count is reported). Whether the
        run stops is the same as with a full look: it needs every required answer."""
        size = self.config.batch_size * 2
        required = [k for k, wait in enumerate(self.wait) if wait]
        required.sort(key=lambda k: self.hit[k])  # the last misses first (a stable sort)
        others = [k for k, wait in enumerate(self.wait) if not wait]
        missed = False
        for start in range(0, len(required), size):
            if not self._look(model, required[start : start + size]):
                missed = True
                if not full:
                    break
        if not missed or full:
            for start in range(0, len(others), size):
                self._look(model, others[start : start + size])
            self.result.recalled = sum(self.hit)
        return not missed

    def _look(self, model: Any, which: list[int]) -> bool:
        """Margins of the taught answers `which`; whether each wins (self.hit) and all do."""
        found = margins(model, [self.encoded[self.must[k]] for k in which], self.pad_id,
                        len(which), self.sampler)  # fmt: skip
        for k, m in zip(which, found, strict=True):
            self.hit[k] = m > self.need[k]
        return all(self.hit[k] for k in which)

    def verify_now(self) -> list[bool]:
        """The engine's answers to the taught chats; those it missed need a wider margin."""
        assert self.verify is not None
        right = self.verify(self.out_dir)
        self.last_right = right
        for k, ok in enumerate(right):
            if not ok:
                self.need[k] += MARGIN_STEP
        self.result.served = sum(right)
        return right

    def extend(self, steps: int) -> int:
        """The budget, grown when taught answers are still not served right (else as is)."""
        served = self.last_right or [False] * len(self.wait)
        missing = sum(1 for ok, wait in zip(served, self.wait, strict=True) if wait and not ok)
        if (self.verify is None or not missing or self.extensions >= EXTENSIONS
                or steps >= self.config.max_steps):  # fmt: skip
            return steps
        self.extensions += 1
        grown = min(steps + max(steps // 2, 1), self.config.max_steps)
        self.result.budget_reason += (
            f"; grown to {grown} steps: {missing} taught answer(s) not yet served as taught"
        )
        return grown

    def _parts(self) -> list[str]:
        parts = []
        if self.must:
            waited = sum(self.wait)
            how = " through the serving engine" if self.verify else ""
            if waited == len(self.must):
                parts.append(f"every taught answer ({waited}) reproduced exactly{how}")
            else:
                rest = len(self.must) - waited
                got = self.result.served if self.verify else self.result.recalled
                parts.append(f"every required answer ({waited}) reproduced exactly{how}, "
                             f"{(got or 0) - waited} of the {rest} others")  # fmt: skip
        if self.checked:
            parts.append(
                f"held-out loss stopped improving (best {self.watch.best:.4f} at step "
                f"{self.watch.best_step}, kept)"
            )
        return parts

    def _counts(self) -> str:
        got = []
        if self.must:
            got.append(f"{self.result.recalled} of {len(self.must)} taught answers reproduced")
            if self.result.served is not None:
                got.append(f"{self.result.served} served as taught")
        return f" ({'; '.join(got)})" if got else ""
