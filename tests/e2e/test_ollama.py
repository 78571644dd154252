"""Ollama's API and OpenAI's embeddings against a live `npllm serve`, driven by the stock
`ollama` and `openai` clients as a tool configured for them would."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import numpy as np
import ollama
import openai
import pytest

from ..conftest import LiveDaemon, psql

SHORT = {"num_predict": 16}


def _ollama(daemon: LiveDaemon) -> ollama.Client:
    # The client passes its keyword arguments on to httpx.Client.
    transport = httpx.HTTPTransport(uds=str(daemon.socket))
    return ollama.Client(host="http://npllm", transport=transport, timeout=300)


def _openai(daemon: LiveDaemon) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://npllm/v1", api_key="unused", http_client=daemon.http())


def _lines(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", path, json=body) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in reply.iter_lines() if line]


def test_chat_streamed_and_whole_with_the_ollama_client(daemon: LiveDaemon) -> None:
    client = _ollama(daemon)
    question = [{"role": "user", "content": "Name three sorting algorithms."}]
    parts = list(client.chat(model="smollm2", messages=question, options=SHORT, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    text = "".join(p.message.content or "" for p in parts)
    assert text.strip()
    last = parts[-1]
    assert last.done_reason in ("stop", "length")
    assert 0 < last.eval_count <= 16 and last.prompt_eval_count > 0
    assert last.total_duration >= last.eval_duration > 0
    whole = client.chat(model="smollm2", messages=question, options=SHORT, stream=False)
    assert whole.done and whole.message.role == "assistant"
    assert whole.message.content == text  # greedy by default, as npllm's chat route is


def test_the_final_object_carries_npllm_metadata_and_can_be_rated(daemon: LiveDaemon) -> None:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "What is a linked list?"}],
        "options": SHORT,
    }
    with daemon.http() as http:
        lines = _lines(http, "/api/chat", body)  # stream is Ollama's default
        final = lines[-1]
        assert final["done"] is True and "npllm" not in lines[0]
        streamed = "".join(line["message"]["content"] for line in lines)
        interaction = final["npllm"]["interaction_id"]
        stored = psql(daemon, f"SELECT answer FROM npllm.interactions WHERE id = {interaction}")
        assert stored == streamed
        rated = http.post("/v1/feedback", json={"interaction_id": interaction, "rating": 1.0})
        assert rated.status_code == 201, rated.text
        whole = http.post("/api/generate", json={**body, "prompt": "Hi", "stream": False})
        assert whole.json()["npllm"]["interaction_id"] > interaction


def test_generate_templates_the_prompt_as_one_chat_turn(daemon: LiveDaemon) -> None:
    client = _ollama(daemon)
    prompt = "Write a haiku about the sea."
    reply = client.generate(model="smollm2", prompt=prompt, options=SHORT, stream=False)
    assert reply.done and reply.response.strip()
    parts = list(client.generate(model="smollm2", prompt=prompt, options=SHORT, stream=True))
    assert "".join(p.response or "" for p in parts) == reply.response
    system = client.generate(
        model="smollm2", prompt=prompt, system="Answer in French.", options=SHORT
    )
    assert system.prompt_eval_count > reply.prompt_eval_count
    # An empty prompt only says the model is loaded, as Ollama answers.
    loaded = client.generate(model="smollm2", prompt="")
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""


def test_models_as_ollama_lists_them(daemon: LiveDaemon) -> None:
    client = _ollama(daemon)
    (model,) = client.list().models
    assert model.model == "SmolLM2-135M-Instruct.Q4_1:latest"
    assert model.details.family == "llama" and model.details.format == "gguf"
    assert model.details.parameter_size == "135M"
    assert model.details.quantization_level == "Q4_1"
    assert model.size > 50_000_000 and len(model.digest) == 64
    assert [m.model for m in client.ps().models] == [model.model]
    shown = client.show("anything")
    assert shown.details.family == "llama" and shown.capabilities == ["completion"]
    with daemon.http() as http:
        assert http.get("/api/version").json()["version"]


def test_embeddings_agree_across_the_three_routes(daemon: LiveDaemon) -> None:
    texts = ["The Kestrel gateway listens on port 4471.", "How do I rebase a branch?"]
    ours = _ollama(daemon).embed(model="all-minilm", input=texts).embeddings
    assert len(ours) == 2 and all(len(v) == 384 for v in ours)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    legacy = _ollama(daemon).embeddings(model="all-minilm", prompt=texts[0]).embedding
    assert np.allclose(legacy, ours[0], atol=1e-6)
    # The openai client asks for base64 and decodes it.
    reply = _openai(daemon).embeddings.create(model="text-embedding-3-small", input=texts)
    assert [d.index for d in reply.data] == [0, 1]
    assert np.allclose([d.embedding for d in reply.data], ours, atol=1e-6)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 10
    with daemon.http() as http:
        floats = http.post("/v1/embeddings", json={"input": texts[1], "dimensions": 384}).json()
        assert np.allclose(floats["data"][0]["embedding"], ours[1], atol=1e-6)
        packed = http.post(
            "/v1/embeddings", json={"input": texts[1], "encoding_format": "base64"}
        ).json()["data"][0]["embedding"]
        assert np.allclose(np.frombuffer(base64.b64decode(packed), "<f4"), ours[1], atol=1e-6)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"input": [[101, 2023]]}, "token ids"),
        ({"input": [1, 2, 3]}, "token ids"),
        ({"input": "x", "dimensions": 128}, "384-dimensional"),
        ({"input": ["x"] * 257}, "more than the 256"),
        ({"input": []}, "input is empty"),
    ],
)
def test_bad_embedding_requests_are_refused_clearly(
    daemon: LiveDaemon, body: dict[str, Any], words: str
) -> None:
    with daemon.http() as http:
        reply = http.post("/v1/embeddings", json=body)
    assert reply.status_code == 400
    assert words in reply.json()["error"]["message"]


def test_an_embedding_longer_than_the_window_is_cut_unless_told_not_to(
    daemon: LiveDaemon,
) -> None:
    long = "word " * 400
    client = _ollama(daemon)
    assert len(client.embed(model="m", input=long).embeddings[0]) == 384
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="m", input=long, truncate=False)
    assert refused.value.status_code == 400 and "window of 256" in refused.value.error


USER = [{"role": "user", "content": "Hello"}]


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/api/chat", {"messages": USER, "tools": [{"type": "function"}]}, "tools are not"),
        ("/api/chat", {"messages": [{**USER[0], "images": ["aGk="]}]}, "reads text only"),
        ("/api/chat", {"messages": USER, "format": "json"}, "format (JSON mode"),
        ("/api/chat", {"messages": USER, "think": True}, "does not think"),
        ("/api/chat", {}, "messages is required"),
        ("/api/chat", {"messages": [{"role": "tool", "content": "4"}]}, "takes no tool"),
        ("/api/chat", {"messages": [{"role": "robot", "content": "x"}]}, "must be one of"),
        ("/api/chat", {"messages": [{"role": "assistant", "content": "x"}]}, "from the user"),
        ("/api/chat", {"messages": [{"role": "user", "content": " "}]}, "message is empty"),
        ("/api/chat", {"messages": USER, "options": {"temperature": 5}}, "options.temperature"),
        ("/api/generate", {"prompt": "def f(", "suffix": "return"}, "needs a base model with FIM"),
        ("/api/generate", {"prompt": "Hi", "template": "{{ .Prompt }}"}, "template is not"),
        ("/api/generate", {"prompt": "Hi", "images": ["aGk="]}, "reads text only"),
        ("/api/generate", {"prompt": "Hi\u0000"}, "NUL"),
        ("/api/chat", {"messages": USER, "npllm": {"adapters": ["nope"]}}, "no served adapter"),
    ],
)
def test_what_npllm_cannot_do_is_refused_in_ollamas_error_shape(
    daemon: LiveDaemon, path: str, body: dict[str, Any], words: str
) -> None:
    with daemon.http() as http:
        reply = http.post(path, json={"model": "smollm2", **body})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert isinstance(error, str) and words in error, error


def test_ollama_client_raises_the_message_and_unknown_routes_are_ollama_shaped(
    daemon: LiveDaemon,
) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        _ollama(daemon).generate(model="smollm2", prompt="x", suffix="y")
    assert refused.value.status_code == 400 and "FIM tokens" in refused.value.error
    with daemon.http() as http:
        pull = http.post("/api/pull", json={"model": "llama3"})
        empty = http.post("/api/chat", json={"model": "m", "messages": []}).json()
    assert pull.status_code == 404 and isinstance(pull.json()["error"], str)
    assert empty["done_reason"] == "load" and empty["message"]["content"] == ""


def test_a_client_that_disconnects_stops_the_generation(daemon: LiveDaemon) -> None:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "options": {"num_predict": 1000, "temperature": 1.0, "seed": 3},
    }
    with daemon.http() as http:
        with http.stream("POST", "/api/chat", json=body) as reply:
            first = next(reply.iter_lines())
            assert json.loads(first)["done"] is False
        deadline = time.monotonic() + 30
        while http.get("/v1/status").json()["queue"]["running"] and time.monotonic() < deadline:
            time.sleep(0.2)
    latest = "SELECT finish_reason, completion_tokens FROM npllm.interactions ORDER BY id DESC"
    reason, tokens = psql(daemon, f"{latest} LIMIT 1").split("|")
    assert reason == "cancelled" and int(tokens) < 1000


def test_a_raw_prompt_is_completed_as_it_is_and_not_recorded(daemon: LiveDaemon) -> None:
    """What editors' autocomplete sends to Ollama: no chat template, the same continuation
    as /v1/completions gives, streamed or whole."""
    client = _ollama(daemon)
    prompt = "def add(a, b):\n    return"
    with daemon.http() as http:
        before = http.get("/v1/status").json()["counts"]["interactions"]
        openai_style = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 8})
    whole = client.generate(model="smollm2", prompt=prompt, raw=True, options={"num_predict": 8})
    assert whole.response == openai_style.json()["choices"][0]["text"]
    assert whole.done and whole.eval_count == openai_style.json()["usage"]["completion_tokens"]
    pieces = list(
        client.generate(
            model="smollm2", prompt=prompt, raw=True, stream=True, options={"num_predict": 8}
        )
    )
    assert "".join(p.response for p in pieces) == whole.response and pieces[-1].done
    with daemon.http() as http:
        assert http.get("/v1/status").json()["counts"]["interactions"] == before
