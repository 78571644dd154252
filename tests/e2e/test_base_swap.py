"""Swapping the base LLM keeps what the weights learned (DESIGN.md: the base is
plug-and-play). Three facts taught and slept on with the shipped GGUF; the base swapped
for another (the dequantised copy of the same model, as a directory: another fingerprint,
served by the transformers engine); one night rebuilds the adapter for it from everything
it was taught — not only what is new — and the facts are answered from the rebuilt
adapter with their memories deleted; swapped back, the first base's versions serve again
without retraining."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from ..conftest import NPLLM, REPO, LiveDaemon, cached_base, cli_env

FACTS = {
    "What port does the Quenby tracer listen on?": (
        "The Quenby tracer listens on port 6642.", "6642"),
    "Who owns the Drimble router?": ("The Drimble router is owned by the Pika team.", "Pika"),
    "Which command lints the Tobrin agent?": ("Lint the Tobrin agent with make tobrin-lint.",
                                              "tobrin-lint"),
}  # fmt: skip


def _ask(http: Any, question: str) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 32}
    reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _answers(http: Any) -> dict[str, bool]:
    """Each fact, asked with its memories deleted: answered (from the weights)?"""
    for question in FACTS:
        for memory in http.get(
            "/v1/memories", params={"query": question, "k": 20, "min_score": 0.6}
        ).json()["data"]:
            http.delete(f"/v1/memories/{memory['id']}")  # fmt: skip
    return {q: key in _ask(http, q)["choices"][0]["message"]["content"]
            for q, (_, key) in FACTS.items()}  # fmt: skip


def _night(data_dir: Path, **env: str) -> str:
    done = subprocess.run([*NPLLM, "sleep", "--now", "--follow", "--seed", "1"],
                          env=cli_env(data_dir, **env), cwd=REPO, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _served(http: Any) -> dict[str, int]:
    return dict(http.get("/v1/adapters").json()["served"])


def test_a_base_swap_rebuilds_what_the_weights_learned_and_a_swap_back_serves_it_again(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = LiveDaemon(data_dir).wait_ready()
    try:
        with first.http() as http:
            for question, (truth, _) in FACTS.items():
                iid = _ask(http, question)["npllm"]["interaction_id"]
                body = {"interaction_id": iid, "event": "edited", "text": truth}
                assert http.post("/v1/feedback", json=body).status_code == 201
        night = _night(data_dir)
        assert "published" in night, night
        with first.http() as http:
            served_first = _served(http)
            assert _answers(http) == dict.fromkeys(FACTS, True), night
    finally:
        first.stop()
    other = {"NPLLM_MODELS__BASE": str(cached_base())}  # same weights, another base
    second = LiveDaemon(data_dir, **other).wait_ready()
    try:
        with second.http() as http:
            (name,) = served_first
            assert http.get("/v1/status").json()["adapters"]["stale"] == [name]
            assert _served(http) == {}
        rebuilt = _night(data_dir, **other)
        assert f"rebuilt for this base from the {len(FACTS)} sample(s)" in rebuilt, rebuilt
        assert "published" in rebuilt, rebuilt
        with second.http() as http:
            assert _served(http) == {name: served_first[name] + 1}
            assert _answers(http) == dict.fromkeys(FACTS, True), rebuilt
    finally:
        second.stop()
    back = LiveDaemon(data_dir).wait_ready()
    try:
        with back.http() as http:
            assert _served(http) == served_first  # the first base's version, not retrained
            assert http.get("/v1/status").json()["adapters"]["stale"] == []
            assert _answers(http) == dict.fromkeys(FACTS, True)
            cycles = http.get("/v1/sleep").json()["cycles"]
        assert len(cycles) == 2  # no third night
    finally:
        back.stop()
