"""The ceiling of bench/engines.py: the same GGUF, threads and prompt token ids through
xllamacpp alone, in a clean process that imports nothing else (no torch, no npllm).

    python bench/bare_engine.py < job.json      # prints the rows as JSON

job.json: {"model": path, "threads": n, "tokens": 64, "prompts": [[ids...], ...]}. One
warm-up answer, then each prompt streamed (time to first token, decode rate, rate as a
client sees it) and answered again without streaming (the rate of the whole answer).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any


def main() -> None:
    job = json.load(sys.stdin)
    assert "torch" not in sys.modules
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = job["model"]
    params.n_ctx = 8192
    params.n_parallel = 1
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = job["threads"]
    params.verbosity = -1
    socket = os.path.join(tempfile.mkdtemp(prefix="npllm-bare-"), "bare.sock")
    params.hostnames = [socket]
    server = xlc.Server(params)
    tokens = job["tokens"]

    def body(ids: list[int], stream: bool, n: int) -> dict[str, Any]:
        return {"prompt": ids, "max_tokens": n, "temperature": 0, "top_k": 0, "min_p": 0.0,
                "stream": stream, "cache_prompt": True}  # fmt: skip

    def streamed(ids: list[int], n: int) -> dict[str, Any]:
        times: list[float] = []
        started = time.perf_counter()

        def cb(chunk: dict[str, Any]) -> bool:
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                times.append(time.perf_counter())
            return False

        server.handle_completions(body(ids, True, n), cb)
        return {
            "ttft_ms": round((times[0] - started) * 1000, 1),
            "decode_tokens_per_s": round((len(times) - 1) / (times[-1] - times[0]), 2),
            "client_tokens_per_s": round(len(times) / (times[-1] - started), 2),
            "tokens": len(times),
        }

    def whole(ids: list[int], n: int) -> float:
        started = time.perf_counter()
        out = server.handle_completions(body(ids, False, n))
        seconds = time.perf_counter() - started
        return round(int(out["usage"]["completion_tokens"]) / seconds, 2)

    streamed(job["prompts"][0], 8)  # warm-up
    rows = [streamed(ids, tokens) for ids in job["prompts"]]
    unstreamed = [whole(ids, tokens) for ids in job["prompts"]]
    print(json.dumps({
        "ttft_ms": statistics.median(r["ttft_ms"] for r in rows),
        "decode_tokens_per_s": round(statistics.mean(r["decode_tokens_per_s"] for r in rows), 2),
        "client_tokens_per_s": round(statistics.mean(r["client_tokens_per_s"] for r in rows), 2),
        "client_tokens_per_s_unstreamed": round(statistics.mean(unstreamed), 2),
        "rows": rows,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
