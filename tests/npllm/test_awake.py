"""npllm/awake.py on its own: the real database and embedder, a fake engine that records
the prompt it is given (what the awake path does does not depend on the model's words)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from npllm.awake import AwakePath
from npllm.errors import RequestError
from npllm.generation import Generation, GenerationParams

from ..conftest import make_settings


class CharTokenizer:
    """One character = one token."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


class RecordingEngine:
    """The Engine protocol's surface the awake path uses; one character = one token."""

    model_id = "fake-engine"
    context_length = 4096
    tokenizer = CharTokenizer()

    def __init__(self) -> None:
        self.adapters = SimpleNamespace(alias={}, changes=0)
        self.prompts: list[str] = []

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return [ord(c) for c in "".join(f"<{m['role']}>{m['content']}" for m in messages)]

    def generate(self, prompt_ids: list[int], params: Any, **_: Any) -> Generation:
        self.prompts.append("".join(chr(i) for i in prompt_ids))
        return Generation("Use port 4471.", len(prompt_ids), 5, "stop", seconds=0.01)


def test_an_answer_uses_the_recalled_memory_is_stored_and_cached(
    fresh_database: Any, embedder: Any, tmp_path: Any
) -> None:
    settings = make_settings(tmp_path)
    engine = RecordingEngine()
    awake = AwakePath(settings, fresh_database.pool, engine, embedder)  # type: ignore[arg-type]
    awake.remember("The zorblax service listens on port 4471.", "test", "fact")
    chat = [{"role": "user", "content": "Which port does the zorblax service listen on?"}]

    first = awake.answer(chat, GenerationParams(max_new_tokens=8))
    assert "The zorblax service listens on port 4471." in engine.prompts[0]  # recalled
    assert first.text == "Use port 4471." and not first.cached and len(first.memories) == 1
    assert first.routing["mode"] == "modulator" and first.adapters == []

    again = awake.answer(chat, GenerationParams(max_new_tokens=8))
    assert again.cached and again.text == first.text and len(engine.prompts) == 1
    assert again.interaction_id != first.interaction_id  # every answer is an interaction
    with fresh_database.pool.connection() as conn:
        rows = conn.execute(
            "SELECT i.answer, d.mode FROM npllm.interactions i "
            "JOIN npllm.routing_decisions d ON d.interaction_id = i.id ORDER BY i.id"
        ).fetchall()
    assert rows == [("Use port 4471.", "modulator")] * 2


def test_a_request_that_names_an_adapter_not_served_is_refused_before_generating(
    fresh_database: Any, embedder: Any, tmp_path: Any
) -> None:
    engine = RecordingEngine()
    awake = AwakePath(make_settings(tmp_path), fresh_database.pool, engine, embedder)  # type: ignore[arg-type]
    chat = [{"role": "user", "content": "hello?"}]
    with pytest.raises(RequestError, match=r"no served adapter named 'sqlbot' \(served: none"):
        awake.answer(chat, GenerationParams(), adapters=["sqlbot"])
    with pytest.raises(RequestError, match="must contain a user message"):
        awake.answer([{"role": "system", "content": "x"}], GenerationParams())
    assert engine.prompts == []
    assert awake.answer(chat, GenerationParams(), adapters=[]).routing["mode"] == "disabled"


def test_an_answer_generated_before_a_correction_is_not_cached_after_it(
    fresh_database: Any, embedder: Any, tmp_path: Any
) -> None:
    """Regression (f): a correction that lands while an answer is being generated clears
    the cache; the answer, generated from the memories before the correction, must not be
    put back into it, or the next identical question gets the wrong answer again."""
    engine = RecordingEngine()
    awake = AwakePath(make_settings(tmp_path), fresh_database.pool, engine, embedder)  # type: ignore[arg-type]
    chat = [{"role": "user", "content": "Which port does the zorblax service listen on?"}]
    first = awake.answer(chat, GenerationParams(max_new_tokens=8))
    plain = engine.generate

    def correcting(prompt_ids: list[int], params: Any, **kw: Any) -> Generation:
        # The user corrects the earlier answer while this one is being generated.
        awake.feedback.apply_one(
            awake.feedback.explicit_pending(
                first.interaction_id, event="edited", text="It listens on port 9931."
            )
        )
        return plain(prompt_ids, params, **kw)

    engine.generate = correcting  # type: ignore[method-assign]
    awake.cache.clear()  # the second request generates (no hit) while the correction lands
    racing = awake.answer(chat, GenerationParams(max_new_tokens=8))
    assert not racing.cached
    engine.generate = plain  # type: ignore[method-assign]
    after = awake.answer(chat, GenerationParams(max_new_tokens=64))
    assert not after.cached  # answered again, from the corrected memories
    assert after.text == "It listens on port 9931."


def test_the_question_the_user_corrected_gets_their_answer_and_a_neighbour_does_not(
    fresh_database: Any, embedder: Any, tmp_path: Any
) -> None:
    """The same day, before any sleep: the corrected question and a paraphrase of it are
    answered with the user's own correction, word for word (not generated: a small model
    given it in its context still answered from its prior, or looped); a neighbouring
    question (the same subject, another relation) is generated without the correction in
    its context; deleting the memory ends it."""
    engine = RecordingEngine()
    awake = AwakePath(make_settings(tmp_path), fresh_database.pool, engine, embedder)  # type: ignore[arg-type]
    question = "What port does the Quibblix gateway listen on?"
    first = awake.answer([{"role": "user", "content": question}], GenerationParams())
    awake.feedback.apply_one(
        awake.feedback.explicit_pending(
            first.interaction_id, event="edited", text="The Quibblix gateway listens on 6123."
        )
    )
    asked = len(engine.prompts)
    for same in (question + " ", "On which port can I reach the Quibblix gateway from my laptop?"):
        again = awake.answer([{"role": "user", "content": same}], GenerationParams())
        assert again.text == "The Quibblix gateway listens on 6123."
        assert again.timings["from_correction"] == 1.0 and len(engine.prompts) == asked
    short = awake.answer(
        [{"role": "user", "content": question}], GenerationParams(max_new_tokens=5)
    )
    assert short.text == "The Q" and short.finish_reason == "length"
    neighbour = awake.answer([{"role": "user", "content": "Who maintains the Quibblix gateway?"}],
                             GenerationParams())  # fmt: skip
    assert len(engine.prompts) == asked + 1 and neighbour.memories == []
    assert "6123" not in engine.prompts[-1]
    for memory in again.memories:
        awake.forget(memory["id"])
    gone = awake.answer([{"role": "user", "content": question}], GenerationParams())
    assert gone.text == "Use port 4471." and "from_correction" not in gone.timings
