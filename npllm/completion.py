"""Raw text completion (POST /v1/completions, Ollama's raw /api/generate): what an
editor's autocomplete asks for, with fill-in-the-middle when the base model has FIM tokens.

It shares the awake path's engine, adapters and routing (the modulator chooses from the
prompt's end, as it would from a question) but not its memory or its records: the prompt
is code around the cursor, not a question a memory answers, and autocomplete fires at
every pause in typing, so storing each completion would flood the replay buffer with
fragments nobody rates. The answer's `npllm` object still names the adapters used.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from npllm.errors import RequestError
from npllm.generation import GenerationParams
from npllm.text import check_storable, storable

# Fill-in-the-middle spellings (prefix, suffix, middle), prompt in PSM order:
# StarCoder / SmolLM-code / DeepSeek-style angle tokens and Qwen2.5-Coder's pipes.
FIM_STYLES = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
)
# How much of the prompt's end the modulator reads to route (characters).
ROUTING_TAIL = 1000


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    adapters: list[dict[str, Any]]
    timings: dict[str, float]
    truncated_prompt_tokens: int = 0
    fim: bool = False
    routing: dict[str, Any] = field(default_factory=dict)
    # As an Answer has them, so routes treat both alike: nothing recalled, nothing stored.
    interaction_id: None = None
    memories: list[dict[str, Any]] = field(default_factory=list)
    cached: bool = False

    def metadata(self) -> dict[str, Any]:
        return {
            "interaction_id": None,  # completions are not recorded (module doc)
            "adapters": self.adapters,
            "routing": self.routing,
            "fim": self.fim,
            "truncated": {"prompt_tokens": self.truncated_prompt_tokens},
            "timings": self.timings,
        }


def fim_tokens(tokenizer: Any) -> tuple[int, int, int] | None:
    """The ids of the tokenizer's (prefix, suffix, middle) FIM tokens; None without them."""
    vocab = tokenizer.get_vocab()
    for style in FIM_STYLES:
        if all(token in vocab for token in style):
            return (vocab[style[0]], vocab[style[1]], vocab[style[2]])
    return None


def prompt_ids(
    tokenizer: Any, prompt: str, suffix: str | None, room: int, model_id: str
) -> tuple[list[int], int, bool]:
    """The prompt's token ids (FIM when `suffix` is given), at most `room` of them: a long
    prefix loses its start, a long suffix its end (the text nearest the cursor stays).
    Returns the ids, how many tokens were cut, and whether it is a FIM prompt."""
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    if suffix:
        fim = fim_tokens(tokenizer)
        if fim is None:
            raise RequestError(
                f"suffix (fill-in-the-middle) needs a base model with FIM tokens; {model_id} "
                "has none: send the prompt without suffix, or use a code model such as "
                "Qwen2.5-Coder or StarCoder2 as models.base",
                param="suffix",
            )
        before, after = encode(prompt), encode(suffix)
        budget = room - 3
        # Keep at most half the budget for the suffix when both are long.
        keep_after = min(len(after), max(budget // 2, budget - len(before)))
        keep_before = min(len(before), budget - keep_after)
        cut = len(before) - keep_before + len(after) - keep_after
        ids = [fim[0], *before[len(before) - keep_before :], fim[1], *after[:keep_after], fim[2]]
        return ids, cut, True
    ids = tokenizer.encode(prompt)
    cut = max(0, len(ids) - room)
    return ids[cut:], cut, False


def complete(
    awake: Any,
    prompt: str,
    suffix: str | None,
    params: GenerationParams,
    on_text: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    adapters: list[str] | None = None,
    on_start: Callable[[], None] | None = None,
) -> Completion:
    """Complete `prompt` (up to `suffix`) on the calling (model) thread."""
    started = time.perf_counter()
    check_storable(prompt, "prompt")
    if suffix:
        check_storable(suffix, "suffix")
    if not prompt and not suffix:
        raise RequestError("prompt is empty", param="prompt")
    engine = awake.engine
    room = engine.context_length - params.max_new_tokens
    if room < 8:
        raise RequestError(
            f"max_tokens {params.max_new_tokens} leaves no room for the prompt in the "
            f"model's {engine.context_length}-token context",
            param="max_tokens",
        )
    timings: dict[str, float] = {}
    t = time.perf_counter()
    ids, cut, fim = prompt_ids(engine.tokenizer, prompt, suffix, room, engine.model_id)
    timings["prompt_ms"] = round((time.perf_counter() - t) * 1000, 2)
    t = time.perf_counter()
    tail = prompt[-ROUTING_TAIL:] if prompt.strip() else (suffix or "")[:ROUTING_TAIL]
    decision = awake.route(awake.embedder.embed_one(tail), adapters)
    used = [
        {"name": n, "version": awake.adapters.alias[n].version, "weight": w}
        for n, w in decision.chosen
    ]
    timings["route_ms"] = round((time.perf_counter() - t) * 1000, 2)
    if on_start:
        on_start()
    if on_text is not None:
        shown = on_text
        on_text = lambda text: shown(storable(text))  # noqa: E731
    gen = engine.generate(ids, params, on_text=on_text, cancel=cancel, adapters=decision.chosen)
    timings["generate_ms"] = round(gen.seconds * 1000, 2)
    timings["tokens_per_s"] = (
        round(gen.completion_tokens / gen.seconds, 2) if gen.seconds > 0 else 0.0
    )
    timings["total_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return Completion(
        text=storable(gen.text),
        finish_reason=gen.finish_reason,
        prompt_tokens=len(ids),
        completion_tokens=gen.completion_tokens,
        adapters=used,
        timings=timings,
        truncated_prompt_tokens=cut,
        fim=fim,
        routing={"mode": decision.mode, "probabilities": decision.probabilities},
    )
