"""Memory chunking, the short-term cache, and the hippocampus correcting itself (real
database, real embedder)."""

from __future__ import annotations

from typing import Any

from npllm.cache import ShortTermCache, cache_key
from npllm.memory import chunk_text


def test_short_text_is_one_chunk() -> None:
    assert chunk_text("  hello world  ", 100) == ["hello world"]
    assert chunk_text("   ", 100) == []


def test_long_text_splits_on_paragraphs_and_sentences_within_the_limit() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "Sentence here. " * 20 for i in range(5))
    chunks = chunk_text(text, 200)
    assert len(chunks) > 5
    assert all(len(c) <= 200 for c in chunks)
    assert "".join(chunks).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(
        " ", ""
    )


def test_a_single_huge_word_is_still_cut() -> None:
    chunks = chunk_text("x" * 450, 200)
    assert [len(c) for c in chunks] == [200, 200, 50]


def test_cache_is_a_bounded_lru() -> None:
    cache: ShortTermCache[str] = ShortTermCache(2)
    cache.put("a", "1")
    cache.put("b", "2")
    assert cache.get("a") == "1"  # a is now the most recent
    cache.put("c", "3")
    assert cache.get("b") is None
    assert cache.get("a") == "1" and cache.get("c") == "3"
    cache.clear()
    assert len(cache) == 0


def test_cache_key_depends_on_messages_and_params() -> None:
    m = [{"role": "user", "content": "hi"}]
    assert cache_key(m, {"t": 0}) == cache_key(list(m), {"t": 0})
    assert cache_key(m, {"t": 0}) != cache_key(m, {"t": 1})


# ---- the fast learner: a correction corrects the hippocampus at once ---------------------

QUESTION = "What port does the Quibblix gateway listen on?"
WRONG = "The Quibblix gateway listens on port 8080."
RIGHT = "The Quibblix gateway listens on port 4471."


def _hippocampus(db: Any, settings: Any, embedder: Any) -> tuple[Any, Any, list[int]]:
    from npllm.feedback import Feedback
    from npllm.memory import MemoryStore
    from npllm.tone import LexiconTone

    store = MemoryStore(db.pool, embedder, settings.memory)
    cleared: list[int] = []
    feedback = Feedback(db.pool, settings.feedback, LexiconTone(), memory=store,
                        on_memory_change=lambda: cleared.append(1))  # fmt: skip
    return store, feedback, cleared


def _answered(db: Any, store: Any, embedder: Any, question: str, answer: str) -> int:
    """An interaction as the awake path records it, with its exchange memory."""
    from npllm import interactions, replay
    from npllm.interactions import Interaction

    vector = embedder.embed_one(question)
    with db.pool.connection() as conn, conn.transaction():
        iid = interactions.record(conn, Interaction(
            messages=[{"role": "user", "content": question}], question=question,
            answer=answer, base_model="test", question_embedding=vector,
        ))  # fmt: skip
        replay.admit(conn, iid, vector, [])
    store.add(f"Q: {question}\nA: {answer}", source=f"interaction:{iid}", kind="exchange",
              interaction_id=iid)  # fmt: skip
    return iid


def _kinds(store: Any, embedder: Any, question: str) -> list[tuple[str, str]]:
    return [(m.kind, m.text) for m in store.relevant(embedder.embed_one(question))]


def test_a_correction_replaces_the_wrong_exchange_with_a_fact_at_once(
    fresh_database: Any, settings: Any, embedder: Any
) -> None:
    store, feedback, cleared = _hippocampus(fresh_database, settings, embedder)
    first = _answered(fresh_database, store, embedder, QUESTION, WRONG)
    # The same wrong answer to the same question again: its own exchange (never merged).
    _answered(fresh_database, store, embedder, QUESTION, WRONG)
    # Regression (j): unrated answers are the model's own guesses and never come back.
    assert _kinds(store, embedder, QUESTION) == []
    result = feedback.apply_one(
        feedback.explicit_pending(first, event="edited", text=RIGHT, comment="thanks!")
    )
    assert result.corrected and len(result.memories["added"]) == 1
    assert len(result.memories["removed"]) == 2 and cleared == [1]  # both wrong exchanges
    # Asked a minute later: the correction comes back from retrieval, the wrong one never.
    assert _kinds(store, embedder, QUESTION) == [("fact", f"Q: {QUESTION}\nA: {RIGHT}")]
    assert _kinds(store, embedder, "Which port is the Quibblix gateway on?")[0][1].endswith(RIGHT)
    # A second correction of the same question replaces the first.
    again = _answered(fresh_database, store, embedder, QUESTION, RIGHT.replace("4471", "4444"))
    feedback.apply_one(
        feedback.explicit_pending(again, event="edited", text=RIGHT.replace("4471", "4472"))
    )
    assert _kinds(store, embedder, QUESTION) == [
        ("fact", f"Q: {QUESTION}\nA: {RIGHT.replace('4471', '4472')}")
    ]
    with fresh_database.pool.connection() as conn:
        rows = conn.execute(
            "SELECT kind, source, interaction_id FROM npllm.memories ORDER BY id"
        ).fetchall()
    assert rows == [("fact", f"correction:{again}", again)]


def test_negative_feedback_keeps_the_answer_out_of_retrieval(
    fresh_database: Any, settings: Any, embedder: Any
) -> None:
    store, feedback, cleared = _hippocampus(fresh_database, settings, embedder)
    liked = _answered(fresh_database, store, embedder, "How do I reverse a list in Python?",
                      "Use my_list.reverse() or my_list[::-1].")  # fmt: skip
    disliked = _answered(fresh_database, store, embedder, QUESTION, WRONG)
    assert feedback.apply_one(feedback.explicit_pending(liked, rating=1.0)).memories == {
        "removed": [],
        "added": [],
    }
    result = feedback.apply_one(feedback.explicit_pending(disliked, event="rejected"))
    assert result.reward < 0 and len(result.memories["removed"]) == 1 and cleared == [1]
    assert _kinds(store, embedder, QUESTION) == []
    assert [k for k, _ in _kinds(store, embedder, "How do I reverse a list in Python?")] == [
        "exchange"
    ]
    # A past answer comes back for its own question only, not for a merely related one.
    assert _kinds(store, embedder, "How do I reverse a string in Python?") == []
    with fresh_database.pool.connection() as conn:  # the answer itself is kept
        row = conn.execute(
            "SELECT answer FROM npllm.interactions WHERE id = %(id)s", {"id": disliked}
        ).fetchone()
    assert row == (WRONG,)


def test_retrieval_keeps_unrelated_notes_out_and_taught_facts_in(
    fresh_database: Any, settings: Any, embedder: Any
) -> None:
    """The notes share words with the question ("port", "service") but are about other
    things: above the old floor of 0.35, below the margin to the fact the question is
    about."""
    from npllm.memory import MemoryStore

    store = MemoryStore(fresh_database.pool, embedder, settings.memory)
    store.add(f"Q: {QUESTION}\nA: {RIGHT}", kind="fact")
    store.add("The Zorp billing service runs on port 8443.")
    store.add("Our staging database is called pelican-staging.")
    vector = embedder.embed_one(QUESTION)
    every = {m.text: m.score for m in store.search(vector, min_score=-1.0)}
    assert every["The Zorp billing service runs on port 8443."] > 0.35  # it used to leak
    assert [m.text for m in store.relevant(vector)] == [f"Q: {QUESTION}\nA: {RIGHT}"]
    # A question whose best match is itself weak still gets it.
    deploy = "How do I deploy?"
    store.add("The deploy script lives in tools/deploy.sh and needs AWS credentials.")
    assert [m.text for m in store.relevant(embedder.embed_one(deploy))] == [
        "The deploy script lives in tools/deploy.sh and needs AWS credentials."
    ]


def test_a_note_restated_with_another_value_replaces_the_old_one(
    fresh_database: Any, settings: Any, embedder: Any
) -> None:
    """Regression (d): notes that differ only in a value used to be merged (the new value
    was dropped). The same words merge; another value is an update and replaces the note;
    exchanges are never merged, so a correction of either answer finds its own."""
    from npllm.memory import MemoryStore

    store = MemoryStore(fresh_database.pool, embedder, settings.memory)
    _, (first,) = store.add("Our staging database listens on port 5433.")
    _, (same,) = store.add("our staging database listens on port 5433")
    assert same.merged and same.id == first.id
    _, (update,) = store.add("Our staging database listens on port 6543.")
    assert not update.merged and update.replaced == first.id
    found = [m.text for m in store.search(embedder.embed_one("staging database port"))]
    assert found == ["Our staging database listens on port 6543."]
    a = store.add("Q: x?\nA: 1", kind="exchange", interaction_id=None)[1][0]
    b = store.add("Q: x?\nA: 1", kind="exchange", interaction_id=None)[1][0]
    assert a.id != b.id and not b.merged


def test_past_answers_to_other_questions_never_push_a_taught_fact_out(
    fresh_database: Any, settings: Any, embedder: Any
) -> None:
    """Regression (e): exchanges were filtered after the top-k cut, so the k nearest could
    all be past answers to other (paraphrased) questions and the correction fell out of
    working memory. The filter now runs before the cut."""
    store, feedback, _ = _hippocampus(fresh_database, settings, embedder)
    store.add(f"Q: {QUESTION}\nA: {RIGHT}", kind="fact")
    for n in range(settings.memory.top_k + 1):
        # A liked answer whose text is nearer the question than the fact, to a question
        # that is not this one.
        iid = _answered(fresh_database, store, embedder, f"Tell me a joke number {n}.",
                        "Ha.")  # fmt: skip
        store.add(f"Q: {QUESTION}\nA: maybe port 80{n}", kind="exchange", interaction_id=iid)
        feedback.apply_one(feedback.explicit_pending(iid, rating=1.0))
    vector = embedder.embed_one(QUESTION)
    assert [m.kind for m in store.search(vector)][: settings.memory.top_k].count("fact") == 0
    assert [m.text for m in store.relevant(vector)] == [f"Q: {QUESTION}\nA: {RIGHT}"]
