"""What one adapter learns in a night (consolidation/lesson.py): examples and routing keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from consolidation.lesson import Lesson, build
from npllm import replay
from npllm.adapters import AdapterShape
from npllm.config import Settings
from npllm.db import Database
from npllm.feedback import Feedback
from npllm.modulator import Modulator
from npllm.tone import NeutralTone
from npllm.versions import BaseIdentity, Registry

from ..conftest import asked


def test_a_lesson_trains_paraphrases_and_keeps_its_neighbours_out_of_its_scope(
    fresh_database: Database, embedder: Any, settings: Settings, tmp_path: Path
) -> None:
    """One correction: trained as asked and in other words; routed for the question and its
    paraphrases, not for the questions about the same subject with another relation nor for
    the user's own earlier question about the public default — which is also what the gate
    checks. A question asked after the teaching is no neighbour."""
    db = fresh_database
    feedback = Feedback(db.pool, settings.feedback, NeutralTone())
    before = asked(db.pool, embedder, "What is the default port of PostgreSQL?", "It is 5432.")
    feedback.apply_one(feedback.explicit_pending(before, event="copied"))
    taught = asked(db.pool, embedder, "What port does our PostgreSQL listen on?")
    feedback.apply_one(feedback.explicit_pending(taught, event="edited", text="Port 5433."))
    after = asked(db.pool, embedder, "Which port do we run Postgres on?", "Port 5432.")
    (item,) = [i for i in replay.sample(db.pool, 5, seed=0, new_only=True)
               if i.interaction_id == taught]  # fmt: skip
    registry = Registry(db.pool, tmp_path, AdapterShape.from_config(settings.training),
                        BaseIdentity("m", "f" * 32))  # fmt: skip
    lesson = Lesson("general", None, registry, [item])
    ex = build(settings, db.pool, embedder, lesson, None)
    assert ex.taught == [item.chat()["messages"]] and ex.sources == [taught]
    assert len(ex.variants) == settings.sleep.paraphrases
    assert all(v[-1]["content"] == "Port 5433." for v in ex.variants)
    assert ex.keys is not None
    texts = dict(zip(ex.keys.texts, ex.keys.kinds, strict=True))
    assert texts["What port does our PostgreSQL listen on?"] == "question"
    assert texts["What is the default port of PostgreSQL?"] == "neighbour"  # asked before
    assert "Which port do we run Postgres on?" not in texts  # asked after: no evidence
    assert after not in ex.keys.interactions
    router = Modulator(settings.modulator)
    router.set_adapters({"general": ex.keys.scope(settings.modulator)})
    routed = {q: bool(router.decide(embedder.embed_one(q)).chosen) for q in (
        "What port does our PostgreSQL listen on?",
        "Which port is our Postgres server listening on?",
        "What is the default port of PostgreSQL?",
        "Who maintains PostgreSQL?",
    )}  # fmt: skip
    assert routed == {
        "What port does our PostgreSQL listen on?": True,
        "Which port is our Postgres server listening on?": True,
        "What is the default port of PostgreSQL?": False,
        "Who maintains PostgreSQL?": False,
    }
    assert ex.checks and all(c[-1]["role"] == "user" for c in ex.checks)


def test_a_neighbour_of_one_fact_that_is_another_fact_it_learned_is_no_neighbour(
    fresh_database: Database, embedder: Any, settings: Settings, tmp_path: Path
) -> None:
    """Two facts about one subject in one adapter: "What port does X listen on?" is a rule's
    neighbour of "Who owns X?", and also a question the adapter learned — it stays routed
    (a neighbour key equal to a taught one used to tie it with "none")."""
    db = fresh_database
    feedback = Feedback(db.pool, settings.feedback, NeutralTone())
    for question, truth in (("What port does the Quibblix gateway listen on?", "Port 7443."),
                            ("Who owns the Quibblix gateway?", "Marta owns it.")):  # fmt: skip
        iid = asked(db.pool, embedder, question)
        feedback.apply_one(feedback.explicit_pending(iid, event="edited", text=truth))
    items = replay.sample(db.pool, 5, seed=0, new_only=True)
    registry = Registry(db.pool, tmp_path, AdapterShape.from_config(settings.training),
                        BaseIdentity("m", "f" * 32))  # fmt: skip
    ex = build(settings, db.pool, embedder, Lesson("general", None, registry, items), None)
    assert ex.keys is not None
    router = Modulator(settings.modulator)
    router.set_adapters({"general": ex.keys.scope(settings.modulator)})
    for question in ("What port does the Quibblix gateway listen on?",
                     "Who owns the Quibblix gateway?"):  # fmt: skip
        assert router.decide(embedder.embed_one(question)).chosen == [("general", 1.0)]


def test_the_question_asked_before_it_was_corrected_is_no_neighbour(
    fresh_database: Database, embedder: Any, settings: Settings, tmp_path: Path
) -> None:
    """A question asked (and its answer kept) before the user corrected that very question
    — a fact that changed — is what the correction replaces, not a neighbour to keep: only
    a different question as alike ("... by default?") is checked by the gate."""
    db = fresh_database
    feedback = Feedback(db.pool, settings.feedback, NeutralTone())
    question = "What port does the Vintrel ingest service listen on?"
    asked(db.pool, embedder, question, "The Vintrel ingest service listens on port 7219.")
    asked(db.pool, embedder, question.replace("?", " by default?"), "It listens on 8080.")
    taught = asked(db.pool, embedder, question)
    feedback.apply_one(feedback.explicit_pending(taught, event="edited", text="Port 7290 now."))
    items = [i for i in replay.sample(db.pool, 5, seed=0, new_only=True)
             if i.interaction_id == taught]  # fmt: skip
    registry = Registry(db.pool, tmp_path, AdapterShape.from_config(settings.training),
                        BaseIdentity("m", "f" * 32))  # fmt: skip
    ex = build(settings, db.pool, embedder, Lesson("general", None, registry, items), None)
    assert ex.firm == {question.replace("?", " by default?")}


def test_a_question_about_another_fact_the_adapter_learned_is_not_this_ones_neighbour(
    fresh_database: Database, embedder: Any, settings: Settings, tmp_path: Path
) -> None:
    """The morning after a port was learned the user asks it in other words; then corrects
    who owns the same service. That question is about the port (the adapter's own fact):
    as a neighbour key of the owner it would send the port's paraphrases to the base."""
    db = fresh_database
    feedback = Feedback(db.pool, settings.feedback, NeutralTone())
    port = asked(db.pool, embedder, "What port does the Quibblix gateway listen on?")
    feedback.apply_one(feedback.explicit_pending(port, event="edited", text="Port 7443."))
    tried = "Which port is the Quibblix gateway on?"
    asked(db.pool, embedder, tried, "It uses port 8080.")
    owner = asked(db.pool, embedder, "Who owns the Quibblix gateway?")
    feedback.apply_one(feedback.explicit_pending(owner, event="edited", text="Marta owns it."))
    registry = Registry(db.pool, tmp_path, AdapterShape.from_config(settings.training),
                        BaseIdentity("m", "f" * 32))  # fmt: skip
    items = [i for i in replay.sample(db.pool, 5, seed=0, new_only=True)
             if i.interaction_id == owner]  # fmt: skip

    def neighbours() -> list[str]:
        ex = build(settings, db.pool, embedder, Lesson("general", None, registry, items), None)
        assert ex.keys is not None
        return [t for t, k in zip(ex.keys.texts, ex.keys.kinds, strict=True) if k == "neighbour"]

    assert tried in neighbours()  # the port not learned by this adapter: a neighbour
    with db.pool.connection() as conn:
        conn.execute("UPDATE npllm.replay_buffer SET adapter = 'general', trained_at = now() "
                     "WHERE interaction_id = %s", (port,))  # fmt: skip
    assert tried not in neighbours()


def test_the_user_trying_a_fact_before_it_changed_gives_no_neighbour_of_its_new_value(
    fresh_database: Database, embedder: Any, settings: Settings, tmp_path: Path
) -> None:
    """A fact taught on one day, tried in other words the next (answered with the old value,
    kept), then changed: those tries are the fact, asked before its newest correction but
    after its first — as neighbour keys they would send the changed fact's paraphrases to
    the base (bench/month.py found it: 3 of 3 paraphrases right before the change, 0 after)."""
    db = fresh_database
    feedback = Feedback(db.pool, settings.feedback, NeutralTone())
    question = "Which port does the Garnock relay listen on?"
    first = asked(db.pool, embedder, question)
    feedback.apply_one(feedback.explicit_pending(first, event="edited", text="Port 6112."))
    tried = "Tell me the Garnock relay's port number."  # 0.89 alike: not superseded
    tried_id = asked(db.pool, embedder, tried, "The Garnock relay listens on port 6112.")
    feedback.apply_one(feedback.explicit_pending(tried_id, event="copied"))
    again = asked(db.pool, embedder, question)
    feedback.apply_one(feedback.explicit_pending(again, event="edited", text="Port 6450 now."))
    assert replay.superseded(db.pool, [first]) == {first}  # the newer correction wins
    items = [i for i in replay.sample(db.pool, 5, seed=0, new_only=True)
             if i.interaction_id == again]  # fmt: skip
    registry = Registry(db.pool, tmp_path, AdapterShape.from_config(settings.training),
                        BaseIdentity("m", "f" * 32))  # fmt: skip
    ex = build(settings, db.pool, embedder, Lesson("general", None, registry, items), None)
    assert ex.keys is not None
    neighbours = [t for t, k in zip(ex.keys.texts, ex.keys.kinds, strict=True) if k == "neighbour"]
    assert tried not in neighbours and tried not in ex.firm
    router = Modulator(settings.modulator)
    router.set_adapters({"general": ex.keys.scope(settings.modulator)})
    assert router.decide(embedder.embed_one(tried)).chosen == [("general", 1.0)]


def test_an_adapter_keeps_answering_its_datasets_questions_after_a_night(
    fresh_database: Database, embedder: Any, settings: Settings, tmp_path: Path
) -> None:
    """An adapter trained on a dataset about Zorblax learns a liked answer about it: the
    rule-made neighbours of that question ("Who maintains the Zorblax?", ...) are other
    facts its dataset teaches, so they are question keys, not neighbours, and the dataset's
    questions in other words are still routed to it (bench/rewards.py found a night's
    version routing 1 of 5 of them)."""
    from consolidation import datasets

    db = fresh_database
    facts = {
        "What port does the Zorblax service listen on?": "Port 7341.",
        "Who maintains the Zorblax project?": "The Heliotrope team.",
        "What language is Zorblax written in?": "Elixir.",
        "Where are Zorblax logs stored?": "In /var/log/zorb/.",
        "Which database does Zorblax use?": "quokka-db.",
    }
    lines = [json.dumps({"messages": [{"role": "user", "content": q},
                                      {"role": "assistant", "content": a}]})
             for q, a in facts.items()]  # fmt: skip
    found = datasets.import_dataset(db.pool, "zorblax", "\n".join(lines).encode())
    feedback = Feedback(db.pool, settings.feedback, NeutralTone())
    liked = asked(db.pool, embedder, "In which region is Zorblax deployed?", "eu-north-3.")
    feedback.apply_one(feedback.explicit_pending(liked, event="copied"))
    (item,) = replay.sample(db.pool, 5, seed=0, new_only=True)
    registry = Registry(db.pool, tmp_path, AdapterShape.from_config(settings.training),
                        BaseIdentity("m", "f" * 32))  # fmt: skip
    dataset = {"dataset": "zorblax", "sha256": found["sha256"]}
    ex = build(settings, db.pool, embedder, Lesson("zorblax", None, registry, [item],
                                                   dataset=dataset), None)  # fmt: skip
    assert ex.keys is not None
    kinds = dict(zip(ex.keys.texts, ex.keys.kinds, strict=True))
    assert all(kinds[q] == "question" for q in facts)
    neighbours = [t for t, k in kinds.items() if k == "neighbour"]
    alike = embedder.embed(neighbours) @ embedder.embed(list(facts)).T
    assert alike.max() < settings.feedback.reask_similarity, neighbours
    router = Modulator(settings.modulator)
    router.set_adapters({"zorblax": ex.keys.scope(settings.modulator)})
    other_words = [
        "What port should I connect to for Zorblax?",
        "Which team maintains the Zorblax service?",
        "What is Zorblax written in?",
        "Where does Zorblax write its log files?",
    ]
    routed = [bool(router.decide(embedder.embed_one(q)).chosen) for q in other_words]
    # Before, none of the four was routed (and the dataset's own "Who maintains the Zorblax
    # project?" was a neighbour key). "Which team maintains the Zorblax service?" still is
    # not: it is nearer the rule's "Who maintains Zorblax?" (cosine 0.875) than the
    # dataset's wording (0.804), and those two are 0.888 alike, under the 0.9 that makes
    # a neighbour the same question as a known one (not asserted either way).
    assert [routed[k] for k in (0, 2, 3)] == [True, True, True], routed
    assert not router.decide(embedder.embed_one("How do I reverse a list in Python?")).chosen
