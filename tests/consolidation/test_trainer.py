"""The LoRA trainer on a tiny model: loss on answers only, continuation, MAS against forgetting.

The tiny Llama uses SmolLM2's real tokenizer and chat template (from the model cache);
what is tested is the training logic, not the language model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from consolidation import mas
from consolidation.trainer import (
    IGNORE,
    chat_loss,
    encode_example,
    plan_budget,
    reproduced,
    train_adapter,
    yielding,
)
from npllm.adapters import AdapterShape
from npllm.config import TrainingConfig

from ..conftest import cached_base, save_tiny_llama

SYSTEM = "You are a test."


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cached_base())


def _chat(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


TASK_A = [
    _chat(f"Code word for {c}?", f"The code word for {c} is {w}.")
    for c, w in [("red", "TULIP"), ("blue", "OCEAN"), ("green", "FERN"), ("gold", "SUN")]
]
TASK_B = [
    _chat(f"Code word for {c}?", f"The code word for {c} is {w}.")
    for c, w in [("red", "BRICK"), ("blue", "JEANS"), ("green", "LIME"), ("gold", "COIN")]
]
# 4 examples, batch 4: 1 step per epoch, exactly 8 steps a night (no floor, no early stop:
# these tests compare MAS, the anchor and resuming on equal training); lambda found by
# trying 0.1-10 (10 freezes the adapter: task B is not learned at all).
CONFIG = TrainingConfig(
    learning_rate=0.002,
    epochs=8,
    incremental_epochs=8,
    min_steps=0,
    recall_check_every=0,
    batch_size=4,
    grad_accumulation=1,
    lora_dropout=0.0,
    mas_lambda=0.3,
    anchor_weight=0.0,  # MAS alone here; the anchor has its own test
)
SHAPE = AdapterShape.from_config(CONFIG)


def test_the_budget_comes_from_the_data_with_a_floor_and_a_ceiling() -> None:
    defaults = TrainingConfig()
    big = plan_budget(100, defaults)
    assert big.steps == 25 * 10  # ceil(100 / (4 * 1)) x 10 epochs
    assert big.reason == "initial: ceil(100 / 4) x 10 epochs = 250"
    more = plan_budget(100, defaults, incremental=True)  # the next version: 8 passes
    assert more.steps == 25 * 8 and more.reason.startswith("incremental:")
    one = plan_budget(1, defaults)  # a single correction still gets the floor
    assert one.steps == defaults.min_steps == 24
    assert one.reason == (
        "initial: ceil(1 / 4) x 10 epochs = 10, raised to training.min_steps = 24"
    )
    capped = plan_budget(10_000, defaults.model_copy(update={"max_steps": 50}))
    assert capped.steps == 50 and capped.reason.endswith("capped at training.max_steps = 50")
    assert plan_budget(8, CONFIG).steps == 2 * 8


def test_only_the_answer_is_learned(tokenizer: Any) -> None:
    ids, labels = encode_example(tokenizer, TASK_A[0], SYSTEM, 512)
    answer = [t for t in labels if t != IGNORE]
    assert tokenizer.decode(answer) == "The code word for red is TULIP.<|im_end|>"
    assert labels[: len(ids) - len(answer)] == [IGNORE] * (len(ids) - len(answer))
    assert SYSTEM in tokenizer.decode(ids)  # the serving system prompt is used when none is given


@pytest.fixture(scope="module")
def own_base(settings: Any) -> Any:
    """A private copy of the real base model (the trainer wraps and unwraps it)."""
    from npllm.llm import load_base_llm

    return load_base_llm(settings)


@pytest.fixture(scope="module")
def night_1(own_base: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Task A learned on the real base without MAS or anchor: the first night of the MAS
    test, and the no-anchor arm of the anchor test."""
    out = tmp_path_factory.mktemp("night-1") / "v1"
    result = train_adapter(own_base.model, own_base.tokenizer, TASK_A, CONFIG, SHAPE, out, SYSTEM)
    return out, result


def test_mas_keeps_what_the_first_night_learned(
    own_base: Any, night_1: Any, tmp_path: Path
) -> None:
    """Night 1 learns task A; night 2 learns conflicting task B, with and without MAS."""
    from peft import PeftModel

    model, tokenizer = own_base.model, own_base.tokenizer
    v1, first = night_1
    assert first.losses[-1] < first.losses[0] / 4
    assert first.base_sha256_before == first.base_sha256_after
    with_v1 = PeftModel.from_pretrained(model, str(v1))
    learned_a = chat_loss(with_v1, tokenizer, TASK_A, SYSTEM)
    samples = [encode_example(tokenizer, m, SYSTEM, 512)[0] for m in TASK_A]
    omega = mas.accumulate(None, mas.importance(with_v1, "default", samples))
    with_v1.unload()

    results = {}
    for label, o in (("plain", None), ("mas", omega)):
        out = tmp_path / f"v2-{label}"
        train_adapter(model, tokenizer, TASK_B, CONFIG, SHAPE, out, SYSTEM, init_from=v1, omega=o)
        v2 = PeftModel.from_pretrained(model, str(out))
        results[label] = (
            chat_loss(v2, tokenizer, TASK_A, SYSTEM),
            chat_loss(v2, tokenizer, TASK_B, SYSTEM),
        )
        v2.unload()
    print(
        f"\ntask A loss after night 1: {learned_a:.3f}; after night 2 without MAS "
        f"{results['plain'][0]:.3f}, with MAS {results['mas'][0]:.3f}; task B loss without "
        f"MAS {results['plain'][1]:.3f}, with MAS {results['mas'][1]:.3f}"
    )
    # Without MAS night 2 overwrites night 1; with MAS task A is kept far better ...
    assert results["plain"][0] > 10 * learned_a
    assert results["mas"][0] < results["plain"][0] / 2
    # ... and task B is still learned (the penalty does not freeze the adapter).
    assert results["mas"][1] < first.losses[0] / 4


def test_training_stops_once_every_taught_answer_is_reproduced(
    own_base: Any, tmp_path: Path
) -> None:
    """One correction, the shipped budget rules: training stops at the first check where
    the taught answer is the greedy choice at every position, says so, and greedy
    decoding then gives the answer word for word."""
    model, tokenizer = own_base.model, own_base.tokenizer
    config = TrainingConfig(anchor_weight=0.0)  # the shipped budget and learning rate
    one = [_chat("What port does the Blorvik relay use?", "The Blorvik relay uses port 5122.")]
    out = tmp_path / "one"
    result = train_adapter(model, tokenizer, one, config, SHAPE, out, SYSTEM)
    assert result.steps == config.min_steps  # raised to the floor: 1 example, 10 epochs
    assert len(result.losses) < result.steps
    assert result.stop_reason == (
        f"stopped at step {len(result.losses)} of {result.steps}: every taught answer (1) "
        "reproduced exactly"
    )
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(model, str(out))
    try:
        pad = tokenizer.pad_token_id or 0
        encoded = [encode_example(tokenizer, m, SYSTEM, 512) for m in one + TASK_A[:1]]
        assert reproduced(adapted, encoded, pad) == [True, False]
        prompt = torch.tensor([encoded[0][0][: encoded[0][1].index(next(
            t for t in encoded[0][1] if t != IGNORE))]])  # fmt: skip
        said = adapted.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                max_new_tokens=16, do_sample=False)  # fmt: skip
        assert "The Blorvik relay uses port 5122." in tokenizer.decode(said[0, prompt.shape[1] :])
    finally:
        adapted.unload()


GENERIC = [
    "The quick brown fox jumps over the lazy dog.",
    "A list in Python can hold items of different types.",
    "She opened the window to let some fresh air into the room.",
]


def test_the_anchor_keeps_generic_text_as_the_base_predicts_it(
    own_base: Any, night_1: Any, tmp_path: Path
) -> None:
    """training.anchor_weight: task A is learned as well, plain text drifts far less."""
    from peft import PeftModel

    model, tokenizer = own_base.model, own_base.tokenizer

    @torch.no_grad()
    def generic_loss(m: Any) -> float:
        ids = [torch.tensor([tokenizer.encode(s)]) for s in GENERIC]
        return sum(float(m(input_ids=x, labels=x).loss) for x in ids) / len(ids)

    base = generic_loss(model)
    drift, learned = {}, {}
    for weight in (0.0, 3.0):
        out = night_1[0] if weight == 0.0 else tmp_path / f"anchor-{weight}"
        if weight:
            config = CONFIG.model_copy(update={"anchor_weight": weight})
            train_adapter(model, tokenizer, TASK_A, config, SHAPE, out, SYSTEM)
        adapted = PeftModel.from_pretrained(model, str(out))
        drift[weight] = generic_loss(adapted) - base
        learned[weight] = chat_loss(adapted, tokenizer, TASK_A, SYSTEM)
        adapted.unload()
    print(f"\ngeneric loss drift without / with anchor: {drift}; task A loss: {learned}")
    assert drift[0.0] > 0.1 and drift[3.0] < drift[0.0] / 3
    assert learned[3.0] < 0.1


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_where_it_would_have(
    tokenizer: Any, tmp_path: Path
) -> None:
    """Stopped after 2 of 4 steps (dropout on, so random state matters), resumed: the same
    losses and the same adapter as an uninterrupted run, with MAS against a previous version.
    Exactness does not depend on the model: a tiny one with the real tokenizer."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(save_tiny_llama(tmp_path / "tiny"))
    model.requires_grad_(False)  # frozen, as the base LLM is
    config = CONFIG.model_copy(
        update={"epochs": 2, "batch_size": 1, "lora_dropout": 0.1, "checkpoint_every": 1}
    )
    data = TASK_A[:2]  # 2 examples, batch 1: 2 steps per epoch, 4 in all
    start = tmp_path / "start"
    train_adapter(model, tokenizer, TASK_B[:1], CONFIG.model_copy(update={"epochs": 1}), SHAPE,
                  start, SYSTEM)  # fmt: skip
    from peft import PeftModel

    with_start = PeftModel.from_pretrained(model, str(start))
    omega = mas.accumulate(
        None,
        mas.importance(with_start, "default", [encode_example(tokenizer, data[0], SYSTEM, 64)[0]]),
    )
    with_start.unload()
    kwargs: dict[str, Any] = {"init_from": start, "omega": omega, "seed": 7}
    whole = train_adapter(model, tokenizer, data, config, SHAPE, tmp_path / "whole", SYSTEM,
                          **kwargs)  # fmt: skip
    checkpoint = tmp_path / "ckpt"

    def stop_after_step_2() -> None:  # as the daemon does: at the next call after
        if (checkpoint / "step-000002" / "state.pt").exists():
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        train_adapter(model, tokenizer, data, config, SHAPE, tmp_path / "cut", SYSTEM,
                      control=stop_after_step_2, checkpoint=checkpoint, **kwargs)  # fmt: skip
    assert "lora_A" not in str(model)  # the stopped run took its LoRA layers out again
    assert [p.name for p in checkpoint.iterdir()] == ["step-000002"]
    resumed = train_adapter(model, tokenizer, data, config, SHAPE, tmp_path / "resumed", SYSTEM,
                            checkpoint=checkpoint, **kwargs)  # fmt: skip
    assert resumed.resumed_at == 2 and resumed.metrics()["resumed_at_step"] == 2
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-4)
    a = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_cycle_yields_inside_every_block_forward_and_backward() -> None:
    """The sleep worker's control runs at each block of the model, in the forward and the
    backward pass: a request waits for one block's compute, not for a whole step; a stop
    raised there ends the step; outside the context the model is as it was."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                    num_attention_heads=2, num_key_value_heads=1)
    )  # fmt: skip
    ids = torch.tensor([[1, 2, 3, 4]])
    seen: list[str] = []
    phase = "forward"

    def control() -> None:
        seen.append(phase)
        if phase == "backward" and stop_in_backward:
            raise KeyboardInterrupt("stopped mid-backward")

    stop_in_backward = False
    with yielding(model, control):
        loss = model(input_ids=ids, labels=ids).loss
        phase = "backward"
        loss.backward()
        assert seen == ["forward"] * 3 + ["backward"] * 3
        seen.clear()
        stop_in_backward, phase = True, "forward"
        loss = model(input_ids=ids, labels=ids).loss
        phase = "backward"
        with pytest.raises(KeyboardInterrupt, match="stopped mid-backward"):
            loss.backward()
        assert seen == ["forward"] * 3 + ["backward"]
    seen.clear()
    model(input_ids=ids, labels=ids).loss.backward()
    assert seen == []


def test_with_a_held_out_set_the_weights_kept_still_reproduce_the_corrections(
    own_base: Any, tmp_path: Path
) -> None:
    """Regression (b): with corrections and a held-out set both present, the weights with
    the best held-out loss were restored after the stop — from before the corrections were
    learned — while the run reported them recalled. The best is now taken only among
    weights that reproduce every correction, and what is saved is what is reported."""
    model, tokenizer = own_base.model, own_base.tokenizer
    config = TrainingConfig(anchor_weight=0.0, patience=1)
    taught = [_chat("What port does the Blorvik relay use?", "The Blorvik relay uses port 5122.")]
    # Held-out answers that the correction makes less likely: their loss is best at the start.
    held_out = [_chat("What port does the Blorvik relay use?", "It uses port 80."),
                _chat("Which port is the Blorvik relay on?", "Port 80.")]  # fmt: skip
    out = tmp_path / "held"
    result = train_adapter(model, tokenizer, taught, config, SHAPE, out, SYSTEM,
                           held_out=held_out, recall=[0])  # fmt: skip
    assert result.stop_reason.startswith("stopped at step"), result.stop_reason
    assert result.recalled == 1
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(model, str(out))
    try:
        encoded = [encode_example(tokenizer, taught[0], SYSTEM, 512)]
        assert reproduced(adapted, encoded, tokenizer.pad_token_id or 0) == [True]
    finally:
        adapted.unload()


def test_an_answer_the_run_does_not_wait_for_neither_holds_it_nor_grows_its_budget(
    own_base: Any, tmp_path: Path
) -> None:
    """A correction beside liked answers no adapter can all reproduce (one prompt, two
    answers): waiting for every answer spends the budget; waiting for the correction alone
    stops once it is reproduced and says how many of the others were."""
    import re

    model, tokenizer = own_base.model, own_base.tokenizer
    config = TrainingConfig(anchor_weight=0.0)
    examples = [
        _chat("What port does the Blorvik relay use?", "The Blorvik relay uses port 5122."),
        _chat("Name a fruit.", "Apple."),
        _chat("Name a fruit.", "Banana."),
    ]
    every = train_adapter(model, tokenizer, examples, config, SHAPE, tmp_path / "every",
                          SYSTEM, recall=[0, 1, 2])  # fmt: skip
    assert every.stop_reason.startswith(f"budget spent: {every.steps} of {every.steps} steps")
    assert len(every.losses) == every.steps
    one = train_adapter(model, tokenizer, examples, config, SHAPE, tmp_path / "one", SYSTEM,
                        recall=[0, 1, 2], required=[True, False, False],
                        repeat=[2, 1, 1])  # fmt: skip
    assert len(one.losses) < one.steps, one.stop_reason
    assert re.fullmatch(
        rf"stopped at step {len(one.losses)} of {one.steps}: every required answer \(1\) "
        r"reproduced exactly, [01] of the 2 others",
        one.stop_reason,
    ), one.stop_reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"recall": [0], "required": [True, False]}, "required must match recall"),
        ({"repeat": [1]}, "repeat the examples, one per item"),
        ({"repeat": [1, 0]}, "repeat must be at least 1"),
    ],
)
def test_required_and_repeat_that_do_not_fit_the_examples_are_refused(
    own_base: Any, tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        train_adapter(own_base.model, own_base.tokenizer, TASK_A[:2], CONFIG, SHAPE,
                      tmp_path / "x", SYSTEM, **kwargs)  # fmt: skip
