"""Benchmark the serving engines side by side, in one run, on the same GGUF and prompts.

    .venv/bin/python bench/engines.py [--prompts 6] [--tokens 64] [--out bench/results]

Rows (each a 64-token greedy answer per prompt, streamed over the daemon's Unix socket,
after one warm-up answer):

- (a) npllm, models.engine = llama.cpp: 0 adapters, 1 pinned, a 3-adapter blend, and 20
  adapters loaded with 1 routed;
- (b) a bare xllamacpp script on the same file and threads (the ceiling: no npllm at all);
- (c) npllm, models.engine = transformers (the former engine), 0 adapters and 1 pinned.

Adapters are LoRAs of the shared shape with random weights (cost does not depend on what
they learned), each with peft's reference answer so that publishing runs the real parity
check. Also measured: hot-swap time and failed requests during a publish under a request
loop, the daemon's RSS (idle and peak during the swap), and the memory path
(embed + retrieve + assemble) as a share of the answer. Prints a table, writes JSON; never
part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from live import live_daemon  # noqa: E402

PROMPTS = [
    "Explain how a hash map handles collisions.",
    "Write a Python function that reverses a linked list.",
    "What is the difference between a process and a thread?",
    "Describe how garbage collection works in Python.",
    "How does a B-tree index speed up database queries?",
    "Write a SQL query that finds duplicate emails in a users table.",
    "Explain what a race condition is and how to avoid it.",
    "How does git rebase differ from git merge?",
]


def make_adapters(settings: Any, root: Path, n: int) -> list[Path]:
    """n random LoRAs of the shared shape, saved as peft writes them, with peft's
    reference answer to the parity probe."""
    import torch
    from peft import LoraConfig, get_peft_model

    from npllm.engines.gguf_export import REFERENCE_FILE, reference
    from npllm.llm import load_base_llm

    llm = load_base_llm(settings)
    t = settings.training
    paths = []
    for i in range(n):
        config = LoraConfig(
            r=t.lora_r, lora_alpha=t.lora_alpha, target_modules=list(t.lora_target_modules)
        )
        model = get_peft_model(llm.model, config)
        torch.manual_seed(i)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.002)
        model.eval()
        out = root / f"a{i}"
        model.save_pretrained(str(out), safe_serialization=True)
        (out / REFERENCE_FILE).write_text(json.dumps(reference(model, llm.tokenizer)))
        model.unload()
        paths.append(out)
    return paths


def stream(http: Any, prompt: str, tokens: int, adapters: list[str] | None) -> dict[str, Any]:
    """One streamed answer: time to first token, decode rate, the npllm timings."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0.0,
        "stream": True,
    }
    if adapters is not None:
        body["npllm"] = {"adapters": adapters}
    started = time.perf_counter()
    first = last = None
    pieces = 0
    meta: dict[str, Any] = {}
    with http.stream("POST", "/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("npllm"):
                meta = event["npllm"]
            delta = (event.get("choices") or [{}])[0].get("delta", {}).get("content")
            if delta:
                now = time.perf_counter()
                first = first or now
                last = now
                pieces += 1
    t = meta.get("timings", {})
    gen_s = t.get("generate_ms", 0) / 1000
    return {
        "ttft_ms": round(((first or started) - started) * 1000, 1),
        "tokens_per_s": t.get("tokens_per_s", 0.0),
        "decode_tokens_per_s": round((pieces - 1) / (last - first), 2)
        if first and last and last > first
        else 0.0,
        "memory_path_ms": t.get("embed_ms", 0) + t.get("retrieve_ms", 0) + t.get("prompt_ms", 0),
        "generate_s": gen_s,
        "draft_acceptance_rate": t.get("draft_acceptance_rate"),
        "total_ms": t.get("total_ms", 0),
    }


def run_rows(http: Any, prompts: list[str], tokens: int, adapters: list[str] | None) -> dict:
    stream(http, "Say hello.", 8, adapters)  # warm-up
    rows = [stream(http, p, tokens, adapters) for p in prompts]
    return {
        "ttft_ms": statistics.median(r["ttft_ms"] for r in rows),
        "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in rows),
        "decode_tokens_per_s": statistics.mean(r["decode_tokens_per_s"] for r in rows),
        "memory_path_share": statistics.mean(
            r["memory_path_ms"] / r["total_ms"] for r in rows if r["total_ms"]
        ),
        "rows": rows,
    }


def rss_mb(pid: int) -> float:
    import psutil

    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def publish(http: Any, name: str, path: Path) -> dict[str, Any]:
    reply = http.post(f"/v1/adapters/{name}/versions", json={"path": str(path)})
    reply.raise_for_status()
    return dict(reply.json())


def npllm_rows(
    cache: Path, engine: str, adapters: list[Path], prompts: list[str], tokens: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    env = {"NPLLM_MODELS__ENGINE": engine, "NPLLM_MEMORY__CACHE_SIZE": "0",
           "NPLLM_MODULATOR__MAX_ADAPTERS": "32", "NPLLM_CEREBELLUM__ROLE": "draft"}  # fmt: skip
    with live_daemon(cache, **env) as live:
        http = live.http
        out["rss_idle_mb"] = rss_mb(live.pid)
        out["0 adapters"] = run_rows(http, prompts, tokens, [])
        publish(http, "b0", adapters[0])
        out["1 adapter"] = run_rows(http, prompts, tokens, ["b0"])
        if engine == "transformers":
            return out
        for i in (1, 2):
            publish(http, f"b{i}", adapters[i])
        out["3-blend"] = run_rows(http, prompts, tokens, ["b0", "b1", "b2"])
        for i in range(3, 20):
            publish(http, f"b{i}", adapters[i])
        out["20 loaded, 1 routed"] = run_rows(http, prompts, tokens, ["b0"])
        out["swap"] = swap_under_load(live, adapters[20])
        # Last (there is no cerebellum rollback): the same-size cerebellum drafting.
        reply = http.post("/v1/cerebellum/versions", json={"path": str(adapters[0])})
        if reply.status_code == 201:
            out["cerebellum draft"] = run_rows(http, prompts, tokens, [])
            out["cerebellum draft"]["acceptance"] = [
                r.get("draft_acceptance_rate") for r in out["cerebellum draft"]["rows"]
            ]
        else:
            out["cerebellum draft"] = {"error": reply.text}
    return out


def swap_under_load(live: Any, path: Path) -> dict[str, Any]:
    """Publish a new version of b0 while another client asks in a loop; count failures."""
    import httpx

    stop = threading.Event()
    outcomes: list[int] = []
    peak = [rss_mb(live.pid)]

    def loop() -> None:
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(live.socket)),
            base_url="http://npllm",
            timeout=120,
        ) as client:
            while not stop.is_set():
                body = {"messages": [{"role": "user", "content": "Name a sorting algorithm."}],
                        "max_tokens": 16, "npllm": {"adapters": ["b0"]}}  # fmt: skip
                outcomes.append(client.post("/v1/chat/completions", json=body).status_code)

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(live.pid))
            time.sleep(0.05)

    threads = [threading.Thread(target=loop), threading.Thread(target=sample)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    started = time.perf_counter()
    answer = publish(live.http, "b0", path)
    swap_s = time.perf_counter() - started
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    back = live.http.post("/v1/adapters/b0/rollback")
    return {
        "publish_s": round(swap_s, 3),
        "answer": {k: v for k, v in answer.items() if k.endswith("_ms") or k == "version"},
        "requests": len(outcomes),
        "failed": sum(code != 200 for code in outcomes),
        "rollback_status": back.status_code,
        "rss_peak_mb": peak[0],
    }


def bare_rows(settings: Any, prompts: list[str], tokens: int) -> dict[str, Any]:
    """The same GGUF, threads and prompt tokens through xllamacpp directly."""
    import xllamacpp as xlc

    from npllm.engines.llamacpp import free_cores, load_tokenizer
    from npllm.weights import resolve

    source = resolve(settings.models.base, "models.base")
    tokenizer = load_tokenizer(source, settings.model_cache_path)
    params = xlc.CommonParams()
    params.model.path = str(source.path)
    params.n_ctx = 8192
    params.n_parallel = 1
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = free_cores()
    params.verbosity = -1
    socket = Path("/tmp/npllm-bench-bare.sock")
    socket.unlink(missing_ok=True)
    params.hostnames = [str(socket)]
    server = xlc.Server(params)
    system = settings.memory.system_prompt

    def one(prompt: str) -> dict[str, Any]:
        ids = tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
            add_generation_prompt=True, tokenize=True, return_dict=False,
        )  # fmt: skip
        times: list[float] = []
        started = time.perf_counter()

        def cb(chunk: dict[str, Any]) -> bool:
            if chunk["choices"][0].get("text"):
                times.append(time.perf_counter())
            return False

        server.handle_completions({"prompt": list(ids), "max_tokens": tokens, "temperature": 0,
                                   "stream": True}, cb)  # fmt: skip
        return {
            "ttft_ms": round((times[0] - started) * 1000, 1),
            "decode_tokens_per_s": round((len(times) - 1) / (times[-1] - times[0]), 2),
            "tokens_per_s": round(len(times) / (times[-1] - started), 2),
        }

    one("Say hello.")
    rows = [one(p) for p in prompts]
    return {
        "ttft_ms": statistics.median(r["ttft_ms"] for r in rows),
        "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in rows),
        "decode_tokens_per_s": statistics.mean(r["decode_tokens_per_s"] for r in rows),
        "rows": rows,
    }


def main() -> None:
    import tempfile

    from npllm.config import load_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    cache = REPO / ".venv" / "npllm-model-cache"
    settings = load_settings(environ={"NPLLM_MODELS__CACHE_DIR": str(cache)})
    prompts = PROMPTS[: args.prompts]
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(settings, Path(tmp), 21)
        report: dict[str, Any] = {
            "machine": f"{platform.machine()}, {platform.processor() or '?'}, "
            f"{len(__import__('os').sched_getaffinity(0))} cores",
            "date": time.strftime("%Y-%m-%d"),
            "tokens": args.tokens,
            "prompts": len(prompts),
        }
        report["bare xllamacpp"] = bare_rows(settings, prompts, args.tokens)
        report["npllm llama.cpp"] = npllm_rows(cache, "llama.cpp", adapters, prompts, args.tokens)
        report["npllm transformers"] = npllm_rows(
            cache, "transformers", adapters, prompts, args.tokens
        )
    report["seconds"] = round(time.time() - started)
    a, b, c = report["npllm llama.cpp"], report["bare xllamacpp"], report["npllm transformers"]
    zero = a["0 adapters"]["decode_tokens_per_s"]
    report["ratios"] = {
        "a/b decode": round(zero / b["decode_tokens_per_s"], 3),
        "a/c decode": round(zero / c["0 adapters"]["decode_tokens_per_s"], 2),
        "1 adapter cost": round(1 - a["1 adapter"]["decode_tokens_per_s"] / zero, 3),
        "20 loaded vs 1": round(
            1
            - a["20 loaded, 1 routed"]["decode_tokens_per_s"]
            / a["1 adapter"]["decode_tokens_per_s"],
            3,
        ),  # fmt: skip
        "memory path share": round(a["0 adapters"]["memory_path_share"], 4),
    }
    print(f"\n{'row':<40} {'decode tok/s':>12} {'tok/s (npllm)':>13} {'TTFT ms':>8}")
    for engine in ("bare xllamacpp", "npllm llama.cpp", "npllm transformers"):
        rows = report[engine]
        for label, row in rows.items():
            if isinstance(row, dict) and "decode_tokens_per_s" in row:
                name = f"{engine}" + ("" if label == "rows" else f" · {label}")
                print(f"{name:<40} {row['decode_tokens_per_s']:>12.1f} "
                      f"{row['tokens_per_s']:>13.1f} {row['ttft_ms']:>8.0f}")  # fmt: skip
        if engine == "bare xllamacpp":
            print(f"{'bare xllamacpp':<40} {b['decode_tokens_per_s']:>12.1f} "
                  f"{b['tokens_per_s']:>13.1f} {b['ttft_ms']:>8.0f}")  # fmt: skip
    print(f"\nswap: {a['swap']}")
    print(f"RSS idle: llama.cpp {a['rss_idle_mb']} MB, transformers {c['rss_idle_mb']} MB")
    print(f"ratios: {report['ratios']}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "engines.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
