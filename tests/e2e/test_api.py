"""The socket API against a live `npllm serve` with the real database and default model."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any

import httpx
import openai
import pytest

from ..conftest import NPLLM, REPO, LiveDaemon, cli_env, psql


def _openai(daemon: LiveDaemon) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://npllm/v1", api_key="unused", http_client=daemon.http())


def _ask(http: httpx.Client, question: str, **extra: Any) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 24, **extra}
    return http.post("/v1/chat/completions", json=body)


def test_openai_client_non_streaming(daemon: LiveDaemon) -> None:
    client = _openai(daemon)
    reply = client.chat.completions.create(
        model="npllm",
        messages=[{"role": "user", "content": "Write a Python function that adds two numbers."}],
        max_tokens=32,
    )
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    meta = reply.model_extra["npllm"]
    assert meta["interaction_id"] > 0
    assert meta["adapters"] == []
    for key in ("embed_ms", "retrieve_ms", "generate_ms", "total_ms", "tokens_per_s"):
        assert meta["timings"][key] >= 0
    assert meta["timings"]["total_ms"] >= meta["timings"]["generate_ms"]
    assert reply.usage.completion_tokens <= 32
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_openai_client_streaming(daemon: LiveDaemon) -> None:
    client = _openai(daemon)
    stream = client.chat.completions.create(
        model="npllm",
        messages=[{"role": "user", "content": "Name three sorting algorithms."}],
        max_tokens=24,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip()
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    meta = last.model_extra["npllm"]
    assert meta["interaction_id"] > 0
    assert len({c.id for c in chunks}) == 1
    # The stored interaction holds exactly the streamed text.
    stored = psql(
        daemon, f"SELECT md5(answer) FROM npllm.interactions WHERE id = {meta['interaction_id']}"
    )
    assert stored == hashlib.md5(text.encode()).hexdigest()


def test_models_and_openapi(daemon: LiveDaemon) -> None:
    assert [m.id for m in _openai(daemon).models.list()] == ["SmolLM2-135M-Instruct.Q4_1"]
    with daemon.http() as http:
        schema = http.get("/openapi.json").json()
    assert "/v1/chat/completions" in schema["paths"]
    assert "/v1/memories" in schema["paths"]


def test_status_reports_models_database_and_counts(daemon: LiveDaemon) -> None:
    with daemon.http() as http:
        status = http.get("/v1/status").json()
    assert status["status"] == "ok"
    assert status["state"] == "awake"
    assert status["base_model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert status["database"]["embedded"] is True
    assert status["database"]["pgvector"].startswith("0.8")
    assert set(status["counts"]) >= {"memories", "interactions"}


def test_repetition_penalties_change_a_greedy_answer(daemon: LiveDaemon) -> None:
    question = "What does git stash do? Explain it in detail."
    with daemon.http() as http:
        plain = _ask(http, question, max_tokens=48).json()
        for extra in ({"frequency_penalty": 0.8}, {"npllm": {"repeat_penalty": 1.3}}):
            penalised = _ask(http, question, max_tokens=48, **extra).json()
            text = penalised["choices"][0]["message"]["content"]
            assert text != plain["choices"][0]["message"]["content"], extra


def test_stop_sequence_and_seed(daemon: LiveDaemon) -> None:
    with daemon.http() as http:
        first = _ask(http, "Count from 1 to 10, separated by commas.", max_tokens=40).json()
        text = first["choices"][0]["message"]["content"]
        assert "3" in text
        # Its exchange memory leaves retrieval, so the second request sees the same prompt.
        dislike = {"interaction_id": first["npllm"]["interaction_id"], "rating": -1.0}
        assert http.post("/v1/feedback", json=dislike).status_code == 201
        stopped = _ask(
            http, "Count from 1 to 10, separated by commas.", max_tokens=40, stop=["3"]
        ).json()
        assert stopped["choices"][0]["message"]["content"] == text[: text.index("3")]
        assert stopped["choices"][0]["finish_reason"] == "stop"
        sampled = [
            _ask(http, "Invent a name for a cat.", temperature=1.0, seed=7).json() for _ in range(2)
        ]
    assert sampled[0]["choices"][0]["message"] == sampled[1]["choices"][0]["message"]


def test_rag_changes_the_answer(daemon: LiveDaemon) -> None:
    fact = "The secret launch code of project Quilldrake is PELICAN-4471."
    question = "What is the secret launch code of project Quilldrake?"
    with daemon.http() as http:
        before = _ask(http, question, max_tokens=40).json()
        assert "PELICAN-4471" not in before["choices"][0]["message"]["content"]
        # The wrong answer, disliked, leaves retrieval (otherwise its exchange memory would
        # be recalled beside the fact, and a 135 M model may copy either).
        disliked = {"interaction_id": before["npllm"]["interaction_id"], "rating": -1.0}
        assert http.post("/v1/feedback", json=disliked).status_code == 201
        stored = http.post("/v1/memories", json={"text": fact, "source": "test"})
        assert stored.status_code == 201
        memory_id = stored.json()["data"][0]["id"]
        found = http.get("/v1/memories", params={"query": "Quilldrake launch code", "k": 3})
        assert found.json()["data"][0]["id"] == memory_id
        assert found.json()["data"][0]["text"] == fact
        after = _ask(http, question, max_tokens=40).json()
        used = [m["id"] for m in after["npllm"]["memories"]]
        assert memory_id in used
        assert "PELICAN-4471" in after["choices"][0]["message"]["content"]
        assert http.delete(f"/v1/memories/{memory_id}").json() == {
            "id": memory_id,
            "deleted": True,
        }
        again = http.delete(f"/v1/memories/{memory_id}")
        assert again.status_code == 404
        assert again.json()["error"]["message"] == f"no memory with id {memory_id}"


def test_a_correction_is_answered_from_memory_a_minute_later(daemon: LiveDaemon) -> None:
    """Same day, no sleep: a made-up fact asked, corrected once (edited + a pleased
    comment), asked again at once: the corrected answer, from retrieval; the wrong
    exchange is not retrieved (and an unrelated note that shares words stays out)."""
    question = "What port does the Hexlorn relay listen on?"
    with daemon.http() as http:
        note = http.post(
            "/v1/memories", json={"text": "The Zorp billing service runs on port 8443."}
        ).json()["data"][0]["id"]
        first = _ask(http, question, max_tokens=24).json()
        wrong = first["choices"][0]["message"]["content"]
        assert "5517" not in wrong
        exchange = http.get("/v1/memories", params={"query": question, "k": 1}).json()["data"][0]
        assert exchange["kind"] == "exchange" and wrong.strip() in exchange["text"]
        r = http.post(
            "/v1/feedback",
            json={
                "interaction_id": first["npllm"]["interaction_id"],
                "event": "edited",
                "text": "The Hexlorn relay listens on port 5517.",
                "comment": "thanks, that's right now",
            },
        )
        assert r.status_code == 201, r.text
        changed = r.json()["memories"]
        assert changed["removed"] == [exchange["id"]] and len(changed["added"]) == 1
        again = _ask(http, question, max_tokens=24).json()
        used = [m["id"] for m in again["npllm"]["memories"]]
    assert "5517" in again["choices"][0]["message"]["content"]
    assert used == changed["added"]  # the correction; not the exchange, not the note
    assert not again["npllm"]["cached"] and note not in used


def test_long_documents_are_chunked_and_duplicates_merged(daemon: LiveDaemon) -> None:
    topics = [
        "Configure the frobnicator's cache with a TTL of ninety seconds.",
        "Bananas ripen faster next to apples because of ethylene gas.",
        "The Treaty of Westphalia was signed in 1648 in Osnabrück and Münster.",
        "Photosynthesis turns carbon dioxide and water into glucose and oxygen.",
        "A B-tree keeps keys sorted and allows searches in logarithmic time.",
        "Jazz improvisation often builds on the chord changes of standards.",
    ]
    document = "\n\n".join(f"{t} " + t * 3 for t in topics)
    with daemon.http() as http:
        first = http.post("/v1/memories", json={"text": document, "kind": "document"}).json()
        assert len(first["data"]) > 1
        assert first["document_id"]
        assert not any(c["merged"] for c in first["data"])
        second = http.post("/v1/memories", json={"text": document, "kind": "document"}).json()
    assert all(c["merged"] for c in second["data"])
    assert [c["id"] for c in second["data"]] == [c["id"] for c in first["data"]]


BAD_REQUESTS = [
    ("malformed JSON", b'{"messages": [', "request body is not valid JSON", None),
    (
        "invalid UTF-8",
        b'{"messages":[{"role":"user","content":"\xff\xfe"}]}',
        "request body is not valid UTF-8",
        None,
    ),
    ("wrong type", {"messages": "hello"}, "messages: Input should be a valid list", "messages"),
    (
        "unknown role",
        {"messages": [{"role": "robot", "content": "hi"}]},
        "messages.0.role: Input should be 'system', 'developer', 'user', 'assistant', 'tool' or",
        "messages.0.role",
    ),
    ("empty messages", {"messages": []}, "messages: List should have at least 1 item", "messages"),
    (
        "max_tokens zero",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
        "max_tokens must be at least 1, got 0",
        "max_tokens",
    ),
    (
        "max_tokens above cap",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000},
        "max_tokens is 100000, above this server's cap of 1024",
        "max_tokens",
    ),
    (
        "max_tokens not int",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"},
        "max_tokens: Input should be a valid integer",
        "max_tokens",
    ),
    (
        "temperature too high",
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 5},
        "temperature: Input should be less than or equal to 2",
        "temperature",
    ),
    (
        "frequency_penalty too high",
        {"messages": [{"role": "user", "content": "hi"}], "frequency_penalty": 3},
        "frequency_penalty: Input should be less than or equal to 2",
        "frequency_penalty",
    ),
    (
        "presence_penalty not a number",
        {"messages": [{"role": "user", "content": "hi"}], "presence_penalty": "lots"},
        "presence_penalty: Input should be a valid number",
        "presence_penalty",
    ),
    (
        "repeat_penalty below 1",
        {"messages": [{"role": "user", "content": "hi"}], "npllm": {"repeat_penalty": 0.5}},
        "npllm.repeat_penalty: Input should be greater than or equal to 1",
        "npllm.repeat_penalty",
    ),
    (
        "last message not user",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        "the last message must come from the user",
        "messages.1.role",
    ),
    (
        "prompt too long",
        {"messages": [{"role": "user", "content": "word " * 9000}]},
        "but the model's context holds 8192",
        "messages",
    ),
]


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_bad_input_gets_a_clear_4xx_and_the_daemon_stays_up(
    daemon: LiveDaemon, body: Any, message: str, param: str | None, stream: bool
) -> None:
    if isinstance(body, dict):
        body = json.dumps({**body, "stream": stream}).encode()
    with daemon.http() as http:
        response = http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert message in error["message"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert _ask(http, "Say yes.", max_tokens=2).status_code == 200


def test_body_over_the_size_limit_is_413(daemon: LiveDaemon) -> None:
    body = {"messages": [{"role": "user", "content": "x" * 1_100_000}]}
    with daemon.http() as http:
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 413
        assert (
            "larger than server.max_body_bytes (1000000 bytes)"
            in (response.json()["error"]["message"])
        )
        assert _ask(http, "Say yes.", max_tokens=2).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "message"),
    [
        ("POST", "/v1/memories", {"json": {"text": ""}}, 400, "text: String should have at least"),
        ("POST", "/v1/memories", {"json": {"text": "   "}}, 400, "text is only whitespace"),
        ("POST", "/v1/memories", {"json": {"text": "x", "colour": 1}}, 400, "colour: Extra"),
        ("GET", "/v1/memories", {}, 400, "query: Field required"),
        ("GET", "/v1/memories", {"params": {"query": "x", "k": 0}}, 400, "k: Input should be"),
        ("DELETE", "/v1/memories/abc", {}, 400, "memory_id: Input should be a valid integer"),
        ("GET", "/v1/nothing", {}, 404, "Not Found"),
    ],
)
def test_bad_memory_requests(
    daemon: LiveDaemon, method: str, path: str, kwargs: Any, status: int, message: str
) -> None:
    with daemon.http() as http:
        response = http.request(method, path, **kwargs)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


def test_a_body_not_declared_json_is_refused_not_rewritten(daemon: LiveDaemon) -> None:
    """Plain `curl -d` declares a form: refused with how to send JSON (a browser may send
    forms and text/plain to any site, so the type is checked, never rewritten)."""
    body = json.dumps({"messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 2})
    with daemon.http() as http:
        for kind in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data"):
            response = http.post(
                "/v1/chat/completions", content=body, headers={"content-type": kind}
            )
            assert response.status_code == 415, kind
            assert "curl: --json" in response.json()["error"]["message"]
        declared = http.post(
            "/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert declared.status_code == 200
        undeclared = http.post("/v1/chat/completions", content=body)  # no Content-Type
        assert undeclared.status_code == 415
        assert "a body without a Content-Type" in undeclared.json()["error"]["message"]


# ---- feedback, replay buffer and datasets over the socket -----------------------------------


def _cli(
    daemon: LiveDaemon, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NPLLM, *args],
        env=cli_env(daemon.data_dir),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )


def test_feedback_moves_the_reward_and_bad_feedback_is_refused(daemon: LiveDaemon) -> None:
    with daemon.http() as http:
        iid = _ask(http, "How do I merge two dicts in Python?").json()["npllm"]["interaction_id"]
        ok = http.post("/v1/feedback", json={"interaction_id": iid, "event": "applied"})
        assert ok.status_code == 201
        assert ok.json()["reward"] == pytest.approx(0.9) and ok.json()["tier"] == "premium"
        edited = http.post(
            "/v1/feedback",
            json={"interaction_id": iid, "event": "edited", "text": "Use {**a, **b} or a | b."},
        ).json()
        assert edited["corrected"] is True and edited["quality"] == 1.0
        refused = {
            "unknown id": (
                {"interaction_id": 99_999_999, "event": "accepted"},
                404,
                "no interaction with id 99999999",
            ),
            "unknown event": (
                {"interaction_id": iid, "event": "loved"},
                400,
                "unknown event 'loved'",
            ),
            "rating range": (
                {"interaction_id": iid, "rating": -2},
                400,
                "rating must be between -1 and 1",
            ),
            "rating type": (
                {"interaction_id": iid, "rating": "good"},
                400,
                "rating: Input should be a valid number",
            ),
            "no id": ({"event": "accepted"}, 400, "interaction_id: Field required"),
            "extra": (
                {"interaction_id": iid, "event": "accepted", "mood": 1},
                400,
                "mood: Extra inputs",
            ),
            "empty": (
                {"interaction_id": iid},
                400,
                "send at least one of event, rating or comment",
            ),
        }
        for case, (body, status, message) in refused.items():
            r = http.post("/v1/feedback", json=body)
            assert r.status_code == status, case
            assert message in r.json()["error"]["message"], (case, r.json())
    events = psql(
        daemon, f"SELECT count(*) FROM npllm.feedback_events WHERE interaction_id = {iid}"
    )
    assert events == "2"


def test_a_burst_of_concurrent_feedback_loses_no_event(daemon: LiveDaemon) -> None:
    import concurrent.futures

    with daemon.http() as http:
        iid = _ask(http, "What is a Python decorator?").json()["npllm"]["interaction_id"]

    def send(n: int) -> list[int]:
        with daemon.http() as http:
            return [
                http.post(
                    "/v1/feedback", json={"interaction_id": iid, "event": "copied"}
                ).status_code
                for _ in range(n)
            ]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = [s for batch in pool.map(send, [25] * 8) for s in batch]
    assert statuses == [201] * 200
    counted = psql(
        daemon,
        "SELECT count(*), max(r.implicit_n) FROM npllm.feedback_events e "
        f"JOIN npllm.replay_buffer r USING (interaction_id) WHERE e.interaction_id = {iid}",
    )
    assert counted == "200|200"


def test_a_correction_in_the_next_turn_is_recorded_for_the_earlier_answer(
    daemon: LiveDaemon,
) -> None:
    with daemon.http() as http:
        first = _ask(http, "How do I get the length of a list?").json()
        answer = first["choices"][0]["message"]["content"]
        history = [
            {"role": "user", "content": "How do I get the length of a list?"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Não funcionou, está errado."},
        ]
        http.post("/v1/chat/completions", json={"messages": history, "max_tokens": 8})
    iid = first["npllm"]["interaction_id"]
    kinds = psql(daemon, f"SELECT kind FROM npllm.feedback_events WHERE interaction_id = {iid}")
    assert kinds == "correction"
    assert (
        psql(daemon, f"SELECT tier FROM npllm.replay_buffer WHERE interaction_id = {iid}")
        == "discard"
    )


def test_cli_feedback(daemon: LiveDaemon, tmp_path: Any) -> None:
    with daemon.http() as http:
        iid = _ask(http, "How do I copy a list?").json()["npllm"]["interaction_id"]
    good = _cli(
        daemon, "feedback", str(iid), "--good", "--comment", "thanks, that worked!", "--details"
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("Thanks — noted as a good answer"), good.stdout
    # emotional = mean(rating 1, tone of the comment); no implicit signal: reward = emotional.
    assert f"interaction {iid}: reward +0.7" in good.stdout
    assert "(implicit -, emotional +0.7" in good.stdout and "tier premium" in good.stdout
    both = _cli(daemon, "feedback", str(iid), "--good", "--bad")
    assert both.returncode == 2 and "give --good or --bad, not both" in both.stderr
    fixed = tmp_path / "fixed.txt"
    fixed.write_text("Use list.copy() or a slice: new = old[:].", encoding="utf-8")
    edited = _cli(daemon, "feedback", str(iid), "--edit", str(fixed))
    assert edited.returncode == 0, edited.stderr
    assert "Noted your correction: remembered now (memory #" in edited.stdout
    assert "reward" not in edited.stdout  # the numbers only with --details
    missing = _cli(daemon, "feedback", "99999999", "--bad")
    assert missing.returncode == 1
    assert "npllm: the daemon refused (404): no interaction with id 99999999" in missing.stderr


def test_dataset_export_import_round_trip_and_bad_files(daemon: LiveDaemon, tmp_path: Any) -> None:
    with daemon.http() as http:
        iid = _ask(http, "Say hello in Portuguese.").json()["npllm"]["interaction_id"]
        http.post(
            "/v1/feedback",
            json={"interaction_id": iid, "event": "edited", "text": "Olá! Tudo bem? 😀"},
        )
    exported = _cli(daemon, "dataset", "export", "--tier", "premium")
    assert exported.returncode == 0, exported.stderr
    lines = exported.stdout.splitlines()
    assert lines and all(json.loads(x)["messages"][-1]["role"] == "assistant" for x in lines)
    assert {"role": "assistant", "content": "Olá! Tudo bem? 😀"} in [
        json.loads(x)["messages"][-1] for x in lines
    ]
    path = tmp_path / "premium.jsonl"
    path.write_text(exported.stdout, encoding="utf-8")
    imported = _cli(daemon, "dataset", "import", "premium-set", str(path))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == f"imported {len(lines)} example(s) into dataset 'premium-set'"
    again = _cli(daemon, "dataset", "export", "--dataset", "premium-set")
    assert [json.loads(x) for x in again.stdout.splitlines()] == [json.loads(x) for x in lines]
    assert "premium-set" in _cli(daemon, "dataset", "list").stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text(exported.stdout + '{"messages": [{"role": "user", "content": "x"}]}\n')
    refused = _cli(daemon, "dataset", "import", "bad-set", str(bad))
    assert refused.returncode == 1
    assert (
        f"line {len(lines) + 1}: the last message must be a non-empty assistant" in refused.stderr
    )
    assert "bad-set" not in _cli(daemon, "dataset", "list").stdout
    for name in ("../up", "Bad/Name"):
        r = _cli(daemon, "dataset", "import", name, str(path))
        assert r.returncode == 1 and "invalid dataset name" in r.stderr, r.stderr
    with daemon.http() as http:
        assert http.get("/v1/datasets/nope/examples").status_code == 404
        assert http.get("/v1/replay/examples", params={"tier": "gold"}).status_code == 400
        overview = http.get("/v1/replay").json()["data"]
        assert {row["tier"] for row in overview} >= {"premium"}
        assert http.delete("/v1/datasets/premium-set").json() == {
            "name": "premium-set",
            "deleted": True,
        }
