"""MAS on LoRA: per-sample importance on ΔW = s·B·A, summed over cycles, and the penalty."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from consolidation import mas


def _model(seed: int = 0) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    return get_peft_model(base, config)


SAMPLES = [[1, 5, 9, 3], [7, 2, 2, 8, 4], [11, 12]]


def test_importance_is_the_per_sample_mean_of_the_effective_weight_gradient() -> None:
    model = _model()
    omega = mas.importance(model, "default", SAMPLES)
    assert len(omega) == 4  # q_proj and v_proj in 2 layers
    name = next(n for n in omega if n.endswith("layers.0.self_attn.q_proj"))
    # Reference: the gradient of the layer's own weight W0 equals the gradient of
    # W0 + ΔW, hence of ΔW; take it sample by sample, |·|, mean.
    weight = dict(model.named_modules())[name].base_layer.weight
    weight.requires_grad_(True)
    reference = torch.zeros_like(weight)
    for ids in SAMPLES:
        model.zero_grad()
        model(input_ids=torch.tensor([ids])).logits.pow(2).sum().backward()
        reference += weight.grad.abs()  # type: ignore[union-attr]
    weight.requires_grad_(False)
    reference /= len(SAMPLES)
    assert torch.allclose(omega[name], reference, rtol=1e-4, atol=1e-6)
    # Per sample is not per batch: summing the signed gradients first loses mass.
    assert float(omega[name].sum()) > 0


def test_importance_is_not_computed_from_a_batch_mean() -> None:
    model = _model()
    omega = mas.importance(model, "default", SAMPLES)
    name = next(iter(omega))
    weight = dict(model.named_modules())[name].base_layer.weight
    weight.requires_grad_(True)
    model.zero_grad()
    total = sum(model(input_ids=torch.tensor([ids])).logits.pow(2).sum() for ids in SAMPLES)
    total.backward()  # type: ignore[union-attr]
    batch = weight.grad.abs() / len(SAMPLES)  # type: ignore[union-attr]
    weight.requires_grad_(False)
    assert float(omega[name].sum()) >= float(batch.sum())
    assert not torch.allclose(omega[name], batch)


def test_importances_are_normalised_and_summed_over_cycles() -> None:
    first = {"a": torch.tensor([[1.0, 3.0]]), "b": torch.tensor([[2.0]])}
    second = {"a": torch.tensor([[10.0, 10.0]]), "b": torch.tensor([[10.0]])}
    night1 = mas.accumulate(None, first)
    assert sum(float(o.sum()) for o in night1.values()) / 3 == pytest.approx(1.0)
    night2 = mas.accumulate(night1, second)
    assert torch.allclose(night2["a"], night1["a"] + torch.tensor([[1.0, 1.0]]))
    assert torch.allclose(night2["b"], night1["b"] + torch.tensor([[1.0]]))


def test_penalty_is_zero_at_the_start_and_pulls_back() -> None:
    model = _model()
    omega = mas.accumulate(None, mas.importance(model, "default", SAMPLES))
    star = mas.snapshot(model, "default")
    assert mas.penalty(model, "default", omega, star).item() == 0.0
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    moved = mas.penalty(model, "default", omega, star).item()
    assert moved > 0
    optimizer = torch.optim.SGD(params, lr=0.01)
    for _ in range(20):
        optimizer.zero_grad()
        mas.penalty(model, "default", omega, star).backward()
        optimizer.step()
    assert mas.penalty(model, "default", omega, star).item() < moved


def test_penalty_acts_on_the_product_not_the_factors() -> None:
    """Re-parametrising B·A = (B·M)(M⁻¹·A) leaves ΔW, hence the penalty, unchanged."""
    model = _model()
    omega = mas.accumulate(None, mas.importance(model, "default", SAMPLES))
    star = mas.snapshot(model, "default")
    module = next(iter(mas.lora_modules(model, "default").values()))
    m = torch.eye(4) * 2.0
    with torch.no_grad():
        module.lora_B["default"].weight.copy_(module.lora_B["default"].weight @ m)
        module.lora_A["default"].weight.copy_(torch.linalg.inv(m) @ module.lora_A["default"].weight)
    assert mas.penalty(model, "default", omega, star).item() == pytest.approx(0.0, abs=1e-9)
