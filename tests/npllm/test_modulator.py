"""npllm/modulator.py: the routing network — untrained routing by centroid, top-k blends,
stable output slots, saved versions that load back or are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from npllm.config import ModulatorConfig
from npllm.errors import ModelError
from npllm.modulator import Modulator

SMALL = ModulatorConfig(hidden=32, max_adapters=4)
E = np.eye(384, dtype=np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _probs(mod: Modulator, q: np.ndarray) -> dict[str, float]:
    return mod.decide(q).probabilities


def test_modulator_size_and_untrained_routing_by_centroid() -> None:
    modulator = Modulator(ModulatorConfig())
    print(f"\nmodulator parameters: {modulator.parameter_count:,}")
    assert 1_000_000 <= modulator.parameter_count <= 5_000_000
    rng = np.random.default_rng(0)
    a, b = (v / np.linalg.norm(v) for v in rng.normal(size=(2, 384)))
    modulator.set_adapters({"alpha": a, "beta": b, "unroutable": None})
    near_a = a + 0.3 * rng.normal(size=384) / np.sqrt(384)
    decision = modulator.decide(near_a / np.linalg.norm(near_a))
    assert decision.chosen == [("alpha", 1.0)]
    assert set(decision.probabilities) == {"none", "alpha", "beta"}
    assert sum(decision.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    far = rng.normal(size=384)
    assert modulator.decide(far / np.linalg.norm(far)).chosen == []


def test_modulator_top_k_blends_with_weights_that_sum_to_one() -> None:
    modulator = Modulator(ModulatorConfig(top_k=2, temperature=0.5, none_similarity=0.0))
    rng = np.random.default_rng(1)
    a, b = (v / np.linalg.norm(v) for v in rng.normal(size=(2, 384)))
    modulator.set_adapters({"alpha": a, "beta": b})
    middle = (a + b) / np.linalg.norm(a + b)
    chosen = modulator.decide(middle).chosen
    assert [name for name, _ in chosen] in (["alpha", "beta"], ["beta", "alpha"])
    assert sum(w for _, w in chosen) == pytest.approx(1.0, abs=1e-3)


def test_adapters_keep_their_slot_and_a_reused_slot_starts_untrained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mod = Modulator(SMALL)
    mod.set_adapters({"a": E[0], "b": E[1], "c": E[2]})
    assert mod.names == ["a", "b", "c", None]
    with torch.no_grad():
        mod.head.bias[1:4] = torch.tensor([1.0, 2.0, 3.0])  # slots of a, b, c
    mod.set_adapters({"a": E[0], "c": E[2], "d": E[3]})  # b goes, d comes
    assert mod.names == ["a", "d", "c", None]
    assert mod.head.bias[1:4].tolist() == [1.0, 0.0, 3.0]  # d does not inherit b's
    assert set(mod.routable()) == {"a", "c", "d"}
    assert np.allclose(mod.routable()["d"].keys[0], E[3])
    # More adapters than slots (only if modulator.max_adapters was lowered: publishing keeps
    # within it): the ones that fit are routed, the others only served pinned — no error.
    mod.set_adapters({"c": E[2], **{k: E[i] for i, k in enumerate("vwxy")}})
    assert mod.names[2] == "c" and set(mod.routable()) == {"c", "v", "w", "x"}
    assert "5 routable adapters but modulator.max_adapters = 4" in caplog.text


def test_a_saved_modulator_loads_back_identical_and_bad_files_are_refused(
    tmp_path: Path,
) -> None:
    mod = Modulator(SMALL)
    mod.set_adapters({"a": E[0], "b": E[1]})
    with torch.no_grad():
        mod.head.weight.normal_()
    mod.save(tmp_path / "m.safetensors")
    back = Modulator(SMALL)
    back.load(tmp_path / "m.safetensors")
    back.set_adapters({"b": E[1], "a": E[0]})
    q = _unit(E[0] + E[1])
    assert _probs(back, q) == _probs(mod, q)

    with pytest.raises(ModelError, match="does not fit modulator.hidden = 64 .*hidden = 32"):
        Modulator(ModulatorConfig(hidden=64, max_adapters=4)).load(tmp_path / "m.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match=f"cannot load the modulator from {garbage}"):
        Modulator(SMALL).load(garbage)
    with torch.no_grad():
        mod.head.bias[0] = float("nan")
    mod.save(tmp_path / "nan.safetensors")
    with pytest.raises(ModelError, match="NaN or infinite weights"):
        Modulator(SMALL).load(tmp_path / "nan.safetensors")


def test_an_adapter_taught_questions_answers_inside_their_scope_only() -> None:
    """A scope is a union of balls around the questions an adapter was taught: a question
    that means the same (inside a ball) is routed to it; a neighbouring one, even nearer
    the adapter's centroid than that, is not."""
    from npllm.modulator import Scope

    config = ModulatorConfig(hidden=32, max_adapters=4, scope_similarity=0.8)
    mod = Modulator(config)
    taught = np.stack([E[0], E[1]])  # two questions, unrelated to each other
    mod.set_adapters({"facts": Scope(taught, np.full(2, config.scope_similarity, np.float32))})
    paraphrase = _unit(E[0] + 0.4 * E[5])  # cos 0.93 to the first question
    neighbour = _unit(E[0] + E[1] + 0.9 * E[6])  # cos 0.6 to each, 0.85 to their centroid
    assert mod.decide(paraphrase).chosen == [("facts", 1.0)]
    assert mod.decide(neighbour).chosen == []
    # The same adapter as a topic (its centroid, radius none_similarity) takes both.
    mod.set_adapters({"facts": _unit(E[0] + E[1])})
    assert mod.decide(neighbour).chosen == [("facts", 1.0)]


def test_a_question_nearer_a_known_neighbour_than_any_taught_one_is_left_to_the_base() -> None:
    """Inside a ball but nearer a neighbour (a question the adapter must leave alone) than
    to anything it was taught: not routed."""
    from npllm.modulator import Scope

    config = ModulatorConfig(hidden=32, max_adapters=4, scope_similarity=0.5)
    mod = Modulator(config)
    taught = E[[0]]
    neighbour = _unit(E[0] + E[1])  # cos 0.71 to the taught question
    near_neighbour = _unit(E[0] + 1.2 * E[1])  # cos 0.64 to it, 0.99 to the neighbour
    paraphrase = _unit(E[0] + 0.5 * E[2])  # cos 0.89 to it, 0.63 to the neighbour
    mod.set_adapters({"facts": Scope(taught, np.full(1, 0.5, np.float32), neighbour[None])})
    assert mod.decide(paraphrase).chosen == [("facts", 1.0)]
    assert mod.decide(near_neighbour).chosen == []
    mod.set_adapters({"facts": Scope(taught, np.full(1, 0.5, np.float32))})  # no neighbours
    assert mod.decide(near_neighbour).chosen == [("facts", 1.0)]
