"""Corrections as edits, taught the way a person teaches, through the real daemon and its
nights: a compressed week where each day brings a couple of corrections among ordinary
questions whose answers the user copies, one night a day; after each night that night's
corrections are answered from the weights (their memories deleted), a paraphrase that no
training data holds is answered too, the neighbouring questions answer exactly as before,
and after the last night every earlier correction is kept — a fact corrected again later
with its newest value. The gate's refusal of a version that changes a question the user
kept is tested with a serving engine that changes it on purpose (tests/consolidation/
test_checks.py): a real night changes such a question only sometimes."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from ..conftest import NPLLM, REPO, LiveDaemon, cli_env

ENV = {
    # Compressed days: a question a minute later is not a re-ask of the last one.
    "NPLLM_FEEDBACK__REASK_WINDOW_MINUTES": "0.01",
}
TOKENS = 40


def _ask(http: Any, question: str, tokens: int = TOKENS) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": tokens}
    reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _text(reply: dict[str, Any]) -> str:
    return str(reply["choices"][0]["message"]["content"])


def _teach(http: Any, question: str, truth: str) -> None:
    first = _ask(http, question)
    r = http.post("/v1/feedback", json={"interaction_id": first["npllm"]["interaction_id"],
                                        "event": "edited", "text": truth,
                                        "comment": "thanks, that's right!"})  # fmt: skip
    assert r.status_code == 201 and r.json()["corrected"]


def _copied(http: Any, question: str) -> None:
    reply = _ask(http, question, 64)
    r = http.post("/v1/feedback", json={"interaction_id": reply["npllm"]["interaction_id"],
                                        "event": "copied"})  # fmt: skip
    assert r.status_code == 201


def _forget(http: Any, questions: list[str]) -> None:
    """Delete every memory about these questions: only the weights may answer them."""
    for question in questions:
        params = {"query": question, "k": 20, "min_score": 0.6}
        for memory in http.get("/v1/memories", params=params).json()["data"]:
            assert http.delete(f"/v1/memories/{memory['id']}").status_code == 200


def _night(data_dir: Path, seed: int) -> str:
    done = subprocess.run([*NPLLM, "sleep", "--now", "--follow", "--seed", str(seed)],
                          env=cli_env(data_dir, **ENV), cwd=REPO, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


# question → (the corrected answer, the key, a paraphrase no training data holds); written
# for this test, apart from bench/data/editing.json.
DAYS: list[dict[str, tuple[str, str, str]]] = [
    {
        "What port does the Vintrel ingest service listen on?": (
            "The Vintrel ingest service listens on port 7219.", "7219",
            "If I curl the Vintrel ingest service on my machine, which port do I use?"),
        "Who owns the Sorrel billing API?": (
            "The Sorrel billing API is owned by the Lanternfish team.", "Lanternfish",
            "Which team should I ask about changes to the Sorrel billing API?"),
    },
    {
        "Which command deploys the Gable docs site?": (
            "Deploy the Gable docs site with make ship-gable.", "ship-gable",
            "How do I push a new version of the Gable docs site live?"),
    },
    {
        "How long does the Kestle log shipper keep logs?": (
            "The Kestle log shipper keeps logs for 19 days.", "19 days",
            "What's the log retention of the Kestle log shipper?"),
    },
    {
        "Which Slack channel pages the Mirabel cache on-call?": (
            "Page the Mirabel cache on-call in #mirabel-pager.", "mirabel-pager",
            "Where do I escalate when the Mirabel cache is down?"),
    },
]  # fmt: skip
# A fact of day 1 corrected again on day 2, with its newest value.
UPDATE = ("What port does the Vintrel ingest service listen on?",
          "The Vintrel ingest service now listens on port 7290.", "7290")  # fmt: skip
# Ordinary questions whose answers the user copies, a few a day.
ORDINARY = ["How do I reverse a list in Python?", "What does git stash do?",
            "How do I count lines in a file in bash?", "What is a Python decorator?"]  # fmt: skip
# Neighbouring questions, asked before any teaching: their answers must not change.
NEIGHBOURS = [
    "What port does PostgreSQL listen on by default?",
    "Who maintains the Linux kernel?",
    "How do I deploy a static site to GitHub Pages?",
    "What language is the Vintrel ingest service written in?",
    "How do I check which process listens on a port in Linux?",
    "What is a staging environment?",
]


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data_dir = tmp_path_factory.mktemp("editing") / "data"
    live = LiveDaemon(data_dir, **ENV).wait_ready()
    yield live
    live.stop()


def test_a_compressed_week_of_corrections_is_learned_kept_and_leaves_the_rest_alone(
    week: LiveDaemon,
) -> None:
    http = week.http()
    before = {q: _text(_ask(http, q)) for q in NEIGHBOURS}
    taught: dict[str, tuple[str, str, str]] = {}
    report = []
    for day, facts in enumerate(DAYS, 1):
        _copied(http, ORDINARY[(day - 1) % len(ORDINARY)])
        for question, (truth, _, _) in facts.items():
            _teach(http, question, truth)
        if day == 2:  # the port of day 1 moved
            question, truth, key = UPDATE
            _teach(http, question, truth)
            taught[question] = (truth, key, taught[question][2])
        taught.update(facts)
        if day == 1:  # the same day, before any night: answered from the hippocampus
            for question, (_, key, paraphrase) in facts.items():
                assert key in _text(_ask(http, question)), question
                assert key in _text(_ask(http, paraphrase)), paraphrase
        stdout = _night(week.data_dir, seed=day)
        assert "published" in stdout, stdout
        _forget(http, list(taught))
        for question, (_, key, _) in facts.items():
            said = _text(_ask(http, question))
            report.append(f"night {day}: {question!r} -> {said!r}")
            assert key in said, (stdout, said)  # learned that night, from the weights
        if day == 1:
            paraphrased = [key in _text(_ask(http, p)) for _, key, p in facts.values()]
            report.append(f"night 1 paraphrases (never trained on): {paraphrased}")
            assert any(paraphrased), report
    print("\n" + "\n".join(report))
    # After the last night: every correction of the week, the changed one with its new value.
    for question, (_, key, _) in taught.items():
        said = _text(_ask(http, question))
        assert key in said, (question, said)
    assert "7219" not in _text(_ask(http, UPDATE[0]))
    changed = [q for q in NEIGHBOURS if _text(_ask(http, q)) != before[q]]
    assert changed == [], changed
    status = http.get("/v1/sleep").json()
    assert [c["status"] for c in status["cycles"]][: len(DAYS)] == ["succeeded"] * len(DAYS)
