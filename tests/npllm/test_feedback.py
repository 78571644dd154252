"""Feedback: the reward formula, explicit events and implicit signals, on the real database."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from npllm import interactions, replay
from npllm.config import FeedbackConfig, Settings
from npllm.db import Database
from npllm.errors import NotFoundError, RequestError
from npllm.feedback import (
    EVENT_VALUES,
    IMPLICIT_VALUES,
    Feedback,
    detect_correction,
    edit_value,
    integrate,
)
from npllm.interactions import Interaction
from npllm.tone import LexiconTone

CONFIG = FeedbackConfig()


# ---- the formula ---------------------------------------------------------------------------


def test_reward_is_weighted_sum_when_both_components_have_signals() -> None:
    score = integrate(0.8, 1, -0.5, 1, False, CONFIG)
    assert score.reward == pytest.approx(0.7 * 0.8 + 0.3 * -0.5)
    assert score.implicit == 0.8 and score.emotional == -0.5


def test_reward_rests_on_the_component_that_has_signals() -> None:
    assert integrate(1.4, 2, 0.0, 0, False, CONFIG).reward == pytest.approx(0.7)
    assert integrate(0.0, 0, -0.9, 1, False, CONFIG).reward == pytest.approx(-0.9)
    nothing = integrate(0.0, 0, 0.0, 0, False, CONFIG)
    assert (nothing.reward, nothing.implicit, nothing.emotional) == (0.0, None, None)


def test_tiers_follow_the_thresholds_and_a_correction_is_premium() -> None:
    assert integrate(0.7, 1, 0.0, 0, False, CONFIG).tier == "premium"
    assert integrate(0.3, 1, 0.0, 0, False, CONFIG).tier == "standard"
    assert integrate(0.0, 0, 0.0, 0, False, CONFIG).tier == "discard"  # unrated
    assert integrate(-1.0, 1, -1.0, 1, False, CONFIG).tier == "discard"
    corrected = integrate(-1.0, 1, -1.0, 1, True, CONFIG)
    assert (corrected.reward, corrected.quality, corrected.tier) == (-1.0, 1.0, "premium")


def test_edit_distance_grades_the_signal() -> None:
    answer = "Use sorted(d.items(), key=lambda kv: kv[1]) to sort a dict by value."
    same, d0 = edit_value(answer, answer)
    small, d1 = edit_value(answer, answer.replace("kv[1]", "kv[1], reverse=True"))
    total, d2 = edit_value(answer, "Completely different: use a heap from heapq instead.")
    assert (same, d0) == (0.6, 0.0)
    assert same > small > total >= -1.0
    assert d0 < d1 < d2


@pytest.mark.parametrize(
    "text",
    [
        "no, that's wrong",
        "That is incorrect, the function takes two arguments",
        "it doesn't work",
        "still failing with the same message",
        "não funcionou",
        "está errado, a função não existe",
        "Não, não é isso que eu perguntei",
        "ainda dá erro",
        'Traceback (most recent call last):\n  File "x.py", line 1\nKeyError: 1',
        "error[E0382]: borrow of moved value",
        "Segmentation fault (core dumped)",
        "$ ./a.out\nSegmentation fault (core dumped)\nwhy?",
        "npm ERR! code ERESOLVE",
    ],
)
def test_corrections_are_detected_in_english_and_portuguese(text: str) -> None:
    assert detect_correction(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "thanks, that worked",
        "now how do I sort it in reverse?",
        "obrigado, funcionou",
        "e como faço para ordenar ao contrário?",
        "Is there a way to do this without a loop?",
        "How do I find what causes a segmentation fault in my C program?",
        "What does `KeyError: 'name'` mean in Python?",
        "Why does npm print npm ERR! code ERESOLVE when I install?",
    ],
)
def test_ordinary_turns_are_not_corrections(text: str) -> None:
    assert detect_correction(text) is None


# ---- on the database -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def feedback(database: Database, settings: Settings) -> Feedback:
    return Feedback(database.pool, settings.feedback, LexiconTone())


def _interaction(
    database: Database,
    embedder: Any,
    question: str,
    answer: str = "Use sorted(d.items(), key=lambda kv: kv[1]).",
    history: list[dict[str, str]] | None = None,
) -> tuple[int, Any, list[dict[str, str]]]:
    messages = [*(history or []), {"role": "user", "content": question}]
    embedding = embedder.embed_one(question)
    with database.pool.connection() as conn, conn.transaction():
        item = Interaction(messages, question, answer, "test-model", embedding)
        interaction_id = interactions.record(conn, item)
        replay.admit(conn, interaction_id, embedding, [])
    return interaction_id, embedding, messages


def _row(database: Database, interaction_id: int) -> dict[str, Any]:
    with database.pool.connection() as conn:
        cur = conn.execute(
            "SELECT * FROM npllm.replay_buffer WHERE interaction_id = %(id)s",
            {"id": interaction_id},
        )
        names = [c.name for c in cur.description or []]
        return dict(zip(names, cur.fetchone() or (), strict=True))


@pytest.mark.parametrize("event", sorted(EVENT_VALUES))
def test_each_explicit_event_moves_the_reward_as_documented(
    database: Database, embedder: Any, feedback: Feedback, event: str
) -> None:
    interaction_id, _, _ = _interaction(database, embedder, f"How do I sort a dict ({event})?")
    result = feedback.apply_one(feedback.explicit_pending(interaction_id, event=event))
    assert result.implicit == pytest.approx(EVENT_VALUES[event])
    assert result.reward == pytest.approx(EVENT_VALUES[event], abs=1e-6)
    row = _row(database, interaction_id)
    assert row["reward"] == pytest.approx(result.reward, abs=1e-6)
    assert row["tier"] == result.tier
    # A rating then joins as the emotional component: 0.7 * implicit + 0.3 * rating.
    both = feedback.apply_one(feedback.explicit_pending(interaction_id, rating=-1.0))
    assert both.reward == pytest.approx(0.7 * EVENT_VALUES[event] - 0.3, abs=1e-5)


def test_edited_keeps_original_and_correction_and_learns_the_correction(
    database: Database, embedder: Any, feedback: Feedback
) -> None:
    answer = "Use d.sort() to sort a dict by value."
    interaction_id, _, _ = _interaction(database, embedder, "Sort a dict by value?", answer)
    corrected = "Dicts have no sort(); use sorted(d.items(), key=lambda kv: kv[1])."
    result = feedback.apply_one(
        feedback.explicit_pending(
            interaction_id, event="edited", text=corrected, comment="thanks, that's great"
        )
    )
    expected_implicit, _ = edit_value(answer, corrected)
    assert result.implicit == pytest.approx(expected_implicit)
    assert result.emotional is not None and result.emotional > 0.5
    assert result.corrected and result.quality == 1.0 and result.tier == "premium"
    with database.pool.connection() as conn:
        question, stored, target = conn.execute(
            "SELECT question, answer, target FROM npllm.replay_top WHERE interaction_id = %(id)s",
            {"id": interaction_id},
        ).fetchone()  # type: ignore[misc]
    assert (stored, target) == (answer, corrected)


def test_bad_explicit_feedback_is_refused_and_stores_nothing(
    database: Database, embedder: Any, feedback: Feedback
) -> None:
    interaction_id, _, _ = _interaction(database, embedder, "What is a closure?")
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "send at least one of event, rating or comment"),
        ({"event": "liked"}, "unknown event 'liked'; events are accepted"),
        ({"rating": 1.5}, "rating must be between -1 and 1, got 1.5"),
        ({"event": "edited"}, "event 'edited' needs text"),
        ({"event": "accepted", "text": "x"}, "text (a corrected answer) goes only with"),
    ]
    for kwargs, message in cases:
        with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
            feedback.apply_one(feedback.explicit_pending(interaction_id, **kwargs))
    with pytest.raises(NotFoundError, match="no interaction with id 987654321"):
        feedback.apply_one(feedback.explicit_pending(987654321, event="accepted"))
    assert _row(database, interaction_id)["implicit_n"] == 0


def test_concurrent_feedback_loses_no_event(
    database: Database, embedder: Any, feedback: Feedback
) -> None:
    interaction_id, _, _ = _interaction(database, embedder, "How do I join two lists?")
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            for _ in range(10):
                feedback.apply_one(
                    feedback.explicit_pending(
                        interaction_id, event="accepted" if i % 2 else "rejected"
                    )
                )
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    row = _row(database, interaction_id)
    with database.pool.connection() as conn:
        (events,) = conn.execute(
            "SELECT count(*) FROM npllm.feedback_events WHERE interaction_id = %(id)s",
            {"id": interaction_id},
        ).fetchone()  # type: ignore[misc]
    assert events == 80 and row["implicit_n"] == 80
    assert row["implicit"] == pytest.approx((0.7 - 1.0) / 2, abs=1e-4)


@pytest.mark.parametrize(
    ("first", "again"),
    [
        ("How do I reverse a list in Python?", "How can I reverse a list in Python?"),
        ("Como inverter uma lista em Python?", "Como faço para inverter uma lista em Python?"),
    ],
)
def test_a_reask_is_negative_for_the_earlier_answer(
    database: Database, embedder: Any, feedback: Feedback, first: str, again: str
) -> None:
    earlier, _, _ = _interaction(database, embedder, first)
    later, embedding, messages = _interaction(database, embedder, again)
    result = feedback.infer(later, messages, again, embedding)
    assert result is not None and result.interaction_id == earlier
    assert result.implicit == IMPLICIT_VALUES["reask"]
    assert result.reward < 0


@pytest.mark.parametrize(
    "reply",
    ["No, that's wrong, it doesn't work.", "Não funcionou, está errado."],
)
def test_a_correction_in_the_conversation_is_negative(
    database: Database, embedder: Any, feedback: Feedback, reply: str
) -> None:
    answer = "Call list.reverse_sorted()."
    earlier, _, history = _interaction(database, embedder, "Reverse-sort a list?", answer)
    history = [*history, {"role": "assistant", "content": answer}]
    later, embedding, messages = _interaction(database, embedder, reply, history=history)
    result = feedback.infer(later, messages, reply, embedding)
    assert result is not None and result.interaction_id == earlier
    assert result.implicit == IMPLICIT_VALUES["correction"]
    assert result.emotional is not None and result.emotional < 0
    assert result.tier == "discard"


@pytest.mark.parametrize(
    "reply",
    ["Great, thanks! Now how do I sort it in reverse?", "Valeu! E como ordeno ao contrário?"],
)
def test_a_continuation_is_mildly_positive(
    database: Database, embedder: Any, feedback: Feedback, reply: str
) -> None:
    answer = "Use sorted(xs)."
    earlier, _, history = _interaction(database, embedder, "How do I sort a list?", answer)
    history = [*history, {"role": "assistant", "content": answer}]
    later, embedding, messages = _interaction(database, embedder, reply, history=history)
    result = feedback.infer(later, messages, reply, embedding)
    assert result is not None and result.interaction_id == earlier
    assert result.implicit == IMPLICIT_VALUES["continuation"]
    assert result.reward > 0


def test_a_new_unrelated_question_says_nothing_about_the_last_answer(
    database: Database, embedder: Any, feedback: Feedback
) -> None:
    earlier, _, _ = _interaction(database, embedder, "How do I sort a list?")
    question = "What does the GIL do in CPython?"
    later, embedding, messages = _interaction(database, embedder, question)
    assert feedback.infer(later, messages, question, embedding) is None
    assert _row(database, earlier)["implicit_n"] == 0


def test_a_short_thanks_after_an_answer_counts_as_tone(
    database: Database, embedder: Any, feedback: Feedback
) -> None:
    earlier, _, _ = _interaction(database, embedder, "How do I sort a list?")
    reply = "obrigado, funcionou perfeitamente!"
    later, embedding, messages = _interaction(database, embedder, reply)
    result = feedback.infer(later, messages, reply, embedding)
    assert result is not None and result.interaction_id == earlier
    assert result.implicit is None and result.emotional is not None and result.emotional > 0.5


def test_a_batch_applies_in_order_and_an_unknown_id_fails_alone(
    database: Database, embedder: Any, feedback: Feedback
) -> None:
    first, _, _ = _interaction(database, embedder, "How do I read a CSV file?")
    second, _, _ = _interaction(database, embedder, "How do I write a CSV file?")
    batch = [
        feedback.explicit_pending(first, event="accepted"),
        feedback.explicit_pending(987654321, event="accepted"),
        feedback.explicit_pending(first, event="rejected"),
        feedback.explicit_pending(second, rating=0.5),
    ]
    outcomes = feedback.apply(batch)
    assert isinstance(outcomes[1], NotFoundError)
    after_accept, after_reject, rated = outcomes[0], outcomes[2], outcomes[3]
    assert not isinstance(after_accept, NotFoundError)
    assert not isinstance(after_reject, NotFoundError)
    assert not isinstance(rated, NotFoundError)
    assert after_accept.reward == pytest.approx(0.7)
    assert after_reject.reward == pytest.approx((0.7 - 1.0) / 2)
    assert after_accept.event_ids[0] < after_reject.event_ids[0]
    assert rated.reward == pytest.approx(0.5)
    # The priority reported is the one the database computes.
    for result in (after_reject, rated):
        row = _row(database, result.interaction_id)
        assert row["priority"] == pytest.approx(result.priority, rel=1e-5)
        assert row["reward"] == pytest.approx(result.reward, abs=1e-6)


def test_an_abandoned_stream_is_a_negative_implicit_signal(
    database: Database, embedder: Any, feedback: Feedback
) -> None:
    interaction_id, _, _ = _interaction(database, embedder, "Explain monads at length.")
    result = feedback.abandoned(interaction_id)
    assert result.implicit == EVENT_VALUES["abandoned"] and result.tier == "discard"
