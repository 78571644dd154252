"""The night asks the serving engine, not teacher forcing, what a version will answer.

A taught answer counts as learned only when the engine that serves it in the morning —
llama.cpp on the quantised GGUF by default, with the served framing (the system prompt)
and the server's sampling defaults (greedy here; its frequency penalty counts the prompt)
— reproduces it. Teacher forcing in fp32 said "every taught answer reproduced exactly"
on nights whose answers were wrong the next morning (issue 21); the trainer's own check
now emulates the penalties with a margin (consolidation/trainer.py: `Sampler`), and this
module checks the result through the engine itself.

`Served` holds the worker's own engine instance (npllm/engines: the same member the daemon
runs), loads candidate adapter directories into it under private names and answers chats
greedily with the server's defaults. It also answers the neighbouring questions before
and after training, for the keep-targets and the gate's locality check.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npllm.config import Settings
from npllm.generation import GenerationParams
from npllm.versions import Version

Chat = list[dict[str, str]]


def served_params(settings: Settings, max_tokens: int) -> GenerationParams:
    """Greedy, with the server's defaults for everything a request does not say — what a
    user asking the daemon gets."""
    server = settings.server
    return GenerationParams(
        max_new_tokens=max_tokens,
        temperature=0.0,
        frequency_penalty=server.frequency_penalty,
        presence_penalty=server.presence_penalty,
        repeat_penalty=server.repeat_penalty,
        repeat_last_n=server.repeat_last_n,
    )


def framed(settings: Settings, messages: Chat) -> Chat:
    """A conversation as the awake path hands it to the engine with no memory retrieved:
    the system prompt first (the user's own system messages after it)."""
    from npllm.working_memory import system_message

    own = [m["content"] for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": system_message(settings.memory.system_prompt, own, [])},
            *turns]  # fmt: skip


def same_answer(served: str, taught: str) -> bool:
    """The served answer is the taught one (whitespace aside)."""
    return " ".join(served.split()) == " ".join(taught.split())


@dataclass
class Served:
    """The worker's serving engine, and what it has loaded."""

    settings: Settings
    engine: Any  # an npllm.engines.base.Engine
    # The worker's control (services/worker.py), called before each answer: a request to
    # the daemon waits for one short generation here, not for the whole batch of checks.
    control: Callable[[], None] | None = None
    _serial: Any = None

    def __post_init__(self) -> None:
        self._serial = itertools.count(1)

    def load(self, adapters: dict[str, Path], snapshot: bool = False) -> dict[str, str]:
        """Serve these adapter directories (label → directory) side by side, replacing what
        was loaded; label → the name to pass to `answers`. Each is converted as a publish
        would (llama.cpp: a GGUF LoRA beside its peft files). `snapshot`: the directories are
        tonight's training, saved anew since the last load — converted again, and their
        conversion is checked against peft when they are published, not here."""
        from npllm.engines import gguf_export

        serial = next(self._serial)
        versions = [Version(f"night-{label}", serial, path, "candidate")
                    for label, path in adapters.items()]  # fmt: skip
        for version in versions if snapshot else []:
            (version.path / gguf_export.GGUF_FILE).unlink(missing_ok=True)
            (version.path / gguf_export.PARITY_MARK).touch()
        served = {v.adapter for v in self.engine.adapters.serve(versions)}
        missing = [label for label, v in zip(adapters, versions, strict=True)
                   if v.adapter not in served]  # fmt: skip
        if missing:
            from npllm.errors import AdapterError

            raise AdapterError(f"the serving engine could not load {', '.join(missing)}")
        return {label: v.adapter for label, v in zip(adapters, versions, strict=True)}

    def answers(self, chats: Sequence[Chat], adapter: str | None, max_tokens: int) -> list[str]:
        """Each chat's greedy answer through the engine, in the served framing, with
        `adapter` (a name `load` returned; None: the bare base)."""
        params = served_params(self.settings, max_tokens)
        chosen = [] if adapter is None else [(adapter, 1.0)]
        out = []
        for chat in chats:
            if self.control is not None:
                self.control()
            ids = self.engine.encode_chat(framed(self.settings, chat))
            out.append(self.engine.generate(ids, params, adapters=chosen).text.strip())
        return out

    def tokens(self, text: str) -> int:
        return len(self.engine.tokenizer.encode(text, add_special_tokens=False))

    def close(self) -> None:
        self.engine.close()


def reproduced(served: Served, adapter: str, taught: Sequence[Chat]) -> list[bool]:
    """Does the engine with `adapter` answer each taught chat (its last turn is the answer)
    exactly as taught?"""
    out = []
    for chat in taught:
        *question, answer = chat
        limit = served.tokens(answer["content"]) + 8
        (text,) = served.answers([question], adapter, limit)
        out.append(same_answer(text, answer["content"]))
    return out
