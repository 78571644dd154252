"""Regression tests: each input the API fuzzer (tests/e2e/test_fuzz.py, `make fuzz`) found
answering 500, sent exactly as it found it, now answered with a clear 4xx (or a documented
rule) — and nothing half-written."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from ..conftest import NPLLM, REPO, LiveDaemon, cli_env
from ..conftest import ask_ok as _ask

HI = [{"role": "user", "content": "Say yes."}]

JSON = {"content-type": "application/json"}
JSON_LINES = {"content-type": "application/x-ndjson"}


def _error(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def _memories(http: Any) -> int:
    return int(http.get("/v1/status").json()["counts"]["memories"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"text": "\u0000"}, "text"),  # found: 500 "cannot contain NUL (0x00) bytes"
        ({"text": "ok", "source": "a\u0000b"}, "source"),
    ],
)
def test_a_nul_in_a_memory_is_refused_naming_the_field(
    daemon: LiveDaemon, body: dict[str, Any], param: str
) -> None:
    with daemon.http() as http:
        before = _memories(http)
        error = _error(http.post("/v1/memories", json=body))
        assert error["param"] == param
        assert f"{param} contains the NUL character (U+0000)" in error["message"]
        assert "PostgreSQL cannot store" in error["message"]
        assert _memories(http) == before  # nothing written


def test_a_nul_in_a_query_parameter_is_refused(daemon: LiveDaemon) -> None:
    with daemon.http() as http:
        # found: GET /v1/replay/examples?tag=%00 → 500
        error = _error(http.get("/v1/replay/examples", params={"tag": "\u0000"}))
        assert error["param"] == "tag" and "NUL character" in error["message"]
        error = _error(http.get("/v1/memories", params={"query": "a\u0000"}))
        assert error["param"] == "query"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_nul_in_a_message_is_refused_before_generating(daemon: LiveDaemon, stream: bool) -> None:
    messages = [{"role": "user", "content": "What is\u0000 git?"}]
    with daemon.http() as http:
        before = http.get("/v1/status").json()["counts"]["interactions"]
        body = {"messages": messages, "max_tokens": 2, "stream": stream}
        error = _error(http.post("/v1/chat/completions", json=body))
        assert error["param"] == "messages.0.content"
        assert http.get("/v1/status").json()["counts"]["interactions"] == before


def test_a_nul_in_feedback_and_in_publish_metrics_is_refused(daemon: LiveDaemon) -> None:
    with daemon.http() as http:
        interaction = _ask(http, "Say yes.", max_tokens=2)["npllm"]["interaction_id"]
        body = {"interaction_id": interaction, "comment": "bad\u0000"}
        assert _error(http.post("/v1/feedback", json=body))["param"] == "comment"
        body = {"path": "/nowhere", "metrics": {"k\u0000": 1}}
        error = _error(http.post("/v1/adapters/fuzzed/versions", json=body))
        assert error["param"] == "metrics.k\\u0000" and "has a key that" in error["message"]


def test_a_nul_in_a_dataset_line_names_the_line_and_imports_nothing(daemon: LiveDaemon) -> None:
    line = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\0"}]}
    with daemon.http() as http:
        response = http.post(
            "/v1/datasets/nul-test", content=json.dumps(line).encode(), headers=JSON_LINES
        )
        error = _error(response)
        assert "line 1: messages[1].content contains the NUL character" in error["message"]
        assert http.get("/v1/datasets/nul-test/examples").status_code == 404


def test_a_dataset_line_may_hold_a_line_separator_character(daemon: LiveDaemon) -> None:
    """U+2028 is valid raw inside a JSON string; the import once split lines at it."""
    line = {
        "messages": [{"role": "user", "content": "a\u2028b"}, {"role": "assistant", "content": "c"}]
    }
    data = json.dumps(line, ensure_ascii=False).encode()
    with daemon.http() as http:
        assert (
            http.post("/v1/datasets/sep-test", content=data, headers=JSON_LINES).status_code == 201
        )
        assert http.get("/v1/datasets/sep-test/examples").text.count("\n") == 1
        assert http.delete("/v1/datasets/sep-test").status_code == 200


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_denormal_temperature_and_top_p_sample_greedily(daemon: LiveDaemon, stream: bool) -> None:
    """found: temperature = top_p = 5e-324 → 500 "probability tensor contains either inf,
    nan or element < 0". Below the floors the rule is greedy (npllm/llm.py)."""
    body = {
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 8,
        "temperature": 5e-324,
        "top_p": 5e-324,
        "stream": stream,
    }
    with daemon.http() as http:
        first = http.post("/v1/chat/completions", json=body)
        assert first.status_code == 200, first.text
        if not stream:
            # Greedy answers are cached (sampled ones never are): the same request again
            # is answered from the cache, word for word.
            again = http.post("/v1/chat/completions", json=body).json()
            assert again["npllm"]["cached"] is True
            assert again["choices"][0]["message"] == first.json()["choices"][0]["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["temperature", "top_p", "frequency_penalty"])
def test_non_finite_numbers_are_refused_naming_the_parameter(
    daemon: LiveDaemon, literal: str, field: str
) -> None:
    """Python's json module reads NaN and Infinity, which JSON does not have."""
    body = f'{{"messages": [{{"role": "user", "content": "hi"}}], "{field}": {literal}}}'
    with daemon.http() as http:
        response = http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        error = _error(response)
        assert error["param"] == field and "finite" in error["message"]


def test_a_lone_surrogate_in_a_message_is_refused(daemon: LiveDaemon) -> None:
    """found: content "hi \\udfff" → 500 "TextEncodeInput must be Union[...]" (the
    tokenizer cannot encode it; nor could PostgreSQL store it)."""
    body = b'{"messages": [{"role": "user", "content": "hi \\udfff"}], "max_tokens": 2}'
    with daemon.http() as http:
        response = http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        error = _error(response)
        assert error["param"] == "messages.0.content" and "lone surrogate" in error["message"]
        # A surrogate pair is one character (an emoji) and is answered.
        pair = b'{"messages": [{"role": "user", "content": "Say yes \\ud83d\\ude00"}], '
        pair += b'"max_tokens": 2}'
        assert http.post("/v1/chat/completions", content=pair, headers=JSON).status_code == 200


def test_a_405_says_which_methods_the_path_takes(daemon: LiveDaemon) -> None:
    """found: TRACE /v1/status → 405 without the Allow header RFC 9110 requires; and
    POST /v1/datasets/{name}/examples → 400 (the name rule) instead of 405."""
    with daemon.http() as http:
        response = http.request("TRACE", "/v1/status")
        assert response.status_code == 405 and "GET" in response.headers["allow"]
        response = http.post("/v1/datasets/x/examples", content=b"{}", headers=JSON)
        assert response.status_code == 405 and response.headers["allow"] == "GET"
        assert http.delete("/v1/datasets/x/examples").status_code == 405


def test_a_centroid_beyond_float32_is_refused(daemon: LiveDaemon, tmp_path: Any) -> None:
    """1e300 is a finite JSON number but inf as a float32, which pgvector refuses."""
    body = {"path": str(tmp_path), "centroid": [1e300] * 384}
    with daemon.http() as http:
        error = _error(http.post("/v1/adapters/fuzzed/versions", json=body))
        assert error["param"] == "centroid" and "float32" in error["message"]


def test_the_spec_states_errors_constraints_and_links(daemon: LiveDaemon) -> None:
    with daemon.http() as http:
        spec = http.get("/openapi.json").json()
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "405", "413", "503"} <= set(chat["responses"]) and "422" not in chat["responses"]
    link = chat["responses"]["200"]["links"]["feedback"]
    assert link["requestBody"]["interaction_id"] == "$response.body#/npllm/interaction_id"
    request = spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert {"type": "integer", "minimum": 1, "maximum": 1024} in [
        {k: b.get(k) for k in ("type", "minimum", "maximum")}
        for b in request["max_tokens"]["anyOf"]
    ]
    event = spec["components"]["schemas"]["FeedbackIn"]["properties"]["event"]["anyOf"][0]
    assert "edited" in event["enum"]
    name = spec["paths"]["/v1/datasets/{name}"]["delete"]["parameters"][0]["schema"]
    assert name["pattern"] == "^[a-z0-9][a-z0-9_-]{0,62}$"
    text = spec["components"]["schemas"]["MemoryIn"]["properties"]["source"]
    assert text["pattern"] == "^[^\\x00]*$"


def test_the_cli_gets_the_same_clear_message(daemon: LiveDaemon, tmp_path: Any) -> None:
    note = tmp_path / "note.txt"
    note.write_text("pelican\u0000staging", encoding="utf-8")
    line = {
        "messages": [{"role": "user", "content": "q\u0000"}, {"role": "assistant", "content": "a"}]
    }
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(line) + "\n", encoding="utf-8")
    for args, message in [
        (["remember", "--file", str(note)], "text contains the NUL character (U+0000)"),
        (["dataset", "import", "nul-cli", str(data)], "line 1: messages[0].content contains"),
    ]:
        done = subprocess.run(
            [*NPLLM, *args], env=cli_env(daemon.data_dir), cwd=REPO, capture_output=True, text=True
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "npllm: the daemon refused (400)" in done.stderr and message in done.stderr


def test_a_denormal_rating_is_kept_to_four_decimals(daemon: LiveDaemon) -> None:
    """found (make fuzz, stateful phase): rating 1e-320 → 500 "value out of range:
    underflow" (a rating is stored as a PostgreSQL real)."""
    with daemon.http() as http:
        interaction = _ask(http, "Say yes.", max_tokens=2)["npllm"]["interaction_id"]
        body = {"interaction_id": interaction, "rating": 1e-320}
        response = http.post("/v1/feedback", json=body)
        assert response.status_code == 201, response.text
        assert response.json()["emotional"] == 0.0
