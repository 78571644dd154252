"""What an editor sees: autocomplete and chat over the authenticated TCP listener, against
the Unix socket, through a real daemon.

Rows, each measured side by side in one run (ratios, as these machines are noisy):

- the guard's cost: GET /v1/status over the Unix socket vs over TCP with the key;
- autocomplete: POST /v1/completions (OpenAI's, `max_tokens` 16, not streamed) and
  Ollama's raw /api/generate over TCP, and the same completion over the socket;
- chat: a streamed POST /v1/chat/completions (64 tokens) over TCP vs the socket: time to
  first token and total.

    .venv/bin/python bench/editors.py [--rounds 20]

prints a table and writes bench/results/editors.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fuzz import free_port  # noqa: E402
from bench.live import REPO, live_daemon  # noqa: E402
from services.auth import KEY_FILE, read_key  # noqa: E402

# Code prefixes an editor would send (distinct, so no answer comes from a cache).
PREFIXES = [
    "def read_lines(path):\n    with open(path) as f:\n        return",
    "import json\n\ndef load(path):\n    ",
    "for i in range(10):\n    if i % 2 == 0:\n        ",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return",
    "SELECT name, count(*) FROM users\nGROUP BY",
]
QUESTIONS = [
    "How do I reverse a list in Python?",
    "What does git rebase do?",
    "Explain a Python decorator briefly.",
    "How do I read a file line by line in Go?",
]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": _ms(statistics.median(ordered)),
        "p95_ms": _ms(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]),
        "n": len(ordered),
    }


def timed(call: Any, *args: Any, **kwargs: Any) -> float:
    started = time.perf_counter()
    call(*args, **kwargs).raise_for_status()
    return time.perf_counter() - started


def streamed_chat(http: Any, question: str, tokens: int) -> tuple[float, float]:
    """(time to first text, total) of one streamed chat answer."""
    body = {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": tokens,
        "stream": True,
        "npllm": {"memory": False},
    }
    started = time.perf_counter()
    first = None
    with http.stream("POST", "/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if first is None and '"content": "' in line and '"content": ""' not in line:
                first = time.perf_counter() - started
    return (first or 0.0), time.perf_counter() - started


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--model-cache", type=Path, default=REPO / ".venv" / "npllm-model-cache")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    port = free_port()
    rows: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        rows.setdefault(name, []).append(seconds)

    with live_daemon(args.model_cache, 240.0, NPLLM_SERVER__TCP_PORT=str(port)) as live:
        key = read_key(Path(live.env["NPLLM_DATA_DIR"]) / KEY_FILE)
        tcp = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=300,
        )
        unix = live.http
        for transport in (unix, tcp):  # warm both paths (first answers load caches)
            transport.post("/v1/completions", json={"prompt": "x = 1\n", "max_tokens": 4})
        for r in range(args.rounds):
            # Alternate the order each round so neither side always goes first.
            for name, client in (("unix", unix), ("tcp+key", tcp))[:: 1 if r % 2 else -1]:
                add(f"status {name}", timed(client.get, "/v1/status"))
            prefix = PREFIXES[r % len(PREFIXES)] + f"  # {r}\n"
            body = {"prompt": prefix, "max_tokens": 16}
            for name, client in (("unix", unix), ("tcp+key", tcp))[:: 1 if r % 2 else -1]:
                add(f"completion 16 tok {name}", timed(client.post, "/v1/completions", json=body))
            ollama = {"model": "m", "prompt": prefix, "raw": True, "stream": False}
            ollama["options"] = {"num_predict": 16}
            add("ollama raw 16 tok tcp+key", timed(tcp.post, "/api/generate", json=ollama))
            question = QUESTIONS[r % len(QUESTIONS)] + f" ({r})"
            for name, client in (("unix", unix), ("tcp+key", tcp))[:: 1 if r % 2 else -1]:
                first, total = streamed_chat(client, question, 64)
                add(f"chat ttft {name}", first)
                add(f"chat 64 tok {name}", total)
        tcp.close()
    table = {name: _summary(values) for name, values in rows.items()}
    ratios = {
        what: round(table[f"{what} tcp+key"]["p50_ms"] / table[f"{what} unix"]["p50_ms"], 3)
        for what in ("status", "completion 16 tok", "chat ttft", "chat 64 tok")
    }
    print(f"{'row':<30}{'p50 ms':>10}{'p95 ms':>10}{'n':>5}")
    for name, row in table.items():
        print(f"{name:<30}{row['p50_ms']:>10}{row['p95_ms']:>10}{row['n']:>5}")
    print("tcp+key / unix (p50):", ratios)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "editors.json"
    path.write_text(json.dumps({"rounds": args.rounds, "rows": table, "ratios": ratios}, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
