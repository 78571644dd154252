"""Working memory: the context of the current request, assembled within the model's budget.

The prompt is the system prompt plus retrieved memories, then the most recent
turns of the conversation. When it does not fit in the context window (leaving
room for ``max_tokens``), the oldest turns go first, then the least relevant
memories; the user's latest message is never dropped — if it alone does not fit,
the request is refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from npllm.errors import RequestError
from npllm.memory import Recalled


@dataclass
class WorkingMemory:
    messages: list[dict[str, str]]  # what the base LLM sees
    prompt_ids: list[int]
    memories: list[Recalled]  # the memories that made it into the prompt
    dropped_turns: int
    dropped_memories: int


def system_message(system_prompt: str, own: list[str], memories: list[Recalled]) -> str:
    """Past exchanges are the model's own earlier answers and are marked as such; what the
    user taught (notes, facts, documents) comes last, nearest the question, because
    small models follow the most recent context most closely."""
    parts = [system_prompt, *own]
    taught = [m for m in memories if m.kind != "exchange"]
    exchanges = [m for m in memories if m.kind == "exchange"]
    if exchanges:
        parts.append(
            "Earlier conversations (may contain mistakes):\n"
            + "\n".join(f"- {m.text}" for m in exchanges)
        )
    if taught:
        parts.append("Known facts (trust these):\n" + "\n".join(f"- {m.text}" for m in taught))
    return "\n\n".join(p for p in parts if p)


def assemble(
    llm: Any,  # an engine (npllm/engines/base.py): encode_chat and context_length
    conversation: list[dict[str, str]],
    memories: list[Recalled],
    system_prompt: str,
    recent_turns: int,
    max_new_tokens: int,
) -> WorkingMemory:
    """Fit system prompt, memories and recent turns into the context window."""
    own_system = [m["content"] for m in conversation if m["role"] == "system"]
    turns = [m for m in conversation if m["role"] != "system"]
    dropped_turns = max(0, len(turns) - recent_turns)
    turns = turns[dropped_turns:]
    kept = sorted(memories, key=lambda m: m.score, reverse=True)  # dropped from the end
    budget = llm.context_length - max_new_tokens
    while True:
        system = system_message(system_prompt, own_system, kept)
        messages = [{"role": "system", "content": system}, *turns]
        ids = llm.encode_chat(messages)
        if len(ids) <= budget:
            return WorkingMemory(messages, ids, kept, dropped_turns, len(memories) - len(kept))
        if len(turns) > 1:
            turns = turns[1:]
            dropped_turns += 1
        elif kept:
            kept = kept[:-1]
        else:
            raise RequestError(
                f"the prompt needs {len(ids)} tokens and max_tokens asks for {max_new_tokens} "
                f"more, but the model's context holds {llm.context_length}; shorten the last "
                "message or lower max_tokens",
                param="messages",
            )
