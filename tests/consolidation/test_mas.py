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
    omega = mas.importance(model, "default", SAMPLES, factored=False)
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
    # What is stored: the dense importance's row sums and column shares, exactly.
    factored = mas.importance(model, "default", SAMPLES)[name]
    assert isinstance(factored, mas.Factored)
    assert torch.allclose(factored.rows, reference.sum(1), rtol=1e-4, atol=1e-6)
    assert torch.allclose(factored.cols, reference.sum(0) / reference.sum(), rtol=1e-4)
    assert factored.rows.numel() + factored.cols.numel() == sum(reference.shape)


def test_importance_is_not_computed_from_a_batch_mean() -> None:
    model = _model()
    omega = mas.importance(model, "default", SAMPLES, factored=False)
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
    first: mas.Matrices = {"a": torch.tensor([[1.0, 3.0]]), "b": torch.tensor([[2.0]])}
    second: mas.Matrices = {"a": torch.tensor([[10.0, 10.0]]), "b": torch.tensor([[10.0]])}
    night1 = mas.accumulate(None, first)
    assert sum(float(o.sum()) for o in night1.values()) / 3 == pytest.approx(1.0)  # type: ignore[union-attr]
    night2 = mas.accumulate(night1, second)
    assert torch.allclose(night2["a"], night1["a"] + torch.tensor([[1.0, 1.0]]))  # type: ignore[operator]
    assert torch.allclose(night2["b"], night1["b"] + torch.tensor([[1.0]]))  # type: ignore[operator]


def test_factored_importances_keep_both_marginals_of_their_sum() -> None:
    """Two nights of factored Ω add up to a factored Ω whose row and column sums are those
    of the sum of the two dense importances (normalised), and it is saved and read back."""
    rng = torch.Generator().manual_seed(0)
    dense = [torch.rand(3, 5, generator=rng), torch.rand(3, 5, generator=rng) * 4]
    factored = [{"w": mas.Factored.of(d)} for d in dense]
    total = mas.accumulate(mas.accumulate(None, factored[0]), factored[1])["w"]
    expected = mas.accumulate(mas.accumulate(None, {"w": dense[0]}), {"w": dense[1]})["w"]
    assert isinstance(total, mas.Factored) and isinstance(expected, torch.Tensor)
    assert torch.allclose(total.dense().sum(1), expected.sum(1), rtol=1e-5)
    assert torch.allclose(total.dense().sum(0), expected.sum(0), rtol=1e-5)


def test_omega_is_saved_small_and_an_old_dense_file_is_read_factored(tmp_path: Any) -> None:
    from safetensors.torch import save_file

    model = _model()
    omega = mas.importance(model, "default", SAMPLES)
    mas.save(omega, tmp_path / "new.safetensors")
    back = mas.load(tmp_path / "new.safetensors")
    assert set(back) == set(omega)
    for name, layer in back.items():
        assert isinstance(layer, mas.Factored)
        assert torch.equal(layer.rows, omega[name].rows)  # type: ignore[union-attr]
    dense = mas.importance(model, "default", SAMPLES, factored=False)
    save_file({k: v.contiguous() for k, v in dense.items()}, str(tmp_path / "old.safetensors"))  # type: ignore[union-attr]
    old = mas.load(tmp_path / "old.safetensors")
    name = next(iter(old))
    assert torch.allclose(old[name].rows, omega[name].rows, rtol=1e-5)  # type: ignore[union-attr]


@pytest.mark.parametrize("factored", [True, False])
def test_penalty_is_zero_at_the_start_and_pulls_back(factored: bool) -> None:
    model = _model()
    omega = mas.accumulate(None, mas.importance(model, "default", SAMPLES, factored=factored))
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


def test_the_factored_penalty_is_the_dense_penalty_of_the_rank_one_omega() -> None:
    """Computed from the LoRA factors alone, it equals Σ R_i c_j (ΔW − ΔW*)²_ij."""
    model = _model()
    omega = mas.accumulate(None, mas.importance(model, "default", SAMPLES))
    star = mas.snapshot(model, "default")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(0.1 * torch.randn_like(p))
    dense = {n: o.dense() for n, o in omega.items()}  # type: ignore[union-attr]
    factored = mas.penalty(model, "default", omega, star).item()
    assert factored == pytest.approx(mas.penalty(model, "default", dense, star).item(), rel=1e-4)


@pytest.mark.parametrize("factored", [True, False])
def test_penalty_acts_on_the_product_not_the_factors(factored: bool) -> None:
    """Re-parametrising B·A = (B·M)(M⁻¹·A) leaves ΔW, hence the penalty, unchanged."""
    model = _model()
    omega = mas.accumulate(None, mas.importance(model, "default", SAMPLES, factored=factored))
    star = mas.snapshot(model, "default")
    module = next(iter(mas.lora_modules(model, "default").values()))
    m = torch.eye(4) * 2.0
    with torch.no_grad():
        module.lora_B["default"].weight.copy_(module.lora_B["default"].weight @ m)
        module.lora_A["default"].weight.copy_(torch.linalg.inv(m) @ module.lora_A["default"].weight)
    assert mas.penalty(model, "default", omega, star).item() == pytest.approx(0.0, abs=1e-9)
