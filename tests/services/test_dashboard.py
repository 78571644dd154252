"""services/dashboard.py on a fresh database with known rows: satisfaction counts each rated
answer once overall and once per adapter it used, canary arms split the series, a night's
report carries what the cycle recorded and the questions its version was taught, and the R
matrix holds the gate's retention scores, nothing else."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from services import dashboard

_ANSWER = """
INSERT INTO npllm.interactions (messages, question, answer, base_model, adapters_used)
VALUES ('[]', %(q)s, 'an answer', 'base', %(used)s) RETURNING id
"""
_REWARD = "INSERT INTO npllm.replay_buffer (interaction_id, reward) VALUES (%(id)s, %(reward)s)"
_RATED = (
    "INSERT INTO npllm.feedback_events (interaction_id, origin, kind, rating) "
    "VALUES (%(id)s, 'explicit', 'rating', %(reward)s)"
)
_CYCLE = """
INSERT INTO npllm.sleep_cycles (seed, status, phase, samples, metrics, finished_at)
VALUES (0, %(status)s, %(phase)s, 1, %(metrics)s, CASE WHEN %(status)s = 'running' THEN NULL
        ELSE now() END) RETURNING id
"""


def _report(verdict: str, before: float | None, after: float | None, **extra: Any) -> Any:
    return {
        "samples": 1, "rehearsed": 0, "paraphrases": 3, "verdict": verdict,
        "served": "1 of 1 new served as taught",
        "locality": "1 of 4 neighbouring questions changed (2 in its scope, 0 taken out of "
                    "it, 0 too alike to a taught one to tell)",
        "validation_loss": {"before": 2.0, "after": 0.5},
        "retention_score": {"before": before, "after": after}, "forgotten": None, **extra,
    }  # fmt: skip


def test_the_dashboard_reads_what_the_database_holds(fresh_database: Any) -> None:
    pool = fresh_database.pool
    v1 = [{"name": "ops", "version": 1, "weight": 1.0}]
    arm = [{"name": "ops", "version": 2, "weight": 1.0, "canary": 1, "arm": "candidate"}]
    with pool.connection() as conn:
        rated = []
        for used, reward in ((v1, 1.0), (v1, 0.0), ([], -1.0), (arm, 0.5)):
            iid = conn.execute(_ANSWER, {"q": "q?", "used": Jsonb(used)}).fetchone()[0]
            conn.execute(_REWARD, {"id": iid, "reward": reward})
            conn.execute(_RATED, {"id": iid, "reward": reward})
            rated.append(iid)
        unrated = conn.execute(_ANSWER, {"q": "q?", "used": Jsonb(v1)}).fetchone()[0]
        conn.execute(_REWARD, {"id": unrated, "reward": 0.9})
        conn.execute(
            "INSERT INTO npllm.adapters (name, base_model, base_fingerprint, shape) "
            "VALUES ('ops', 'base', 'f', '{}')"
        )
        conn.execute(
            "INSERT INTO npllm.model_versions (adapter, version, artifact_path, "
            "base_fingerprint, status) VALUES ('ops', 1, '/x', 'f', 'active')"
        )
        conn.execute(
            "INSERT INTO npllm.routing_keys (adapter, version, kind, text, embedding, "
            "interaction_id) VALUES ('ops', 1, 'question', 'Which port?', %(e)s, %(id)s)",
            {"e": "[" + ",".join(["0.1"] * 384) + "]", "id": rated[0]},
        )
        night1 = {"adapters": {"ops": _report("published", None, None, published=1)}}
        night2 = {"adapters": {"ops": _report("rejected: it forgot", 0.9, 0.4,
                                              previous_version=1, candidate_version=2,
                                              forgotten=["Which port?"])}}  # fmt: skip
        ids = [
            conn.execute(_CYCLE, {"status": s, "phase": "done", "metrics": Jsonb(m)}).fetchone()[0]
            for s, m in (("succeeded", night1), ("succeeded", night2))
        ]
    board = dashboard.read(pool, days=7)
    sat = board["satisfaction"]
    assert sat["bucket"] == "minute"
    assert [(p["mean"], p["n"]) for p in sat["overall"]] == [(0.125, 4)]  # the unrated: out
    series = {s["label"]: [(p["mean"], p["n"]) for p in s["points"]] for s in sat["series"]}
    assert series == {"ops v1": [(0.5, 2)], "none": [(-1.0, 1)], "ops v2 (candidate)": [(0.5, 1)]}
    first, second = board["nights"][1], board["nights"][0]
    assert [first["id"], second["id"]] == ids
    (learned,) = first["learned"]
    assert learned["efficacy"] == {"new": 1, "new_right": 1, "rehearsed": 0, "rehearsed_right": 0}
    assert learned["locality_counts"]["changed"] == 1 and learned["paraphrases"] == 3
    assert learned["taught"] == [
        {"question": "Which port?", "interaction_id": rated[0], "answer": "an answer", "new": True}
    ]
    assert second["learned"][0]["forgotten"] == ["Which port?"]
    assert board["retention"] == {
        "columns": ["ops"],
        "rows": [
            {"night": ids[0], "started_at": first["started_at"], "cells": {"ops": {
                "before": None, "after": None, "first": True, "published": True,
                "forgotten": 0}}},
            {"night": ids[1], "started_at": second["started_at"], "cells": {"ops": {
                "before": 0.9, "after": 0.4, "first": False, "published": False,
                "forgotten": 1}}},
        ],
    }  # fmt: skip
    assert board["replay"][0]["tag"] == "(all)" and board["alerts"] == []
    assert board["canaries"] == [] and board["progress"] is None


def test_a_running_cycle_shows_its_step(fresh_database: Any) -> None:
    import os

    pool = fresh_database.pool
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO npllm.sleep_cycles (seed, pid, phase) VALUES (0, %(pid)s, %(phase)s)",
            {"pid": os.getpid(), "phase": "training ops step 3/12 (loss 1.2, ETA 9 s)"},
        )
    progress = dashboard.read(pool, days=1)["progress"]
    assert (progress["step"], progress["steps"]) == (3, 12)
    assert progress["phase"].startswith("training ops")
