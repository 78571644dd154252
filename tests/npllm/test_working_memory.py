"""Working memory fits the context budget: oldest turns go first, then least relevant memories."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from npllm.errors import RequestError
from npllm.memory import Recalled
from npllm.working_memory import assemble


class WordModel:
    """A stand-in tokenizer: one token per word; assembly does not depend on the real one."""

    def __init__(self, context_length: int) -> None:
        self.context_length = context_length

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return [0] * sum(len(m["content"].split()) + 1 for m in messages)


def _memory(i: int, score: float, kind: str = "note", words: int = 10) -> Recalled:
    return Recalled(i, f"fact{i} " + "w " * (words - 1), kind, "t", score, datetime.now(), 0)


def _turns(n: int, words: int = 10) -> list[dict[str, str]]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn{i} " + "w " * words}
        for i in range(n)
    ]


def test_everything_fits_when_there_is_room() -> None:
    wm = assemble(WordModel(1000), _turns(3), [_memory(1, 0.9)], "sys", 6, 50)  # type: ignore[arg-type]
    assert wm.dropped_turns == 0 and wm.dropped_memories == 0
    assert wm.messages[0]["role"] == "system"
    assert "fact1" in wm.messages[0]["content"]
    assert [m["content"].split()[0] for m in wm.messages[1:]] == ["turn0", "turn1", "turn2"]


def test_oldest_turns_go_first_then_least_relevant_memories() -> None:
    memories = [_memory(1, 0.5), _memory(2, 0.9), _memory(3, 0.7)]
    wm = assemble(WordModel(55), _turns(5), memories, "sys", 6, 10)  # type: ignore[arg-type]
    assert wm.dropped_turns == 4  # only the latest user turn is left
    assert wm.messages[-1]["content"].startswith("turn4")
    kept = [m.id for m in wm.memories]
    assert kept == [2, 3]  # the least relevant (0.5) went first
    assert wm.dropped_memories == 1
    assert len(wm.prompt_ids) <= 55 - 10


def test_recent_turns_limit_applies_before_the_budget() -> None:
    wm = assemble(WordModel(10_000), _turns(9), [], "sys", 3, 10)  # type: ignore[arg-type]
    assert wm.dropped_turns == 6
    assert wm.messages[1]["content"].startswith("turn6")


def test_taught_facts_come_after_past_exchanges() -> None:
    memories = [_memory(1, 0.95, kind="exchange"), _memory(2, 0.5)]
    system = assemble(WordModel(1000), _turns(1), memories, "sys", 6, 10).messages[0]["content"]  # type: ignore[arg-type]
    assert system.index("Earlier conversations") < system.index("Known facts")


def test_a_question_too_long_for_the_context_is_refused() -> None:
    question: Any = [{"role": "user", "content": "w " * 500}]
    with pytest.raises(RequestError) as err:
        assemble(WordModel(300), question, [_memory(1, 0.9)], "sys", 6, 10)  # type: ignore[arg-type]
    assert "the model's context holds 300" in str(err.value)
    assert err.value.param == "messages"
