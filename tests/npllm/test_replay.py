"""The replay buffer: admission (novelty, tags), priority, seeded prioritised sampling."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from npllm import interactions, replay
from npllm.config import Settings
from npllm.db import Database
from npllm.errors import RequestError
from npllm.feedback import Feedback
from npllm.interactions import Interaction
from npllm.replay import TopicTagger
from npllm.tone import NeutralTone


@pytest.fixture(scope="module")
def tagger(embedder: Any, settings: Settings) -> TopicTagger:
    return TopicTagger(embedder, settings.feedback)


def _add(db: Database, embedder: Any, question: str, answer: str = "An answer.") -> int:
    embedding = embedder.embed_one(question)
    with db.pool.connection() as conn, conn.transaction():
        interaction_id = interactions.record(
            conn,
            Interaction([{"role": "user", "content": question}], question, answer, "m", embedding),
        )
        replay.admit(conn, interaction_id, embedding, [])
    return interaction_id


def _one(db: Database, sql: str, **params: Any) -> Any:
    with db.pool.connection() as conn:
        row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


@pytest.mark.parametrize(
    ("question", "tag"),
    [
        ("Write a Python function that reverses a linked list", "coding"),
        ("I get TypeError: 'NoneType' object is not subscriptable, why?", "debugging"),
        ("What is the difference between a process and a thread?", "explanation"),
        ("How should I structure a microservice for user accounts?", "architecture"),
        ("My loop over a million rows is too slow, how can I speed it up?", "optimization"),
        ("How do I mock a database call in pytest?", "testing"),
        ("Por que meu código dá erro de índice?", "debugging"),
    ],
)
def test_topic_tags_come_from_the_meaning(
    tagger: TopicTagger, embedder: Any, question: str, tag: str
) -> None:
    assert tagger.tags(embedder.embed_one(question))[0] == tag


def test_off_topic_questions_stay_untagged(tagger: TopicTagger, embedder: Any) -> None:
    assert tagger.tags(embedder.embed_one("What is the capital of France?")) == []


def test_novelty_is_one_for_a_new_topic_and_near_zero_for_a_repeat(
    fresh_database: Database, embedder: Any
) -> None:
    first = _add(fresh_database, embedder, "How do I parse JSON in Python?")
    repeat = _add(fresh_database, embedder, "How do I parse JSON in Python?")
    other = _add(fresh_database, embedder, "Explain Rust lifetimes")
    novelty = "SELECT novelty FROM npllm.replay_buffer WHERE interaction_id = %(id)s"
    assert _one(fresh_database, novelty, id=first) == 1.0
    assert _one(fresh_database, novelty, id=repeat) < 0.01
    assert _one(fresh_database, novelty, id=other) > 0.5
    # Unrated answers are in the buffer but never learned from.
    assert (
        _one(fresh_database, "SELECT count(*) FROM npllm.replay_buffer WHERE tier = 'discard'") == 3
    )


def _rated_buffer(db: Database, embedder: Any, settings: Settings) -> dict[str, int]:
    fb = Feedback(db.pool, settings.feedback, NeutralTone())
    topics = {
        "great": ("How do I read a CSV file with pandas?", "applied"),
        "fine": ("How do I center a div in CSS?", "accepted"),
        "meh": ("What does git rebase do?", None),
        "bad": ("How do I free memory in Python?", "rejected"),
    }
    ids = {}
    for key, (question, event) in topics.items():
        ids[key] = _add(db, embedder, question)
        if event:
            fb.apply_one(fb.explicit_pending(ids[key], event=event))
    fb.apply_one(fb.explicit_pending(ids["meh"], rating=0.2))
    return ids


def test_sampling_is_prioritised_tier_filtered_and_reproducible(
    fresh_database: Database, embedder: Any, settings: Settings
) -> None:
    ids = _rated_buffer(fresh_database, embedder, settings)
    first = replay.sample(fresh_database.pool, 3, seed=11)
    again = replay.sample(fresh_database.pool, 3, seed=11)
    assert [i.interaction_id for i in first] == [i.interaction_id for i in again]
    # The rejected answer is discarded and never sampled.
    assert ids["bad"] not in {i.interaction_id for i in first}
    assert {i.interaction_id for i in first} == {ids["great"], ids["fine"], ids["meh"]}
    # Over many seeds the best-rated interaction is drawn first most often.
    firsts = Counter(
        replay.sample(fresh_database.pool, 1, seed=s)[0].interaction_id for s in range(300)
    )
    assert firsts[ids["great"]] > firsts[ids["fine"]] > firsts[ids["meh"]] > 0
    premium = replay.sample(fresh_database.pool, 5, seed=1, tiers=["premium"])
    assert [i.interaction_id for i in premium] == [ids["great"], ids["fine"]] or [
        i.interaction_id for i in premium
    ] == [ids["fine"], ids["great"]]
    item = premium[0]
    assert item.chat()["messages"][-1] == {"role": "assistant", "content": item.target}
    with pytest.raises(RequestError, match="unknown tier"):
        replay.sample(fresh_database.pool, 1, seed=1, tiers=["gold"])


def test_sampling_skips_duplicates_and_marking_lowers_priority(
    fresh_database: Database, embedder: Any, settings: Settings
) -> None:
    fb = Feedback(fresh_database.pool, settings.feedback, NeutralTone())
    twins = [_add(fresh_database, embedder, "How do I sort a dict by value?") for _ in range(3)]
    single = _add(fresh_database, embedder, "What is a Python generator?")
    for i in [*twins, single]:
        fb.apply_one(fb.explicit_pending(i, event="accepted"))
    drawn = replay.sample(fresh_database.pool, 10, seed=3)
    assert len(drawn) == 2
    assert single in {i.interaction_id for i in drawn}
    before = _one(
        fresh_database,
        "SELECT priority FROM npllm.replay_buffer WHERE interaction_id = %(id)s",
        id=single,
    )
    with fresh_database.pool.connection() as conn:
        cycle = conn.execute(
            "INSERT INTO npllm.sleep_cycles (seed) VALUES (7) RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
    assert replay.mark_sampled(fresh_database.pool, [single], cycle=cycle) == 1
    row = (
        "SELECT priority, times_sampled, last_sleep_cycle FROM npllm.replay_buffer "
        "WHERE interaction_id = %(id)s"
    )
    with fresh_database.pool.connection() as conn:
        priority, times, last = conn.execute(row, {"id": single}).fetchone()  # type: ignore[misc]
    assert (times, last) == (1, cycle)
    assert priority == pytest.approx(before / 2, rel=1e-4)


def test_a_night_takes_what_is_new_and_an_adapter_rehearses_what_it_learned(
    fresh_database: Database, embedder: Any, settings: Settings
) -> None:
    """new_only: rows no night trained on (their duplicates are marked with them), or
    changed since (a correction that came later); adapter=: the rows that adapter learned
    and that have not changed since; exclude=: left out."""
    fb = Feedback(fresh_database.pool, settings.feedback, NeutralTone())
    twins = [_add(fresh_database, embedder, "How do I sort a dict by value?") for _ in range(2)]
    other = _add(fresh_database, embedder, "What is a Python generator?")
    for i in [*twins, other]:
        fb.apply_one(fb.explicit_pending(i, event="accepted"))
    pool = fresh_database.pool
    new = replay.sample(pool, 10, seed=3, new_only=True)
    assert len(new) == 2
    rep = next(i for i in new if i.interaction_id in twins)
    assert rep.duplicates == [t for t in twins if t != rep.interaction_id]
    with pool.connection() as conn:
        cycle = conn.execute(
            "INSERT INTO npllm.sleep_cycles (seed) VALUES (7) RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
    learned = {twins[0]: "sorting", twins[1]: "sorting", other: "python"}
    assert replay.mark_sampled(pool, list(learned), cycle, learned) == 3
    assert replay.sample(pool, 10, seed=3, new_only=True) == []
    assert [i.interaction_id for i in replay.sample(pool, 10, seed=3, adapter="python")] == [other]
    assert replay.sample(pool, 10, seed=3, adapter="python", exclude=[other]) == []
    assert replay.learned_count(pool, "sorting") == 2
    # A correction after the night: new again, and not rehearsed as it was.
    fb.apply_one(
        fb.explicit_pending(other, event="edited", text="A generator yields values lazily.")
    )
    assert [i.interaction_id for i in replay.sample(pool, 10, seed=3, new_only=True)] == [other]
    assert replay.sample(pool, 10, seed=3, adapter="python") == []


def test_the_overview_counts_a_tier_s_interactions_once_whatever_their_tags(
    fresh_database: Database, embedder: Any
) -> None:
    # Three premium answers: one with two tags, one with one, one untagged.
    tagged = {
        _add(fresh_database, embedder, "Why is my query slow?"): ["debugging", "optimization"],
        _add(fresh_database, embedder, "Speed up my loop"): ["optimization"],
        _add(fresh_database, embedder, "Hello there"): [],
    }
    with fresh_database.pool.connection() as conn:
        for iid, tags in tagged.items():
            conn.execute(
                "UPDATE npllm.replay_buffer SET tier = 'premium', tags = %(tags)s, reward = 0.5,"
                " quality = 0.5, times_sampled = 2 WHERE interaction_id = %(id)s",
                {"tags": tags, "id": iid},
            )
    rows = [r for r in replay.overview(fresh_database.pool) if r["tier"] == "premium"]
    counts = {r["tag"]: (r["interactions"], r["times_sampled"]) for r in rows}
    assert rows[0]["tag"] == "(all)"  # a tier's total first
    assert counts == {
        "(all)": (3, 6),  # not 4 and 8: the two-tag answer is one interaction
        "debugging": (1, 2),
        "optimization": (2, 4),
        "untagged": (1, 2),
    }


def test_the_priority_and_the_training_target_have_one_definition(
    fresh_database: Database, embedder: Any, settings: Settings
) -> None:
    """The generated column, the view, and what feedback reports all use the SQL functions
    of migration 017; ReplayItem.target (Python) follows npllm.training_target."""
    fb = Feedback(fresh_database.pool, settings.feedback, NeutralTone())
    unrated = _add(fresh_database, embedder, "What does HTTP 418 mean?")  # discard: 0
    liked = _add(fresh_database, embedder, "What is a Python generator?", "A lazy iterator.")
    corrected = _add(fresh_database, embedder, "Which port does Quibblix use?", "Port 80.")
    accepted = fb.apply_one(fb.explicit_pending(liked, event="accepted"))
    result = fb.apply_one(fb.explicit_pending(corrected, event="edited", text="Port 7311."))
    stored = "SELECT priority FROM npllm.replay_buffer WHERE interaction_id = %(id)s"
    assert _one(fresh_database, stored, id=unrated) == 0
    assert _one(fresh_database, stored, id=liked) == pytest.approx(accepted.priority, rel=1e-6)
    assert _one(fresh_database, stored, id=corrected) == pytest.approx(result.priority, rel=1e-6)
    with fresh_database.pool.connection() as conn:
        q, n = conn.execute(
            "SELECT quality, novelty FROM npllm.replay_buffer WHERE interaction_id = %(id)s",
            {"id": corrected},
        ).fetchone()  # type: ignore[misc]
    assert q == 1 and result.priority == pytest.approx((0.75 + 0.25 * n), rel=1e-6)
    formula = "SELECT npllm.replay_priority(%(tier)s, %(q)s, %(n)s, %(s)s)"
    assert _one(fresh_database, formula, tier="discard", q=1.0, n=1.0, s=0) == 0
    assert _one(fresh_database, formula, tier="standard", q=0.0, n=0.5, s=1) == pytest.approx(
        (0.1 + 0.9 * 0.25) * (0.75 + 0.125) / 2
    )
    items = {i.interaction_id: i for i in replay.sample(fresh_database.pool, 10, seed=1,
                                                        tiers=("premium", "standard"))}  # fmt: skip
    top = "SELECT target FROM npllm.replay_top WHERE interaction_id = %(id)s"
    for interaction_id in (liked, corrected):
        assert _one(fresh_database, top, id=interaction_id) == items[interaction_id].target
    assert (items[liked].target, items[corrected].target) == ("A lazy iterator.", "Port 7311.")
