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
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from npllm.config import load_settings  # noqa: E402
from npllm.db import Database  # noqa: E402
from npllm.memory import _RELEVANT  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from live import live_daemon, stream  # noqa: E402

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


def bench_during_sleep(model_cache: Path, requests: int = 6) -> dict[str, Any]:
    """Answers while the sleep worker trains, beside the same answers before it started:
    three questions answered and corrected, `POST /v1/sleep {"now": true}`, then requests
    while its phase reads "training" (each pauses the worker and waits for it to say so)."""
    with live_daemon(model_cache) as live:
        http = live.http
        taught = [
            ("What port does the Vireo billing service use?", "Vireo billing uses port 7311."),
            ("Who owns the Larkspur ingest job?", "Team Ochre owns the Larkspur ingest job."),
            ("Which database backs the Quill wiki?", "The Quill wiki runs on MariaDB 10.11."),
        ]  # fmt: skip
        for question, answer in taught:
            reply = http.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": question}], "max_tokens": 24},
            ).json()
            http.post("/v1/feedback", json={"interaction_id": reply["npllm"]["interaction_id"],
                                            "event": "edited", "text": answer})  # fmt: skip

        # Distinct seeds (and a temperature above 0): no answer comes from the answer cache.
        def timed(question: str, seed: int) -> dict[str, Any]:
            return stream(http, question, 64, None, {"temperature": 0.0001, "seed": seed})

        timed("Say hello.", 0)  # warm-up
        awake = [timed(QUESTIONS[i], 100 + i) for i in range(requests)]
        http.post("/v1/sleep", json={"now": True, "seed": 1}).raise_for_status()
        deadline = time.monotonic() + 900
        asleep: list[dict[str, Any]] = []
        phases = []
        while len(asleep) < requests and time.monotonic() < deadline:
            status = http.get("/v1/sleep").json()
            phase = (status.get("cycles") or [{}])[0].get("phase") or ""
            if status["state"] == "awake" and status.get("latest_cycle"):
                break  # the cycle ended before enough requests ran during it
            if "training" not in phase:
                time.sleep(0.5)
                continue
            phases.append(phase)
            asleep.append(timed(QUESTIONS[len(asleep)], 200 + len(asleep)))
            time.sleep(1.0)  # let training resume between requests

    def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
        return {
            "requests": len(rows),
            "ttft_p50_ms": round(percentile([r["ttft_ms"] for r in rows], 50), 1) if rows else 0,
            "ttft_max_ms": round(max((r["ttft_ms"] for r in rows), default=0), 1),
            "tokens_per_s": round(statistics.mean(r["client_tokens_per_s"] for r in rows), 1)
            if rows else 0.0,
        }  # fmt: skip

    return {"awake": summary(awake), "while training": summary(asleep), "phases": phases}


def _index(conn: Any, m: int, ef_construction: int) -> float:
    """Drop and build the memories' HNSW index with these parameters; seconds."""
    conn.execute("DROP INDEX IF EXISTS npllm.memories_embedding_hnsw")
    started = time.perf_counter()
    conn.execute(
        f"CREATE INDEX memories_embedding_hnsw ON npllm.memories USING hnsw "
        f"(embedding vector_cosine_ops) "
        f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})"
    )
    return round(time.perf_counter() - started, 1)


class _Inserter(threading.Thread):
    """Inserts memories one at a time, as the daemon does (each updates the HNSW index),
    until stopped: kind 'exchange' with no liked answer, so the memory search filters them
    out and the exact answer the recall is checked against does not change."""

    def __init__(self, db: Database, vectors: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.db, self.vectors = db, vectors
        self.stop = threading.Event()
        self.done = 0
        self.seconds = 0.0

    def run(self) -> None:
        started = time.perf_counter()
        with self.db.pool.connection() as conn:
            for v in self.vectors:
                if self.stop.is_set():
                    break
                conn.execute(
                    "INSERT INTO npllm.memories (text, kind, source, embedding) "
                    "VALUES ('concurrent insert', 'exchange', 'bench', %s)",
                    [v],
                )
                conn.commit()
                self.done += 1
        self.seconds = time.perf_counter() - started


def bench_retrieval(
    sizes: list[int],
    sweep: list[tuple[int, int]],
    ef_values: list[int],
    cache: Path,
    queries: int = 200,
) -> dict[str, Any]:
    """Memory search over real MiniLM embeddings of real text (bench/corpus.py) at each size:
    the daemon's own query (npllm.memory._RELEVANT, whose exchange filter runs inside the
    index scan), p50/p95 and recall@10 against the exact top 10 (numpy), with single-row
    inserts running beside it; bulk load rate and index build time. At the first size every
    (m, ef_construction) in `sweep` is built; the larger sizes use the migration's own."""
    from corpus import corpus

    extra = queries + 5_000  # held-out queries, then the concurrent inserts' pool
    texts, vectors = corpus(max(sizes) + extra, cache)
    query_vectors = vectors[-extra : -extra + queries]
    insert_pool = vectors[-extra + queries :]
    exchange = np.zeros(len(vectors), dtype=bool)
    exchange[::10] = True  # every tenth memory: an exchange the search must skip
    out: dict[str, Any] = {"corpus_texts": len(texts), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        # NPLLM_* from the environment apply (e.g. NPLLM_DATABASE__MAINTENANCE_WORK_MEM).
        own = {k: v for k, v in os.environ.items() if k.startswith("NPLLM_DATABASE__")}
        settings = load_settings(environ={**own, "NPLLM_DATA_DIR": tmp})
        db = Database(settings)
        db.open()
        try:
            with db.pool.connection() as conn:
                m, efc = _migration_index(conn)
                out["server_settings"] = {
                    k: conn.execute(f"SHOW {k}").fetchone()[0]
                    for k in ("shared_buffers", "effective_cache_size", "maintenance_work_mem")
                }
            out["shipped_index"] = {"m": m, "ef_construction": efc}
            loaded = 0
            for n, size in enumerate(sorted(sizes)):
                with db.pool.connection() as conn:
                    conn.execute("DROP INDEX IF EXISTS npllm.memories_embedding_hnsw")
                    started = time.perf_counter()
                    with conn.cursor().copy(
                        "COPY npllm.memories (text, kind, source, embedding) FROM STDIN "
                        "WITH (FORMAT BINARY)"
                    ) as copy:
                        copy.set_types(["text", "text", "text", "vector"])
                        for i in range(loaded, size):
                            kind = "exchange" if exchange[i] else "document"
                            text = texts[i].replace("\x00", "")  # PostgreSQL text holds no NUL
                            copy.write_row([text, kind, f"bench:{i}", vectors[i]])
                    conn.commit()
                    load_rate = (size - loaded) / (time.perf_counter() - started)
                    conn.execute("ANALYZE npllm.memories")
                    conn.commit()
                    ids = dict(conn.execute(
                        "SELECT id, substr(source, 7)::int FROM npllm.memories "
                        "WHERE source LIKE 'bench:%%'"
                    ).fetchall())  # fmt: skip
                loaded = size
                keep = np.flatnonzero(~exchange[:size])
                truth = [
                    set(keep[np.argsort(-(vectors[keep] @ q))[:10]].tolist()) for q in query_vectors
                ]
                for m_i, efc_i in sweep if n == 0 else [(m, efc)]:
                    with db.pool.connection() as conn:
                        build_s = _index(conn, m_i, efc_i)
                        conn.commit()
                    for ef in ef_values:
                        row = _search(db, ids, truth, query_vectors, insert_pool, ef, settings)
                        row.update(memories=size, m=m_i, ef_construction=efc_i,
                                   index_build_s=build_s,
                                   load_rows_per_s=round(load_rate))  # fmt: skip
                        out["rows"].append(row)
                        print(json.dumps(row), file=sys.stderr)
                # back to the migration's index for the next size
                with db.pool.connection() as conn:
                    conn.execute("DELETE FROM npllm.memories WHERE source = 'bench'")
                    conn.commit()
        finally:
            db.close(stop_server=True)
    return out


def _migration_index(conn: Any) -> tuple[int, int]:
    """The m and ef_construction the migrations give the memories' index (pgvector's
    defaults 16 and 64 when unset)."""
    row = conn.execute(
        "SELECT reloptions FROM pg_class WHERE relname = 'memories_embedding_hnsw'"
    ).fetchone()
    options = dict(o.split("=") for o in (row[0] or [])) if row else {}
    return int(options.get("m", 16)), int(options.get("ef_construction", 64))


def _search(
    db: Database,
    ids: dict[int, int],
    truth: list[set[int]],
    query_vectors: np.ndarray,
    insert_pool: np.ndarray,
    ef: int,
    settings: Any,
) -> dict[str, Any]:
    inserter = _Inserter(db, insert_pool)
    inserter.start()
    latencies, recalls = [], []
    memory = settings.memory
    try:
        with db.pool.connection() as conn:
            conn.execute(f"SET hnsw.ef_search = {int(ef)}")
            for q, exact in zip(query_vectors, truth, strict=True):
                params = {"embedding": q, "k": 10, "min_score": -1.0,
                          "exchange": memory.exchange_similarity}  # fmt: skip
                t = time.perf_counter()
                found = conn.execute(_RELEVANT, params).fetchall()
                latencies.append((time.perf_counter() - t) * 1000)
                got = {ids.get(r[0], -1) for r in found}
                recalls.append(len(exact & got) / 10)
            conn.execute(f"SET hnsw.ef_search = {int(memory.hnsw_ef_search)}")
    finally:
        inserter.stop.set()
        inserter.join()
    return {
        "ef_search": ef,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "recall_at_10": round(statistics.mean(recalls), 4),
        "concurrent_inserts_per_s": round(inserter.done / max(inserter.seconds, 1e-9), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument(
        "--sweep", nargs="+", default=["16:64", "16:128", "24:128"],
        help="m:ef_construction pairs built at the first size",
    )  # fmt: skip
    parser.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200, 400])
    parser.add_argument("--no-latency", action="store_true", help="no end-to-end latency part")
    parser.add_argument("--no-retrieval", action="store_true", help="no retrieval part")
    parser.add_argument(
        "--sleep", action="store_true", help="also answers while the sleep worker trains"
    )
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "npllm-bench")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--model-cache", type=Path, default=REPO / ".venv" / "npllm-model-cache")
    args = parser.parse_args()
    sweep = [(int(a), int(b)) for a, b in (p.split(":") for p in args.sweep)]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {platform.processor() or ''} "
        f"{os.cpu_count()} cores".strip(),
    }
    if not args.no_latency:
        latency = report["latency"] = bench_latency(args.requests, args.model_cache)
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
            f"max {latency['memory_path_share_max']:.2%}"
        )
    if args.sleep:
        during = report["during_sleep"] = bench_during_sleep(args.model_cache)
        print(f"\nanswers while the sleep worker trains: {during['while training']}")
        print(f"the same kind of answers before it started: {during['awake']}")
    if args.no_retrieval:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "serve.json").write_text(json.dumps(report, indent=2))
        return
    retrieval = report["retrieval"] = bench_retrieval(args.sizes, sweep, args.ef, args.cache)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "serve.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nretrieval: real MiniLM embeddings ({retrieval['corpus_texts']} texts available), "
          f"k=10, the daemon's filtered query, single-row inserts running beside it")  # fmt: skip
    print(f"server: {retrieval['server_settings']}; shipped index {retrieval['shipped_index']}")
    head = ("memories", "m", "efc", "ef", "p50 ms", "p95 ms", "recall@10", "ins/s", "build s",
            "load/s")  # fmt: skip
    print("  " + " ".join(f"{h:>9}" for h in head))
    for r in retrieval["rows"]:
        print(f"  {r['memories']:>9} {r['m']:>9} {r['ef_construction']:>9} {r['ef_search']:>9} "
              f"{r['p50_ms']:>9.2f} {r['p95_ms']:>9.2f} {r['recall_at_10']:>9.3f} "
              f"{r['concurrent_inserts_per_s']:>9.0f} {r['index_build_s']:>9.1f} "
              f"{r['load_rows_per_s']:>9}")  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
