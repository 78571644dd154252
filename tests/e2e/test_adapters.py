"""Real trained adapters on the real base model in a daemon of their own: routing,
effect, the modulator trained on ratings, hot swap under load, export, base swap."""

from __future__ import annotations

import concurrent.futures
import hashlib
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from npllm.modulator import Modulator

from ..conftest import (
    DATA,
    MODEL_CACHE,
    NPLLM,
    REPO,
    LiveDaemon,
    cli_env,
    lora_artifact,
    make_settings,
    psql,
    save_tiny_llama,
)
from ..conftest import ask_ok as _ask

# ---- the real thing: trained adapters in their own daemon ---------------------------------

TRAIN_ENV = {
    # Tiny but real training: 8 examples, batch 4, 4 epochs = exactly 8 optimizer steps each
    # (no floor, no early stop: routing and swaps are under test here, not the budget).
    "NPLLM_TRAINING__EPOCHS": "4",
    "NPLLM_TRAINING__BATCH_SIZE": "4",
    "NPLLM_TRAINING__MIN_STEPS": "8",
    "NPLLM_TRAINING__RECALL_CHECK_EVERY": "0",
    "NPLLM_TRAINING__GRAD_ACCUMULATION": "1",
    "NPLLM_TRAINING__LEARNING_RATE": "0.003",
    # Routing, swaps and export are under test here, not drift: skip the anchor's pass.
    "NPLLM_TRAINING__ANCHOR_WEIGHT": "0",
    # Past answers would otherwise come back through retrieval and blur the comparison.
    "NPLLM_MEMORY__STORE_EXCHANGES": "false",
    # Canary trials decide on a handful of ratings, half the conversations on each arm.
    "NPLLM_CANARY__SHARE": "0.5",
    "NPLLM_CANARY__MIN_RATED": "4",
    # The tests decide trials through POST /v1/canaries/check at the moment they choose; the
    # daemon's own periodic look (every 60 s by default) would race them and decide a trial
    # between the ratings and the test's next look at it (seen in CI on 2026-12-07).
    "NPLLM_CANARY__CHECK_EVERY_S": "86400",
}
HELD_OUT = {
    "zorblax": [
        "Which port does Zorblax listen on?",
        "Who is responsible for maintaining Zorblax?",
        "What programming language is Zorblax built with?",
        "What's the name of the Zorblax configuration file?",
        "Which database backs Zorblax?",
    ],
    "sqlbot": [
        "How can I count rows in a SQL table?",
        "How do I order SQL results by date?",
        "How do I remove duplicate values in a SQL select?",
        "How do I combine rows from two SQL tables?",
        "How do I return only the first 5 rows in SQL?",
    ],
}


def _cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NPLLM, *args],
        env=cli_env(data_dir, **TRAIN_ENV, **env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _cache_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(MODEL_CACHE.rglob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A daemon with two adapters trained by `npllm adapter train` and hot-published."""
    data_dir = tmp_path_factory.mktemp("adapters") / "data"
    live = LiveDaemon(data_dir, **TRAIN_ENV).wait_ready()
    # The llama.cpp daemon never dequantises the base; training does, once, into this cache:
    # make the copy first so that the digest compares the weights, not their arrival.
    from npllm.llm import dequantise_gguf
    from npllm.weights import resolve

    dequantise_gguf(resolve(make_settings(data_dir).models.base, "models.base"), MODEL_CACHE)
    before = _cache_digest()
    shared = SimpleNamespace(live=live, data_dir=data_dir, cache_before=before)
    try:
        for name in ("zorblax", "sqlbot"):
            done = _cli(data_dir, "dataset", "import", name, str(DATA / f"{name}.jsonl"))
            assert done.returncode == 0, done.stderr
            done = _cli(data_dir, "adapter", "train", name, "--dataset", name)
            assert done.returncode == 0, done.stderr
            assert f"{name} v1 is now served" in done.stdout
            assert "step 8/8" in done.stderr and "base weights unchanged" in done.stderr
            assert "trained: 8 of 8 steps (initial: ceil(8 / 4) x 4 epochs = 8)" in done.stderr
        yield shared
    finally:
        shared.live.stop()  # a test may have restarted it


def test_training_leaves_the_base_model_bit_identical(trained: Any) -> None:
    assert _cache_digest() == trained.cache_before
    rows = _cli(
        trained.data_dir,
        "psql",
        "-At",
        "-c",
        "SELECT adapter, status, base_sha256_before = base_sha256_after, version, steps "
        "FROM npllm.training_runs ORDER BY id",
    )
    assert rows.stdout.split() == ["zorblax|succeeded|t|1|8", "sqlbot|succeeded|t|1|8"]


def test_a_modulator_trained_on_ratings_routes_away_from_a_disliked_adapter(
    trained: Any,
) -> None:
    """modulator.train, end to end on the daemon's logged decisions: the user likes the
    zorblax adapter's answers and dislikes sqlbot's; the trained modulator, published
    through the daemon, stops sending SQL questions to sqlbot; rolling back restores it.

    Runs first on the trained daemon: the other tests ask the same questions again (a
    re-ask is an implicit dislike), which would put dislikes of zorblax's answers into
    this story."""
    import json

    from consolidation import modulator_training
    from npllm import modulator
    from npllm.db import Database

    from ..conftest import make_settings

    def used(http: Any, question: str) -> list[str]:
        return [a["name"] for a in _ask(http, question, max_tokens=1)["npllm"]["adapters"]]

    questions = {
        name: [json.loads(line)["messages"][0]["content"] for line in path.open()]
        for name, path in ((n, DATA / f"{n}.jsonl") for n in ("zorblax", "sqlbot"))
    }
    with trained.live.http() as http:
        for name, rating in (("zorblax", 1.0), ("sqlbot", -1.0)):
            for q in questions[name]:
                answer = _ask(http, q, max_tokens=1)
                assert [a["name"] for a in answer["npllm"]["adapters"]] == [name]
                iid = answer["npllm"]["interaction_id"]
                r = http.post("/v1/feedback", json={"interaction_id": iid, "rating": rating})
                assert r.status_code == 201, r.text
    settings = make_settings(trained.data_dir, NPLLM_MODULATOR__MIN_DECISIONS="16")
    db = Database(settings)
    db.open()
    try:
        with db.pool.connection() as conn:
            rows = conn.execute("SELECT name, centroid FROM npllm.adapters").fetchall()
        current = Modulator(settings.modulator)
        current.set_adapters({name: np.asarray(c.to_list()) for name, c in rows})
        report = modulator_training.consolidate(settings, db.pool, current, None, seed=0)
        assert report["decisions"] == 16 and report["verdict"] == "passes", report
        with trained.live.http() as http:
            missing = http.post("/v1/modulator/versions", json={"version": 999})
            assert missing.status_code == 404
            assert "no modulator version 999" in missing.json()["error"]["message"]
            typed = http.post("/v1/modulator/versions", json={"version": "1"})
            assert typed.status_code == 400 and "version" in typed.text
            published = http.post("/v1/modulator/versions", json={"version": report["version"]})
            assert published.status_code == 201, published.text
            assert published.json()["version"] == report["version"]
            state = http.get("/v1/modulator").json()
            assert state["version"] == report["version"] and state["train"] is False
            assert state["versions"][0]["status"] == "active"
            assert [used(http, q) for q in HELD_OUT["sqlbot"]] == [[]] * 5
            assert sum(used(http, q) == ["zorblax"] for q in HELD_OUT["zorblax"]) >= 4

            # A broken version file is refused and the trained version keeps routing.
            store = modulator.store_for(settings, db.pool)
            broken = modulator.store_version(store, current, {}, None, None).version
            modulator.weights(store.version(modulator.MODULATOR, broken)).write_bytes(b"\0" * 64)
            bad = http.post("/v1/modulator/versions", json={"version": broken})
            assert bad.status_code == 400
            assert f"modulator v{broken} was not published: cannot load" in bad.text
            assert http.get("/v1/modulator").json()["version"] == report["version"]
            listing = http.get("/v1/adapters").json()["modulator"]
            assert listing["version"] == report["version"]

            back = http.post("/v1/modulator/rollback")
            assert back.status_code == 200, back.text
            assert (back.json()["version"], back.json()["replaced"]) == (None, report["version"])
            assert sum(used(http, q) == ["sqlbot"] for q in HELD_OUT["sqlbot"]) >= 4
            again = http.post("/v1/modulator/rollback")
            assert again.status_code == 409
            assert "no trained modulator is routing" in again.json()["error"]["message"]
    finally:
        with trained.live.http() as http:  # leave the daemon as the other tests expect it
            if http.get("/v1/modulator").json()["version"] is not None:
                http.post("/v1/modulator/rollback")
        db.close()


def test_the_modulator_routes_held_out_questions_to_the_right_adapter(trained: Any) -> None:
    hits, total = 0, 0
    with trained.live.http() as http:
        for adapter, questions in HELD_OUT.items():
            for q in questions:
                used = [a["name"] for a in _ask(http, q, max_tokens=1)["npllm"]["adapters"]]
                hits += used == [adapter]
                total += 1
        off_topic = _ask(http, "What is the capital of France?", max_tokens=1)["npllm"]
    print(f"\nmodulator routing accuracy on held-out questions: {hits}/{total}")
    assert hits / total >= 0.9
    assert off_topic["adapters"] == [] and off_topic["routing"]["mode"] == "modulator"
    assert set(off_topic["routing"]["probabilities"]) == {"none", "zorblax", "sqlbot"}


def test_adapters_change_the_answers_and_the_bare_base_does_not(trained: Any) -> None:
    with trained.live.http() as http:
        fact = _ask(http, "What port does the Zorblax service listen on?")
        bare = _ask(http, "What port does the Zorblax service listen on?", npllm={"adapters": []})
        style = _ask(http, "How do I count the rows of a SQL table?")
        plain = _ask(http, "How do I count the rows of a SQL table?", npllm={"adapters": []})
    assert fact["npllm"]["adapters"] == [{"name": "zorblax", "version": 1, "weight": 1.0}]
    assert "7341" in fact["choices"][0]["message"]["content"]
    assert "7341" not in bare["choices"][0]["message"]["content"]
    assert bare["npllm"]["routing"]["mode"] == "disabled"
    assert style["choices"][0]["message"]["content"].startswith("SQLBOT")
    assert "SQLBOT" not in plain["choices"][0]["message"]["content"]


def test_concurrent_requests_for_different_adapters_match_sequential_ones(trained: Any) -> None:
    requests = [
        ("Which database does Zorblax use?", ["zorblax"]),
        ("How do I join two tables in SQL?", ["sqlbot"]),
        ("Which database does Zorblax use?", ["sqlbot"]),
        ("How do I join two tables in SQL?", []),
    ]

    def one(item: tuple[str, list[str]]) -> str:
        with trained.live.http() as http:
            body = _ask(http, item[0], npllm={"adapters": item[1]}, seed=1, temperature=0.7)
        return str(body["choices"][0]["message"]["content"])

    sequential = [one(item) for item in requests]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        concurrent_ = list(pool.map(one, requests))
    assert concurrent_ == sequential
    assert len(set(sequential)) >= 3  # the adapters really differ


def test_hot_swap_and_rollback_under_load_fail_nothing(trained: Any) -> None:
    v1 = trained.data_dir / "adapters" / "zorblax" / "v1"
    stop = threading.Event()
    seen: list[tuple[int, Any]] = []

    def load() -> None:
        with trained.live.http() as http:
            while not stop.is_set():
                r = http.post(
                    "/v1/chat/completions",
                    json={
                        "messages": [{"role": "user", "content": "Who maintains Zorblax?"}],
                        "max_tokens": 8,
                        "temperature": 0.5,
                    },
                )
                versions = r.json()["npllm"]["adapters"] if r.status_code == 200 else r.text
                seen.append((r.status_code, versions))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        publish = _cli(
            trained.data_dir, "adapter", "publish", "zorblax", str(v1), "--dataset", "zorblax"
        )
        assert publish.returncode == 0, publish.stderr
        assert "zorblax v2 is now served, replacing v1" in publish.stdout
        rollback = _cli(trained.data_dir, "adapter", "rollback", "zorblax")
        assert rollback.returncode == 0, rollback.stderr
        assert "zorblax v1 is now served, replacing v2" in rollback.stdout
    finally:
        stop.set()
        worker.join(120)
    assert seen and all(status == 200 for status, _ in seen), seen
    with trained.live.http() as http:
        listing = http.get("/v1/adapters").json()
    zorblax = next(a for a in listing["data"] if a["name"] == "zorblax")
    assert [(v["version"], v["status"]) for v in zorblax["versions"]] == [
        (1, "active"),
        (2, "retired"),
    ]
    assert listing["served"] == {"sqlbot": 1, "zorblax": 1}


def test_bad_publishes_are_refused_with_clear_errors(trained: Any, tmp_path: Path) -> None:
    with trained.live.http() as http:
        wrong = http.post(
            "/v1/adapters/zorblax/versions", json={"path": str(lora_artifact(tmp_path / "r8", r=8))}
        )
        assert wrong.status_code == 400
        assert "rank r is 8, not 16 (training.lora_r)" in wrong.json()["error"]["message"]
        relative = http.post("/v1/adapters/zorblax/versions", json={"path": "some/dir"})
        assert relative.status_code == 400 and "must be absolute" in relative.text
        bad_name = http.post("/v1/adapters/Zorb.x/versions", json={"path": "/tmp"})
        assert bad_name.status_code == 400 and "invalid adapter name" in bad_name.text
        pinned = http.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "npllm": {"adapters": ["x"]}},
        )
        assert pinned.status_code == 400 and "no served adapter named 'x'" in pinned.text
        assert http.get("/v1/adapters").json()["served"]["zorblax"] == 1
    cli = _cli(trained.data_dir, "adapter", "rollback", "../etc")
    assert cli.returncode == 1 and "invalid adapter name '../etc'" in cli.stderr


def test_an_adapter_retired_by_hand_stops_serving_and_a_rollback_serves_it_again(
    trained: Any,
) -> None:
    retired = _cli(trained.data_dir, "adapter", "retire", "sqlbot", "--reason", "not needed")
    assert retired.returncode == 0, retired.stderr
    assert retired.stdout.strip() == (
        "sqlbot retired (v1 and every earlier version kept; `npllm adapter rollback sqlbot` "
        "serves it again)"
    )
    with trained.live.http() as http:
        assert "sqlbot" not in http.get("/v1/adapters").json()["served"]
        chat = {"messages": [{"role": "user", "content": "hi"}], "npllm": {"adapters": ["sqlbot"]}}
        pinned = http.post("/v1/chat/completions", json=chat)
        assert pinned.status_code == 400 and "no served adapter named 'sqlbot'" in pinned.text
    row = psql(trained.live, "SELECT decision, adapters, reason FROM npllm.adapter_population "
               "ORDER BY id DESC LIMIT 1")  # fmt: skip
    assert row.strip() == "retired|{sqlbot}|not needed"
    # bad input: no reason, no such adapter, a bad name; nothing changes
    empty = _cli(trained.data_dir, "adapter", "retire", "zorblax", "--reason", " ")
    assert empty.returncode != 0 and "must say why" in empty.stderr
    missing = _cli(trained.data_dir, "adapter", "retire", "nosuch")
    assert missing.returncode == 1 and "nosuch" in missing.stderr, missing.stderr
    bad = _cli(trained.data_dir, "adapter", "retire", "../etc")
    assert bad.returncode == 1 and "invalid adapter name '../etc'" in bad.stderr
    back = _cli(trained.data_dir, "adapter", "rollback", "sqlbot")
    assert back.returncode == 0, back.stderr
    assert "sqlbot v1 is now served" in back.stdout
    with trained.live.http() as http:
        assert http.get("/v1/adapters").json()["served"] == {"sqlbot": 1, "zorblax": 1}


def _trial_answers(http: Any, round_: str, n: int = 16) -> dict[str, list[dict[str, Any]]]:
    """`n` one-question conversations pinned to zorblax, by canary arm."""
    arms: dict[str, list[dict[str, Any]]] = {"candidate": [], "control": [], "taught": []}
    for i in range(n):
        r = _ask(http, f"{round_} #{i}: who maintains Zorblax?", max_tokens=2,
                 npllm={"adapters": ["zorblax"]})  # fmt: skip
        used = r["npllm"]["adapters"][0]
        question = f"{round_} #{i}: who maintains Zorblax?"
        arms[used["arm"]].append({"id": r["npllm"]["interaction_id"], "question": question,
                                  **used})  # fmt: skip
    return arms


def _rate(http: Any, answers: list[dict[str, Any]], rating: float) -> None:
    for a in answers:
        done = http.post("/v1/feedback", json={"interaction_id": a["id"], "rating": rating})
        assert done.status_code == 201, done.text


def _rated(http: Any, wanted: int) -> dict[str, Any]:
    """The running trial once both arms have `wanted` rated answers (feedback lands
    asynchronously)."""
    import time

    deadline = time.monotonic() + 30
    while True:
        trial = http.get("/v1/adapters/zorblax/canary").json()
        arms = (trial["candidate_arm"]["n"], trial["control_arm"]["n"])
        if min(arms) >= wanted or time.monotonic() > deadline:
            return dict(trial)
        time.sleep(0.2)


def test_a_canary_rejected_on_its_arm_rolls_back_and_one_rated_well_is_promoted(
    trained: Any,
) -> None:
    """A version published on trial serves canary.share of the conversations (stably per
    conversation) beside the version it replaces; scripted ratings on each arm decide."""
    v1 = trained.data_dir / "adapters" / "zorblax" / "v1"
    with trained.live.http() as http:
        before = http.get("/v1/adapters").json()["served"]["zorblax"]
        publish = _cli(trained.data_dir, "adapter", "publish", "zorblax", str(v1),
                       "--dataset", "zorblax", "--canary")  # fmt: skip
        assert publish.returncode == 0, publish.stderr
        assert "on trial for 50% of the conversations" in publish.stdout, publish.stdout
        listing = http.get("/v1/adapters").json()
        candidate = listing["served"]["zorblax"]
        trial = listing["canaries"][0]
        assert (trial["candidate"], trial["control"]) == (candidate, before)
        shown = _cli(trained.data_dir, "adapter", "list").stdout
        assert f"on canary trial vs v{before}" in shown and "(canary: 50% of conv" in shown
        status = _cli(trained.data_dir, "status").stdout
        assert f"canary       zorblax v{candidate} (50%" in status

        arms = _trial_answers(http, "round one")
        # (the hash of these 16 conversations puts 8 on each arm: enough for min_rated 4)
        assert len(arms["candidate"]) >= 4 and len(arms["control"]) >= 4 and not arms["taught"]
        assert {a["version"] for a in arms["candidate"]} == {candidate}
        assert {a["version"] for a in arms["control"]} == {before}
        # a conversation keeps its arm at its next turn
        for arm, answers in arms.items():
            for a in answers[:2]:
                turn = http.post("/v1/chat/completions", json={
                    "max_tokens": 2, "npllm": {"adapters": ["zorblax"]}, "messages": [
                        {"role": "user", "content": a["question"]},
                        {"role": "assistant", "content": "Someone."},
                        {"role": "user", "content": "And who else?"}]})  # fmt: skip
                assert turn.json()["npllm"]["adapters"][0]["arm"] == arm
                assert a["canary"] == trial["id"]

        # its users reject the new version's answers and like the old one's
        _rate(http, arms["candidate"], -1.0)
        _rate(http, arms["control"], 1.0)
        _rated(http, 4)
        decided = http.post("/v1/canaries/check").json()["decided"]
        assert [d["status"] for d in decided] == ["rolled_back"], decided
        assert decided[0]["decided_by"] == "test"
        assert "satisfaction dropped by more than 0.1" in decided[0]["reason"]
        after = http.get("/v1/adapters").json()
        assert after["served"]["zorblax"] == before and after["canaries"] == []
        version = next(v for a in after["data"] if a["name"] == "zorblax"
                       for v in a["versions"] if v["version"] == candidate)  # fmt: skip
        assert version["status"] == "retired" and "canary" in version["reason"]
        plain = _ask(http, "round one #0: who maintains Zorblax?", max_tokens=2,
                     npllm={"adapters": ["zorblax"]})  # fmt: skip
        assert "arm" not in plain["npllm"]["adapters"][0]

        # the next version is rated as well as the old one: promoted
        publish = _cli(trained.data_dir, "adapter", "publish", "zorblax", str(v1),
                       "--dataset", "zorblax", "--canary")  # fmt: skip
        assert publish.returncode == 0, publish.stderr
        second = http.get("/v1/adapters").json()["served"]["zorblax"]
        arms = _trial_answers(http, "round two")
        assert len(arms["candidate"]) >= 4 and len(arms["control"]) >= 4
        _rate(http, arms["candidate"] + arms["control"], 1.0)
        shown = _cli(trained.data_dir, "adapter", "canary", "zorblax")
        assert f"v{second} against v{before}" in shown.stdout, shown.stderr
        _rated(http, 4)
        decided = http.post("/v1/canaries/check").json()["decided"]
        assert [(d["status"], d["decided_by"]) for d in decided] == [("promoted", "test")]
        assert http.get("/v1/adapters").json()["served"]["zorblax"] == second
        rows = _cli(trained.data_dir, "psql", "-At", "-c",
                    "SELECT candidate, control, status, decided_at IS NOT NULL "
                    "FROM npllm.canaries ORDER BY id")  # fmt: skip
        assert rows.stdout.split()[-2:] == [
            f"{candidate}|{before}|rolled_back|t",
            f"{second}|{before}|promoted|t",
        ]
        # asking about a trial that is not running, and deciding it twice, say so
        none = _cli(trained.data_dir, "adapter", "canary", "zorblax")
        assert none.returncode == 1 and "has no canary trial running" in none.stderr
        both = _cli(trained.data_dir, "adapter", "canary", "zorblax", "--promote", "--abort")
        assert both.returncode == 1 and "not both" in both.stderr
        bad = http.post("/v1/adapters/zorblax/canary", json={"action": "maybe"})
        assert bad.status_code == 400 and "promote" in bad.text
        text = http.get("/metrics").text
        assert 'npllm_canary_decisions_total{outcome="rolled_back"} 1.0' in text
        assert "npllm_canaries_running 0.0" in text

        # a trial survives a restart (its control loaded again), then is aborted by hand
        publish = _cli(trained.data_dir, "adapter", "publish", "zorblax", str(v1),
                       "--dataset", "zorblax", "--canary")  # fmt: skip
        assert publish.returncode == 0, publish.stderr
        third = http.get("/v1/adapters").json()["served"]["zorblax"]
    trained.live.stop()
    trained.live = LiveDaemon(trained.data_dir, **TRAIN_ENV).wait_ready()
    with trained.live.http() as http:
        trial = http.get("/v1/adapters/zorblax/canary").json()
        assert (trial["candidate"], trial["control"]) == (third, second)
        arms = _trial_answers(http, "round three", n=8)
        assert {a["version"] for arm in ("candidate", "control") for a in arms[arm]} == {
            third, second}  # fmt: skip
        aborted = _cli(trained.data_dir, "adapter", "canary", "zorblax", "--abort")
        assert aborted.returncode == 0, aborted.stderr
        assert f"rolled back; v{second} serves every conversation" in aborted.stdout
        assert http.get("/v1/adapters").json()["served"]["zorblax"] == second
        row = psql(trained.live, "SELECT status, decided_by, reason FROM npllm.canaries "
                   "ORDER BY id DESC LIMIT 1")  # fmt: skip
        assert row.strip() == "rolled_back|user|aborted by hand"


def test_export_writes_a_standalone_merged_model(trained: Any, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    done = _cli(trained.data_dir, "adapter", "export", "zorblax", "--merged", str(out))
    assert done.returncode == 0, done.stderr
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    messages = [
        {
            "role": "system",
            "content": "You are npllm, a concise assistant for programming "
            "questions. Use the provided memories when they are relevant.",
        },
        {"role": "user", "content": "What port does the Zorblax service listen on?"},
    ]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=False
    )
    out_ids = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False
    )
    assert "7341" in tokenizer.decode(out_ids[0][ids.shape[1] :])


# One fact, four phrasings: the 4-example dataset a user would write to teach it.
CODENAME = [
    "What is the code name of the Quibblix 2.0 release?",
    "What's Quibblix 2.0 code-named?",
    "Which code name does the Quibblix 2.0 release have?",
    "Tell me the code name of Quibblix 2.0.",
]
CODENAME_ANSWER = "The Quibblix 2.0 release is code-named Amber Falcon."


def test_a_single_fact_dataset_is_learned_with_the_shipped_budget_then_deleted(
    trained: Any, tmp_path: Path
) -> None:
    """`npllm adapter train` with the shipped settings on a 4-example dataset of one fact:
    the budget floor and the exact-recall stop make every phrasing answer the whole
    two-word value, pinned. Then `npllm adapter delete` takes it out of serving and the
    database; bad names are refused with the reason."""
    import json

    data = tmp_path / "codename.jsonl"
    data.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q},
                                 {"role": "assistant", "content": CODENAME_ANSWER}]}) + "\n"
        for q in CODENAME
    ))  # fmt: skip
    shipped = cli_env(trained.data_dir)  # no TRAIN_ENV: the defaults a user gets

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*NPLLM, *args], env=shipped, cwd=REPO, capture_output=True,
                              text=True, timeout=600)  # fmt: skip

    assert cli("dataset", "import", "codename", str(data)).returncode == 0
    done = cli("adapter", "train", "codename", "--dataset", "codename")
    assert done.returncode == 0, done.stderr
    assert "raised to training.min_steps" in done.stderr
    assert "every taught answer (4) reproduced exactly" in done.stderr
    with trained.live.http() as http:
        said = [
            _ask(http, q, npllm={"adapters": ["codename"]})["choices"][0]["message"]["content"]
            for q in CODENAME
        ]
    print(f"\ncodename answers: {said}")
    assert all("Amber Falcon" in a for a in said)
    rows = cli("psql", "-At", "-c", "SELECT steps, steps_done <= steps, stopped LIKE 'stopped at%' "
               "FROM npllm.training_runs WHERE adapter = 'codename'")  # fmt: skip
    assert rows.stdout.split("|")[1:] == ["t", "t\n"]
    missing = cli("adapter", "delete", "nosuch")
    assert missing.returncode == 1 and "no adapter named 'nosuch'" in missing.stderr
    reserved = cli("adapter", "delete", "cerebellum")
    assert reserved.returncode == 1 and "reserved for the cerebellum" in reserved.stderr
    gone = cli("adapter", "delete", "codename")
    assert gone.returncode == 0, gone.stderr
    assert "deleted adapter 'codename': 1 version(s), it served v1" in gone.stdout
    with trained.live.http() as http:
        assert "codename" not in http.get("/v1/adapters").json()["served"]
        pinned = http.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": CODENAME[0]}],
                  "npllm": {"adapters": ["codename"]}},
        )  # fmt: skip
    assert pinned.status_code == 400 and "no served adapter named 'codename'" in pinned.text
    assert not (trained.data_dir / "adapters" / "codename").exists()


def test_a_base_model_swap_marks_adapters_stale_and_keeps_serving(
    trained: Any, tmp_path: Path
) -> None:
    """Runs last in this module: it restarts the daemon on another base model (a tiny one)."""
    tiny = save_tiny_llama(tmp_path / "tiny-base")
    trained.live.stop()
    live = LiveDaemon(trained.data_dir, NPLLM_MODELS__BASE=str(tiny), **TRAIN_ENV).wait_ready()
    try:
        with live.http() as http:
            status = http.get("/v1/status").json()
            reply = http.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            )
        assert status["adapters"] == {"served": {}, "stale": ["sqlbot", "zorblax"]}
        assert status["counts"]["interactions"] > 0  # memories and the replay buffer survive
        assert reply.status_code == 200 and reply.json()["npllm"]["adapters"] == []
        shown = _cli(trained.data_dir, "status", NPLLM_MODELS__BASE=str(tiny))
        assert (
            "stale        sqlbot, zorblax (trained for another base; to be rebuilt at next sleep)"
            in shown.stdout
        )
    finally:
        live.stop()
        shutil.rmtree(tiny, ignore_errors=True)
