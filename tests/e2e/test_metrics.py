"""GET /metrics against the session daemon: Prometheus's format, parsed by prometheus-client's
own parser, and counters that move with real requests."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..conftest import LiveDaemon


def _scrape(daemon: LiveDaemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with daemon.http() as http:
        reply = http.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_move_with_requests(daemon: LiveDaemon) -> None:
    before = _scrape(daemon)
    chat = {"route": "/v1/chat/completions", "method": "POST", "status": "2xx"}
    body = {"messages": [{"role": "user", "content": "Name a sorting algorithm."}]}
    with daemon.http() as http:
        with http.stream(
            "POST", "/v1/chat/completions", json={**body, "max_tokens": 8, "stream": True}
        ) as reply:
            last = [line for line in reply.iter_lines() if line.startswith("data: {")][-1]
        iid = json.loads(last.removeprefix("data: "))["npllm"]["interaction_id"]
        rated = http.post("/v1/feedback", json={"interaction_id": iid, "rating": 1.0})
        assert rated.status_code == 201, rated.text
        http.get("/v1/adapters/no-such-adapter")  # a 4xx, by its route template
    after = _scrape(daemon)
    count = "npllm_request_duration_seconds_count"
    assert _value(after, count, **chat) == _value(before, count, **chat) + 1
    four = {"route": "/v1/adapters/{name}", "method": "GET", "status": "4xx"}
    assert _value(after, count, **four) == _value(before, count, **four) + 1
    ttft = "npllm_time_to_first_token_seconds_count"
    assert _value(after, ttft, kind="chat") == _value(before, ttft, kind="chat") + 1
    tokens = "npllm_generated_tokens_total"
    assert 0 < _value(after, tokens, kind="chat") - _value(before, tokens, kind="chat") <= 8
    ratings = {"origin": "explicit", "kind": "rating"}
    assert _value(after, "npllm_feedback_events_total", **ratings) == (
        _value(before, "npllm_feedback_events_total", **ratings) + 1
    )
    assert _value(after, "npllm_rated_answers", adapter="none", version="") >= 1
    assert _value(after, "npllm_database_up") == 1
    assert _value(after, "npllm_database_size_bytes") > 1_000_000
    assert ("npllm_queue_waiting", ()) in after and ("npllm_adapters_served", ()) in after
