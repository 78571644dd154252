"""What a generation request is and what it produced, with the chat encoding every engine
shares: the types that cross the engine seam.

A light module (no torch, like vLLM's standalone ``sampling_params.py``): the engine
protocol (npllm/engines/base.py), the API and the awake path name these types without
loading the torch base LLM (npllm/llm.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from npllm.errors import RequestError

# Used when a model ships no chat template of its own.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

# Below these, sampling is mapped (GenerationParams.__post_init__).
TEMPERATURE_FLOOR = 1e-4
TOP_P_FLOOR = 1e-6


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings of one request; greedy when temperature is 0.

    The penalties follow OpenAI's definitions, on the tokens generated so far:
    logit −= frequency_penalty × count + presence_penalty × (count > 0);
    ``repeat_penalty`` is llama.cpp's (and transformers') multiplicative one over the
    last ``repeat_last_n`` tokens (1 = off)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64

    def __post_init__(self) -> None:
        # What an engine can compute, on both engines alike: logits are divided by the
        # temperature in float32, so a tiny one (a denormal like 5e-324 is 0 in float32)
        # overflows to inf/NaN. Below TEMPERATURE_FLOOR sampling is greedy, as at 0 — the
        # distribution is already a spike on the most likely token there. top_p below
        # TOP_P_FLOOR is raised to it: the nucleus is then the single most likely token,
        # which is what any smaller positive top_p keeps anyway.
        for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise RequestError(f"{name} must be a finite number", param=name)
        if self.temperature < TEMPERATURE_FLOOR:
            object.__setattr__(self, "temperature", 0.0)
        if 0 < self.top_p < TOP_P_FLOOR:
            object.__setattr__(self, "top_p", TOP_P_FLOOR)


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string), "length" or "cancelled"
    seconds: float = 0.0
    # With a draft model: tokens it proposed and how many of them the base LLM accepted.
    draft: dict[str, Any] | None = None
    # Prompt tokens whose KV came from a cached prefix instead of being evaluated (llama.cpp).
    cached_tokens: int = 0


def ensure_chat_template(tokenizer: Any) -> Any:
    """`tokenizer`, given FALLBACK_TEMPLATE when its model ships no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_TEMPLATE
    return tokenizer


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the chat, ending with the assistant's generation prompt (every engine
    and the parity probe encode with this, so they see the same tokens)."""
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids)
