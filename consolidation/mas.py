"""Memory Aware Synapses (Aljundi et al., 2018) for LoRA adapters.

MAS measures how much each parameter matters to what the model already does: the
mean, over samples, of |∂‖F(x)‖² / ∂θ|, where F(x) is the network's output (here the
logits of the whole sequence). The penalty λ·Σ Ω·(θ − θ*)² then keeps important
parameters near their values θ* from the start of the cycle.

For LoRA the parameter that means something is the effective update ΔW = s·B·A of
each adapted linear layer, not A and B (which are not identifiable: B·A = (B·M)(M⁻¹·A)
for any invertible M). So Ω and θ* live on ΔW, one (out, in) matrix per layer:

- the gradient with respect to ΔW equals the gradient with respect to the layer's
  effective weight W₀ + ΔW, i.e. Σ_t g_t x_tᵀ from the layer's input x and output
  gradient g — taken **per sample** (batch of one), because averaging gradients over a
  batch first lets opposite signs cancel;
- importances are **summed** over cycles (each cycle's normalised to mean 1, so λ means
  the same for any model size), not averaged exponentially: what the adapter learned
  in its first night stays as protected as what it learned last night.

**Stored factored, O(out + in) per layer** (:class:`Factored`): a dense Ω is as large as
the base's adapted matrices (106 MB per version for SmolLM2-135M on q,k,v,o; ~2.5 GB
for a 3B base). Ω is kept as its row sums R and column shares c (c sums to 1) and used as
the rank-1 matrix Ω ≈ R cᵀ, which has exactly Ω's row and column sums — the same
factorisation Adafactor uses for its second moments (Shazeer & Stern, 2018), optimal for
non-negative matrices in the I-divergence. Summing two nights keeps both marginals exact
(:func:`accumulate`). The penalty Σ R_i c_j (ΔW − ΔW*)²_ij is computed from the LoRA
factors without forming any (out, in) matrix: with D = ΔW − ΔW* = U·V,
U = [s(B − B*), s·B*] (out × 2r) and V = [A; A − A*] (2r × in),
Σ_ij R_i c_j D_ij² = ‖diag(√R)·U·V·diag(√c)‖²_F = ⟨ŨᵀŨ, ṼṼᵀ⟩ with Ũ = diag(√R)U and
Ṽ = V diag(√c) — 2r × 2r Gram matrices, O(r²(out + in)) per layer. The dense form
(:class:`torch.Tensor` per layer) is kept as the reference that bench/forgetting.py
compares against (``--omega dense``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Factored:
    """Ω of one layer as the rank-1 matrix rows ⊗ cols (see the module docstring)."""

    rows: torch.Tensor  # (out,): Ω's row sums
    cols: torch.Tensor  # (in,): Ω's column sums over its total (sums to 1)

    @classmethod
    def of(cls, dense: torch.Tensor) -> Factored:
        """The factorisation of a dense (out, in) importance: its marginals."""
        total = float(dense.sum())
        cols = dense.sum(0) / total if total > 0 else torch.zeros(dense.shape[1])
        return cls(dense.sum(1), cols)

    @property
    def total(self) -> float:
        return float(self.rows.sum())

    @property
    def numel(self) -> int:
        return self.rows.numel() * self.cols.numel()

    def dense(self) -> torch.Tensor:
        return self.rows[:, None] * self.cols[None, :]  # (out, in)

    def scaled(self, factor: float) -> Factored:
        return Factored(self.rows * factor, self.cols)


Layer = torch.Tensor | Factored  # dense (out, in) or factored
Matrices = dict[str, Layer]  # adapted module name → its importance
Factors = dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # name → (A*, B*, scaling)


def lora_modules(model: Any, adapter: str) -> dict[str, Any]:
    """The LoRA layers that carry `adapter`, by module name."""
    from peft.tuners.lora import LoraLayer

    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and adapter in module.lora_A
    }


def effective_updates(model: Any, adapter: str) -> dict[str, torch.Tensor]:
    """ΔW = scaling·B·A of every adapted layer (differentiable in A and B)."""
    updates = {}
    for name, module in lora_modules(model, adapter).items():
        a = module.lora_A[adapter].weight  # (r, in)
        b = module.lora_B[adapter].weight  # (out, r)
        updates[name] = (b @ a) * module.scaling[adapter]  # (out, in)
    return updates


def importance(
    model: Any,
    adapter: str,
    samples: Sequence[Sequence[int]],
    device: str = "cpu",
    factored: bool = True,
) -> Matrices:
    """Per-sample mean of |∂‖logits‖²/∂ΔW| over `samples` (token id lists), per layer;
    factored (row sums and column shares) unless `factored` is False."""
    modules = lora_modules(model, adapter)
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    handles = []

    def capture(name: str) -> Any:
        def hook(_: Any, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            inputs[name] = args[0].detach()  # (1, seq, in)
            output.register_hook(lambda g: grads.__setitem__(name, g.detach()))  # (1, seq, out)

        return hook

    for name, module in modules.items():
        handles.append(module.register_forward_hook(capture(name)))
    shapes = {name: m.base_layer.weight.shape for name, m in modules.items()}  # (out, in)
    rows = {name: torch.zeros(shape[0]) for name, shape in shapes.items()}
    cols = {name: torch.zeros(shape[1]) for name, shape in shapes.items()}
    dense = {} if factored else {name: torch.zeros(shape) for name, shape in shapes.items()}
    was_training = model.training
    model.eval()  # no dropout: the importance of the function, not of noise
    lora_params = [
        p for m in modules.values() for p in (m.lora_A[adapter].weight, m.lora_B[adapter].weight)
    ]
    needed = [p.requires_grad for p in lora_params]
    for p in lora_params:
        p.requires_grad_(True)  # so that the layers' outputs carry gradients
    try:
        for ids in samples:
            model.zero_grad(set_to_none=True)
            x = torch.tensor([list(ids)], device=device)  # (1, seq)
            logits = model(input_ids=x).logits  # (1, seq, vocab)
            logits.pow(2).sum().backward()
            for name in modules:
                g, a = grads[name][0], inputs[name][0]  # (seq, out), (seq, in)
                sample = (g.T @ a).abs().float()  # (out, in), transient
                rows[name] += sample.sum(1)
                cols[name] += sample.sum(0)
                if not factored:
                    dense[name] += sample
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(lora_params, needed, strict=True):
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    n = max(len(samples), 1)
    if not factored:
        return {name: o / n for name, o in dense.items()}
    out: Matrices = {}
    for name in modules:
        total = float(cols[name].sum())
        share = cols[name] / total if total > 0 else cols[name]
        out[name] = Factored(rows[name] / n, share)
    return out


def _total(layer: Layer) -> float:
    return layer.total if isinstance(layer, Factored) else float(layer.sum())


def _numel(layer: Layer) -> int:
    return layer.numel if isinstance(layer, Factored) else layer.numel()


def normalise(omega: Matrices) -> Matrices:
    """Scale so the mean importance over all layers is 1 (λ then transfers)."""
    total = sum(_total(o) for o in omega.values())
    count = sum(_numel(o) for o in omega.values())
    mean = total / count if count else 0.0
    factor = 1 / mean if mean > 0 else 0.0
    return {
        name: o.scaled(factor) if isinstance(o, Factored) else o * factor
        for name, o in omega.items()
    }


def _add(previous: Layer | None, fresh: Layer) -> Layer:
    if previous is None:
        return fresh
    if isinstance(fresh, Factored):
        old = previous if isinstance(previous, Factored) else Factored.of(previous)
        weight_old, weight_new = old.total, fresh.total
        total = weight_old + weight_new
        if total <= 0:
            return Factored(old.rows + fresh.rows, fresh.cols)
        cols = (old.cols * weight_old + fresh.cols * weight_new) / total
        return Factored(old.rows + fresh.rows, cols)  # both marginals of the sum, exactly
    dense_old = previous.dense() if isinstance(previous, Factored) else previous
    return dense_old + fresh


def accumulate(previous: Matrices | None, new: Matrices) -> Matrices:
    """Ω after one more cycle: the previous sum plus this cycle's normalised importance."""
    fresh = normalise(new)
    if not previous:
        return fresh
    return {name: _add(previous.get(name), o) for name, o in fresh.items()}


def snapshot(model: Any, adapter: str) -> Factors:
    """θ*: the LoRA factors at the start of the cycle (detached copies) and their scaling."""
    return {
        name: (
            module.lora_A[adapter].weight.detach().clone(),  # (r, in)
            module.lora_B[adapter].weight.detach().clone(),  # (out, r)
            float(module.scaling[adapter]),
        )
        for name, module in lora_modules(model, adapter).items()
    }


def _layer_penalty(
    layer: Layer, a: torch.Tensor, b: torch.Tensor, star: tuple[torch.Tensor, torch.Tensor, float]
) -> torch.Tensor:
    a_star, b_star, s = star
    if not isinstance(layer, Factored):
        return (layer * (s * (b @ a - b_star @ a_star)).pow(2)).sum()
    u = torch.cat([s * (b - b_star), s * b_star], dim=1)  # (out, 2r)
    v = torch.cat([a, a - a_star], dim=0)  # (2r, in)
    u = u * layer.rows.clamp_min(0).sqrt()[:, None]
    v = v * layer.cols.clamp_min(0).sqrt()[None, :]
    return ((u.T @ u) * (v @ v.T)).sum()  # ⟨ŨᵀŨ, ṼṼᵀ⟩ = ‖ŨṼ‖²_F


def penalty(model: Any, adapter: str, omega: Matrices, theta_star: Factors) -> torch.Tensor:
    """Σ Ω·(ΔW − ΔW*)² over every adapted layer (multiply by λ in the loss)."""
    terms = [
        _layer_penalty(
            omega[name],
            module.lora_A[adapter].weight,
            module.lora_B[adapter].weight,
            theta_star[name],
        )  # fmt: skip
        for name, module in lora_modules(model, adapter).items()
        if name in omega and name in theta_star
    ]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def save(omega: Matrices, path: Path) -> None:
    """Ω as safetensors: `<layer>.rows` and `<layer>.cols` (or `<layer>` when dense)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, layer in omega.items():
        if isinstance(layer, Factored):
            tensors[f"{name}.rows"] = layer.rows.contiguous().float()
            tensors[f"{name}.cols"] = layer.cols.contiguous().float()
        else:
            tensors[name] = layer.contiguous().float()
    save_file(tensors, str(path))


def load(path: Path) -> Matrices:
    """What :func:`save` wrote; a dense Ω of an earlier version is factored on reading."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    omega: Matrices = {}
    for key, tensor in tensors.items():
        if key.endswith(".rows"):
            name = key.removesuffix(".rows")
            omega[name] = Factored(tensor, tensors[f"{name}.cols"])
        elif not key.endswith(".cols"):
            omega[key] = Factored.of(tensor)
    return omega


OMEGA_FILE = "mas_omega.safetensors"  # Ω stored beside each adapter version's weights


def read_omega(directory: Path | None) -> Matrices | None:
    """The Ω a version was stored with (its directory; None: no version yet, or none
    stored)."""
    path = None if directory is None else directory / OMEGA_FILE
    if path is None or not path.exists():
        return None
    return load(path)
