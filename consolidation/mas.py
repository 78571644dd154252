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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Matrices = dict[str, torch.Tensor]  # adapted module name → (out, in) tensor


def lora_modules(model: Any, adapter: str) -> dict[str, Any]:
    """The LoRA layers that carry `adapter`, by module name."""
    from peft.tuners.lora import LoraLayer

    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and adapter in module.lora_A
    }


def effective_updates(model: Any, adapter: str) -> Matrices:
    """ΔW = scaling·B·A of every adapted layer (differentiable in A and B)."""
    updates = {}
    for name, module in lora_modules(model, adapter).items():
        a = module.lora_A[adapter].weight  # (r, in)
        b = module.lora_B[adapter].weight  # (out, r)
        updates[name] = (b @ a) * module.scaling[adapter]  # (out, in)
    return updates


def importance(
    model: Any, adapter: str, samples: Sequence[Sequence[int]], device: str = "cpu"
) -> Matrices:
    """Per-sample mean of |∂‖logits‖²/∂ΔW| over `samples` (token id lists), per layer."""
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
    omega = {
        name: torch.zeros_like(m.base_layer.weight, dtype=torch.float32)
        for name, m in modules.items()
    }
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
                omega[name] += (g.T @ a).abs()  # (out, in)
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(lora_params, needed, strict=True):
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {name: o / max(len(samples), 1) for name, o in omega.items()}


def normalise(omega: Matrices) -> Matrices:
    """Scale so the mean importance over all layers is 1 (λ then transfers)."""
    total = sum(float(o.sum()) for o in omega.values())
    count = sum(o.numel() for o in omega.values())
    mean = total / count if count else 0.0
    if mean <= 0:
        return {name: torch.zeros_like(o) for name, o in omega.items()}
    return {name: o / mean for name, o in omega.items()}


def accumulate(previous: Matrices | None, new: Matrices) -> Matrices:
    """Ω after one more cycle: the previous sum plus this cycle's normalised importance."""
    fresh = normalise(new)
    if not previous:
        return fresh
    return {name: previous.get(name, torch.zeros_like(o)) + o for name, o in fresh.items()}


def snapshot(model: Any, adapter: str) -> Matrices:
    """θ*: the effective updates at the start of the cycle (detached copies)."""
    return {name: u.detach().clone() for name, u in effective_updates(model, adapter).items()}


def penalty(model: Any, adapter: str, omega: Matrices, theta_star: Matrices) -> torch.Tensor:
    """Σ Ω·(ΔW − ΔW*)² over every adapted layer (multiply by λ in the loss)."""
    terms = [
        (omega[name] * (update - theta_star[name]).pow(2)).sum()
        for name, update in effective_updates(model, adapter).items()
        if name in omega
    ]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()
