"""Tonight's plan (consolidation/plan.py): what a night marks as learned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consolidation.plan import Plan, mark_learned
from npllm import replay
from npllm.config import load_settings
from npllm.db import Database
from npllm.errors import ConfigError
from npllm.feedback import Feedback
from npllm.tone import NeutralTone

from ..conftest import asked


def _corrected(db: Database, embedder: Any, settings: Any, question: str, truth: str) -> int:
    iid = asked(db.pool, embedder, question, "no")
    feedback = Feedback(db.pool, settings.feedback, NeutralTone())
    feedback.apply_one(feedback.explicit_pending(iid, event="edited", text=truth))
    return iid


def test_only_published_and_reproduced_samples_are_marked_learned(
    fresh_database: Database, embedder: Any, settings: Any
) -> None:
    """Regression (a): a night whose version the gate rejected (or the daemon refused)
    learned nothing — its samples stay new and are tried again; within a published
    version, a taught answer the served check did not reproduce stays new too."""
    db = fresh_database
    asked = [
        "Which port does the Quibblix gateway use?",
        "Who wrote the Frobnar parser?",
        "What is the code name of the next Plimsoll release?",
        "Where do Hexwing logs go?",
    ]
    ids = [_corrected(db, embedder, settings, q, "It is 101.") for q in asked]  # fmt: skip
    plan = {
        "seed": 0,
        "groups": {
            "published": {"items": ids[:2], "rehearse": []},
            "rejected": {"items": ids[2:3], "rehearse": []},
            "refused": {"items": ids[3:], "rehearse": []},
        },
        "duplicates": {},
        "done": {
            "published": {"verdict": "published", "unlearned": [ids[1]]},
            "rejected": {"verdict": "rejected: validation loss 1.0 is not 5% below 1.0"},
            "refused": {"verdict": "not published: adapter cap reached"},
        },
    }
    mark_learned(db.pool, Plan.from_json(plan), cycle=None)
    new = {i.interaction_id for i in replay.sample(db.pool, 10, seed=0, new_only=True)}
    assert new == set(ids[1:])
    with db.pool.connection() as conn:
        adapter = conn.execute(
            "SELECT adapter FROM npllm.replay_buffer WHERE interaction_id = %(id)s", {"id": ids[0]}
        ).fetchone()
    assert adapter == ("published",)
    # The next night rehearses ids[0] and its version no longer reproduces it: new again.
    plan["groups"] = {"published": {"items": ids[1:2], "rehearse": ids[:1]}}
    plan["done"] = {"published": {"verdict": "published", "unlearned": [ids[0]]}}
    mark_learned(db.pool, Plan.from_json(plan), cycle=None)
    new = {i.interaction_id for i in replay.sample(db.pool, 10, seed=0, new_only=True)}
    assert new == {ids[0], *ids[2:]}


def test_the_latest_correction_of_a_question_wins_everywhere(
    fresh_database: Database, embedder: Any, settings: Any
) -> None:
    """Regression (c): a fact corrected on day 1 and corrected again (a new value) on day 4:
    only the newest correction is new, rehearsed, exported and remembered — also after the
    older one was learned by an adapter."""
    from consolidation.datasets import replay_examples
    from npllm.memory import MemoryStore

    db = fresh_database
    memory = MemoryStore(db.pool, embedder, settings.memory)
    feedback = Feedback(db.pool, settings.feedback, NeutralTone(), memory=memory)

    def correct(question: str, truth: str) -> int:
        iid = asked(db.pool, embedder, question, "no")
        feedback.apply_one(feedback.explicit_pending(iid, event="edited", text=truth))
        return iid

    old = correct("What port does the Quibblix gateway listen on?", "It listens on port 6123.")
    other = correct("Who owns the Quibblix gateway?", "Marta owns it.")
    replay.mark_sampled(db.pool, [old, other], None, {old: "general", other: "general"})
    new = correct("What port does the Quibblix gateway listen on ?", "It listens on port 7000.")
    assert [i.interaction_id for i in replay.sample(db.pool, 10, seed=0, new_only=True)] == [new]
    rehearsed = replay.sample(db.pool, 10, seed=0, adapter="general")
    assert [i.interaction_id for i in rehearsed] == [other]  # not the superseded 6123
    targets = [e["messages"][-1]["content"] for e in replay_examples(db.pool)]
    assert "It listens on port 6123." not in targets and "It listens on port 7000." in targets
    found = memory.search(embedder.embed_one("What port does the Quibblix gateway listen on?"))
    texts = [m.text for m in found]
    assert any("7000" in t for t in texts) and not any("6123" in t for t in texts)


def test_a_plan_reads_back_as_it_was_written(tmp_path: Path) -> None:
    """plan.json round-trips (an interrupted night resumes from it), a merge's entry
    included; a missing or unreadable one is no plan."""
    from consolidation.plan import Group, read_plan, write_plan

    plan = Plan(
        seed=3,
        items=[5, 6],
        groups={
            "ops": Group([5], [1, 2], [0.5, -0.5], "joined ops", False),
            "new-topic": Group([6], [], [1.0, 0.0], "a new topic", True, {"absorbed": "x"}),
        },
        duplicates={"5": [7]},
        datasets={"ops": {"dataset": "runbooks", "sha256": "ab"}},
        done={"ops": {"verdict": "published"}},
        cycle=9,
        base_sha256="f" * 64,
    )
    write_plan(tmp_path, plan)
    assert read_plan(tmp_path) == plan
    assert read_plan(tmp_path / "missing") is None
    (tmp_path / "plan.json").write_text('{"groups": {"ops": 3}}')
    assert read_plan(tmp_path) is None
    (tmp_path / "plan.json").write_text("[1, 2")
    assert read_plan(tmp_path) is None


def test_a_liked_answer_no_night_serves_is_let_go_after_liked_tries_a_correction_never(
    fresh_database: Database, embedder: Any, settings: Any
) -> None:
    """sleep.liked_tries (2): each published night that trained a liked answer as new and
    did not serve it counts one; at two it is no longer new. A correction missed as often
    stays new, and the counter is in the row (`missed_nights`)."""
    db = fresh_database
    feedback = Feedback(db.pool, settings.feedback, NeutralTone())
    liked = asked(db.pool, embedder, "How do I flatten a nested list in Python?", "Use a loop.")
    feedback.apply_one(feedback.explicit_pending(liked, event="copied"))
    fixed = _corrected(db, embedder, settings, "Which port does the Quibblix gateway use?",
                       "It is 101.")  # fmt: skip
    tries = settings.sleep.liked_tries
    assert tries == 2

    def new() -> set[int]:
        found = replay.sample(db.pool, 10, seed=0, new_only=True, liked_tries=tries)
        return {i.interaction_id for i in found}

    night = {
        "seed": 0,
        "groups": {"a": {"items": [liked, fixed], "rehearse": []}},
        "duplicates": {},
        "done": {"a": {"verdict": "published", "unlearned": [liked, fixed]}},
    }
    assert new() == {liked, fixed}
    mark_learned(db.pool, Plan.from_json(night), cycle=None)
    assert new() == {liked, fixed}  # one missed night: tried again
    refused = {**night, "done": {"a": {"verdict": "rejected: no"}}}
    mark_learned(db.pool, Plan.from_json(refused), cycle=None)
    assert new() == {liked, fixed}  # a night that published nothing does not count
    mark_learned(db.pool, Plan.from_json(night), cycle=None)
    assert new() == {fixed}  # the second missed night lets the liked answer go
    assert {i.interaction_id for i in replay.sample(db.pool, 10, seed=0, new_only=True)} == {
        liked, fixed}  # fmt: skip
    with db.pool.connection() as conn:
        rows = conn.execute(
            "SELECT interaction_id, missed_nights FROM npllm.replay_buffer "
            "WHERE interaction_id = ANY(%(ids)s) ORDER BY interaction_id",
            {"ids": [liked, fixed]},
        ).fetchall()
    assert rows == [(liked, 2), (fixed, 2)]


def test_a_bad_liked_tries_is_refused_naming_the_key() -> None:
    for bad in ("-1", "two"):
        with pytest.raises(ConfigError, match=rf"sleep.liked_tries = '{bad}'"):
            load_settings(environ={"NPLLM_SLEEP__LIKED_TRIES": bad})
