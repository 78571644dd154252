"""Benchmark the awake path: end-to-end latency over the socket, and HNSW retrieval at scale.

    .venv/bin/python bench/serve.py [--requests 12] [--sizes 10000 100000] [--out bench/results]

Part 1 starts a real `npllm serve` (temp data dir, default models), sends distinct
questions asking for 64-token answers, and reads the `npllm` timings of each answer.
Part 2 fills a memories table (in its own embedded PostgreSQL) with N vectors and
times the daemon's own top-k query (HNSW, cosine), comparing its top 10 with an
exact scan. The vectors are synthetic: unit vectors drawn around 200 random topic
centres, so neighbourhoods look like clustered sentence embeddings (embedding 100k
real sentences with MiniLM on 2 cores would take most of the run).

Prints a table and writes JSON; it is never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from npllm.config import load_settings  # noqa: E402
from npllm.db import Database  # noqa: E402
from npllm.memory import _SEARCH  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from live import live_daemon  # noqa: E402

QUESTIONS = [
    "Explain how a hash map handles collisions.",
    "Write a Python function that reverses a linked list.",
    "What is the difference between a process and a thread?",
    "Describe how garbage collection works in Python.",
    "Explain the CAP theorem with an example.",
    "How does a B-tree index speed up database queries?",
    "Write a SQL query that finds duplicate emails in a users table.",
    "Explain what a race condition is and how to avoid it.",
    "Describe the steps of a TLS handshake.",
    "What does the Python GIL do?",
    "Explain dependency injection to a beginner.",
    "How does git rebase differ from git merge?",
    "What is tail-call optimisation?",
    "Explain big-O notation with three examples.",
    "How do you profile a slow Python program?",
    "What are the SOLID principles?",
]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_latency(requests: int, model_cache: Path) -> dict[str, Any]:
    with live_daemon(model_cache) as live:
        http = live.http
        # A handful of memories so retrieval has something to find.
        for q in QUESTIONS[:8]:
            http.post("/v1/memories", json={"text": f"Note about: {q}"})
        rows = []
        for i in range(requests + 1):
            body = {
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                "max_tokens": 64,
                "seed": i,  # distinct requests: no short-term cache hits
                "temperature": 0.0001 if i >= len(QUESTIONS) else 0.0,
            }
            started = time.perf_counter()
            reply = http.post("/v1/chat/completions", json=body).json()
            wall = (time.perf_counter() - started) * 1000
            if i == 0:
                continue  # warm-up
            t = reply["npllm"]["timings"]
            rows.append(
                {
                    "wall_ms": wall,
                    "tokens": reply["usage"]["completion_tokens"],
                    "memory_path_ms": t["embed_ms"] + t["retrieve_ms"] + t["prompt_ms"],
                    **t,
                }
            )
    walls = [r["wall_ms"] for r in rows]
    shares = [r["memory_path_ms"] / r["total_ms"] for r in rows]
    return {
        "requests": len(rows),
        "mean_tokens": statistics.mean(r["tokens"] for r in rows),
        "e2e_p50_ms": percentile(walls, 50),
        "e2e_p95_ms": percentile(walls, 95),
        "memory_path_p50_ms": percentile([r["memory_path_ms"] for r in rows], 50),
        "memory_path_share_mean": statistics.mean(shares),
        "memory_path_share_max": max(shares),
        "tokens_per_s_mean": statistics.mean(r["tokens_per_s"] for r in rows),
        "rows": rows,
    }


def synthetic_vectors(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    picks = centres[rng.integers(0, len(centres), n)]
    vectors = picks + rng.normal(scale=0.6 / np.sqrt(centres.shape[1]), size=picks.shape)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def bench_retrieval(sizes: list[int], queries: int = 200) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, 384))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(environ={"NPLLM_DATA_DIR": tmp})
        db = Database(settings)
        db.open()
        try:
            loaded = 0
            for size in sorted(sizes):
                with db.pool.connection() as conn:
                    vectors = synthetic_vectors(size - loaded, rng, centres)
                    started = time.perf_counter()
                    with conn.cursor().copy(
                        "COPY npllm.memories (text, embedding) FROM STDIN WITH (FORMAT BINARY)"
                    ) as copy:
                        copy.set_types(["text", "vector"])
                        for i, v in enumerate(vectors):
                            copy.write_row([f"synthetic memory {loaded + i}", v])
                    conn.execute("ANALYZE npllm.memories")
                    load_s = time.perf_counter() - started
                loaded = size
                qs = synthetic_vectors(queries, rng, centres)
                latencies, recalls = [], []
                with db.pool.connection() as conn:
                    for q in qs:
                        t = time.perf_counter()
                        hnsw = conn.execute(_SEARCH, {"embedding": q, "k": 10, "min_score": -1})
                        got = [r[0] for r in hnsw.fetchall()]
                        latencies.append((time.perf_counter() - t) * 1000)
                        with conn.transaction():
                            conn.execute("SET LOCAL enable_indexscan = off")
                            exact = conn.execute(
                                _SEARCH, {"embedding": q, "k": 10, "min_score": -1}
                            ).fetchall()
                        truth = {r[0] for r in exact}
                        recalls.append(len(truth & set(got)) / 10)
                results.append(
                    {
                        "memories": size,
                        "load_and_index_s": round(load_s, 1),
                        "p50_ms": percentile(latencies, 50),
                        "p95_ms": percentile(latencies, 95),
                        "recall_at_10": statistics.mean(recalls),
                    }
                )
        finally:
            db.close(stop_server=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--model-cache", type=Path, default=REPO / ".venv" / "npllm-model-cache")
    args = parser.parse_args()
    latency = bench_latency(args.requests, args.model_cache)
    retrieval = bench_retrieval(args.sizes)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {platform.processor() or ''} "
        f"{__import__('os').cpu_count()} cores".strip(),
        "latency": latency,
        "retrieval": retrieval,
    }
    print(
        f"\nend-to-end, 64-token answers ({latency['requests']} requests, "
        f"mean {latency['mean_tokens']:.1f} tokens)"
    )
    print(
        f"  p50 {latency['e2e_p50_ms']:.0f} ms   p95 {latency['e2e_p95_ms']:.0f} ms   "
        f"{latency['tokens_per_s_mean']:.1f} tokens/s"
    )
    print(
        f"  memory path (embed+retrieve+prompt): p50 {latency['memory_path_p50_ms']:.1f} ms, "
        f"share of total mean {latency['memory_path_share_mean']:.2%} "
        f"max {latency['memory_path_share_max']:.2%}   (target <= 5%)"
    )
    print("\nretrieval (HNSW cosine, k=10)       target: p95 <= 10 ms at 100k, recall >= 0.95")
    print(f"  {'memories':>9} {'p50 ms':>8} {'p95 ms':>8} {'recall@10':>10} {'load s':>8}")
    for r in retrieval:
        print(
            f"  {r['memories']:>9} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
            f"{r['recall_at_10']:>10.3f} {r['load_and_index_s']:>8.1f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "serve.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
