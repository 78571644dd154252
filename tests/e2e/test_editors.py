"""What editors send: text completions (autocomplete) with the stock `openai` client, and
what npllm refuses by name instead of ignoring (tools, tool results, images, JSON mode)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from ..conftest import LiveDaemon, psql


def _client(daemon: LiveDaemon) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://npllm/v1", api_key="unused", http_client=daemon.http(), max_retries=0
    )


def test_text_completion_whole_and_streamed(daemon: LiveDaemon) -> None:
    client = _client(daemon)
    prompt = "def add(a, b):\n    return"
    done = client.completions.create(model="npllm", prompt=prompt, max_tokens=8)
    assert done.object == "text_completion"
    assert done.choices[0].text and done.choices[0].finish_reason in ("stop", "length")
    assert done.usage is not None and 0 < done.usage.completion_tokens <= 8
    meta = done.model_extra["npllm"]
    assert meta["interaction_id"] is None and meta["fim"] is False
    assert isinstance(meta["adapters"], list)
    pieces = list(
        client.completions.create(model="npllm", prompt=prompt, max_tokens=8, stream=True)
    )
    text = "".join(p.choices[0].text for p in pieces)
    assert text == done.choices[0].text  # greedy: the same continuation
    assert pieces[-1].choices[0].finish_reason in ("stop", "length")


def test_completions_are_not_recorded(daemon: LiveDaemon) -> None:
    with daemon.http() as http:
        before = http.get("/v1/status").json()["counts"]["interactions"]
        reply = http.post("/v1/completions", json={"prompt": "import os\n", "max_tokens": 4})
        assert reply.status_code == 200, reply.text
        assert http.get("/v1/status").json()["counts"]["interactions"] == before


def test_fill_in_the_middle_needs_fim_tokens(daemon: LiveDaemon) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        _client(daemon).completions.create(
            model="npllm", prompt="x = ", suffix="\nprint(x)", max_tokens=4
        )
    assert "needs a base model with FIM tokens" in str(refused.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": ["a", "b"]}, "prompt takes one string"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": "x", "echo": True}, "echo is not supported"),
        ({"prompt": "x", "logprobs": 2}, "logprobs are not supported"),
        ({"prompt": "x", "n": 2}, "n and best_of must be 1"),
        ({"prompt": "", "max_tokens": 2}, "prompt is empty"),
        ({"prompt": "x", "max_tokens": 100000}, "above this server's cap"),
    ],
)
def test_bad_text_completions(daemon: LiveDaemon, body: dict[str, Any], message: str) -> None:
    with daemon.http() as http:
        reply = http.post("/v1/completions", json=body)
    assert reply.status_code == 400
    assert message in reply.json()["error"]["message"]


def _chat(http: httpx.Client, **extra: Any) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4, **extra}
    return http.post("/v1/chat/completions", json=body)


TOOL = {"type": "function", "function": {"name": "run", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tools": [TOOL]}, "tools are not supported"),
        (
            {
                "messages": [
                    {"role": "user", "content": "Run it."},
                    {"role": "assistant", "content": "ok"},
                    {"role": "tool", "content": "42", "tool_call_id": "c1"},
                    {"role": "user", "content": "And?"},
                ]
            },
            "messages.2: role 'tool'",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,"}},
                        ],
                    }
                ]
            },
            "messages.0.content.1: 'image_url' parts are not supported",
        ),
        ({"response_format": {"type": "json_object"}}, "response_format 'json_object'"),
        ({"n": 3}, "n must be 1"),
    ],
)
def test_what_npllm_cannot_do_is_refused_by_name(
    daemon: LiveDaemon, extra: dict[str, Any], message: str
) -> None:
    with daemon.http() as http:
        reply = _chat(http, **extra)
    assert reply.status_code == 400
    assert message in reply.json()["error"]["message"]


def test_tools_with_tool_choice_none_and_the_developer_role_are_fine(daemon: LiveDaemon) -> None:
    messages = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Say hi."}]},
    ]
    with daemon.http() as http:
        reply = _chat(http, messages=messages, tools=[TOOL], tool_choice="none")
    assert reply.status_code == 200, reply.text


def test_a_stopped_answer_ends_with_its_id_and_is_not_abandoned(daemon: LiveDaemon) -> None:
    """What Ctrl-C in `npllm chat` does: ask the daemon to stop, read the stream to its end."""
    import json

    body = {
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
        "max_tokens": 400,
        "stream": True,
    }
    final: dict[str, Any] = {}
    with daemon.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as reply:
        stopped = False
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line.removeprefix("data: "))
            if not stopped and event["choices"][0]["delta"].get("content"):
                with daemon.http() as other:
                    cancel = other.post(f"/v1/chat/completions/{event['id']}/cancel")
                assert cancel.json() == {"id": event["id"], "cancelled": True}
                stopped = True
            final = event
    assert final["choices"][0]["finish_reason"] == "cancelled"
    assert final["usage"]["completion_tokens"] < 400
    iid = final["npllm"]["interaction_id"]
    events = psql(
        daemon, f"SELECT count(*) FROM npllm.feedback_events WHERE interaction_id = {iid}"
    )
    assert events == "0"
    with daemon.http() as http:
        gone = http.post(f"/v1/chat/completions/{final['id']}/cancel")
    assert gone.status_code == 404
    assert "no answer in progress" in gone.json()["error"]["message"]
