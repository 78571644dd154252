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

from live import live_daemon, stream  # noqa: E402

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


def whole(http: Any, prompt: str, tokens: int, adapters: list[str] | None) -> float:
    """Tokens/s of one answer without streaming, as the client sees it."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}],
                            "max_tokens": tokens, "temperature": 0.0}  # fmt: skip
    if adapters is not None:
        body["npllm"] = {"adapters": adapters}
    started = time.perf_counter()
    reply = http.post("/v1/chat/completions", json=body)
    reply.raise_for_status()
    return round(reply.json()["usage"]["completion_tokens"] / (time.perf_counter() - started), 2)


def run_rows(http: Any, prompts: list[str], tokens: int, adapters: list[str] | None) -> dict:
    stream(http, "Say hello.", 8, adapters)  # warm-up
    rows = [stream(http, p, tokens, adapters) for p in prompts]
    # Not streamed: the answer cache is off (memory.cache_size 0), so each is generated.
    unstreamed = [whole(http, p, tokens, adapters) for p in prompts]
    return {
        "client_tokens_per_s": statistics.mean(r["client_tokens_per_s"] for r in rows),
        "client_tokens_per_s_unstreamed": statistics.mean(unstreamed),
        "ttft_ms": statistics.median(r["ttft_ms"] for r in rows),
        "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in rows),
        "decode_tokens_per_s": statistics.mean(r["decode_tokens_per_s"] for r in rows),
        "memory_path_share": statistics.mean(
            r["memory_path_ms"] / r["total_ms"] for r in rows if r["total_ms"]
        ),
        "memory_path_ms": {
            k: statistics.median(r[k] for r in rows)
            for k in ("embed_ms", "retrieve_ms", "prompt_ms", "memory_path_ms")
        },
        "rows": rows,
    }


ALTERNATING = {"none": [], "1 adapter": ["b0"], "3-blend": ["b0", "b1", "b2"]}


def alternating(http: Any, prompts: list[str], tokens: int) -> dict[str, Any]:
    """Each prompt asked under no adapter, one, and a blend in turn, so every request's
    adapter set differs from the one before: time to first token per set."""
    for chosen in ALTERNATING.values():
        stream(http, "Say hello.", 8, chosen)  # warm-up
    rows: dict[str, list[dict[str, Any]]] = {label: [] for label in ALTERNATING}
    for prompt in prompts:
        for label, chosen in ALTERNATING.items():
            rows[label].append(stream(http, prompt, tokens, chosen))
    return {label: statistics.median(r["ttft_ms"] for r in got) for label, got in rows.items()}


def paired(http: Any, prompts: list[str], tokens: int, rounds: int = 2) -> dict[str, Any]:
    """The decode cost of one adapter measured in pairs: each prompt without, then with it,
    back to back (each set keeps its own prefix, so the pair differs only by the adapter);
    the cost is 1 - the median of the pairs' ratios, which a drifting machine moves less
    than two separate rows."""
    ratios = []
    for _ in range(rounds):
        for prompt in prompts:
            none = stream(http, prompt, tokens, [])["decode_tokens_per_s"]
            one = stream(http, prompt, tokens, ["b0"])["decode_tokens_per_s"]
            ratios.append(one / none)
    return {"cost": round(1 - statistics.median(ratios), 3),
            "ratios": [round(r, 3) for r in ratios]}  # fmt: skip


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
        out["1 adapter, paired"] = paired(http, prompts, tokens)
        for i in (1, 2):
            publish(http, f"b{i}", adapters[i])
        out["3-blend"] = run_rows(http, prompts, tokens, ["b0", "b1", "b2"])
        out["alternating TTFT"] = alternating(http, prompts, tokens)
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


def one_prefix_rows(cache: Path, adapters: list[Path], prompts: list[str], tokens: int) -> dict:
    """The alternating rows with models.prefix_slots = 1 (one prefix, the previous
    request's: the behaviour before per-set prefixes)."""
    env = {"NPLLM_MODELS__ENGINE": "llama.cpp", "NPLLM_MEMORY__CACHE_SIZE": "0",
           "NPLLM_MODELS__PREFIX_SLOTS": "1"}  # fmt: skip
    with live_daemon(cache, **env) as live:
        for i in range(3):
            publish(live.http, f"b{i}", adapters[i])
        return alternating(live.http, prompts, tokens)


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
    """The same GGUF, threads and prompt (system prompt + question) through xllamacpp alone,
    in a clean child process (bench/bare_engine.py): the ceiling npllm is compared with."""
    import subprocess

    from npllm.engines.llamacpp import free_cores, load_tokenizer
    from npllm.weights import resolve

    source = resolve(settings.models.base, "models.base")
    tokenizer = load_tokenizer(source, settings.model_cache_path)
    system = settings.memory.system_prompt
    ids = [
        list(
            tokenizer.apply_chat_template(
                [{"role": "system", "content": system}, {"role": "user", "content": p}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )  # fmt: skip
        for p in prompts
    ]
    job = {"model": str(source.path), "threads": settings.models.threads or free_cores(),
           "tokens": tokens, "prompts": ids}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bare_engine.py")],
        input=json.dumps(job), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    import tempfile

    from npllm.config import load_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--no-transformers", action="store_true", help="skip (c), the transformers engine rows"
    )
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
        report["npllm llama.cpp, prefix_slots 1"] = one_prefix_rows(
            cache, adapters, prompts, args.tokens
        )
        report["npllm transformers"] = (
            {}
            if args.no_transformers
            else npllm_rows(cache, "transformers", adapters, prompts, args.tokens)
        )
    report["seconds"] = round(time.time() - started)
    a, b, c = report["npllm llama.cpp"], report["bare xllamacpp"], report["npllm transformers"]
    zero, one = a["0 adapters"], a["1 adapter"]
    report["ratios"] = {
        "client tok/s, streamed: npllm / bare": round(
            zero["client_tokens_per_s"] / b["client_tokens_per_s"], 3
        ),
        "client tok/s, not streamed: npllm / bare": round(
            zero["client_tokens_per_s_unstreamed"] / b["client_tokens_per_s_unstreamed"], 3
        ),
        "decode: npllm / bare": round(zero["decode_tokens_per_s"] / b["decode_tokens_per_s"], 3),
        "npllm reported / client tok/s": round(
            zero["tokens_per_s"] / zero["client_tokens_per_s_unstreamed"], 3
        ),
        "TTFT 1 adapter / none": round(one["ttft_ms"] / zero["ttft_ms"], 2),
        "TTFT 3-blend / none": round(a["3-blend"]["ttft_ms"] / zero["ttft_ms"], 2),
        "TTFT alternating, 1 adapter / none": round(
            a["alternating TTFT"]["1 adapter"] / a["alternating TTFT"]["none"], 2
        ),
        "TTFT alternating, 3-blend / none": round(
            a["alternating TTFT"]["3-blend"] / a["alternating TTFT"]["none"], 2
        ),
        "TTFT alternating, 1 adapter / none, prefix_slots 1": round(
            report["npllm llama.cpp, prefix_slots 1"]["1 adapter"]
            / report["npllm llama.cpp, prefix_slots 1"]["none"],
            2,
        ),
        "1 adapter decode cost": round(
            1 - one["decode_tokens_per_s"] / zero["decode_tokens_per_s"], 3
        ),
        "1 adapter decode cost, paired": a["1 adapter, paired"]["cost"],
        "3-blend decode cost": round(
            1 - a["3-blend"]["decode_tokens_per_s"] / zero["decode_tokens_per_s"], 3
        ),
        "20 loaded vs 1": round(
            1 - a["20 loaded, 1 routed"]["decode_tokens_per_s"] / one["decode_tokens_per_s"], 3
        ),
        "memory path share": round(zero["memory_path_share"], 4),
    }
    if c:
        report["ratios"]["npllm llama.cpp / transformers decode"] = round(
            zero["decode_tokens_per_s"] / c["0 adapters"]["decode_tokens_per_s"], 2
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "engines.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\n{'row':<44} {'client':>7} {'unstr.':>7} {'decode':>7} {'npllm':>7} {'TTFT':>6}")
    print(f"{'(tokens/s; TTFT in ms)':<44}")
    table = [("bare xllamacpp (clean process)", b)] + [
        (f"{engine} · {label}", row)
        for engine in ("npllm llama.cpp", "npllm transformers")
        for label, row in report[engine].items()
        if isinstance(row, dict) and "decode_tokens_per_s" in row
    ]
    for name, row in table:
        print(f"{name:<44} {row['client_tokens_per_s']:>7.1f} "
              f"{row['client_tokens_per_s_unstreamed']:>7.1f} {row['decode_tokens_per_s']:>7.1f} "
              f"{row.get('tokens_per_s', float('nan')):>7.1f} {row['ttft_ms']:>6.0f}")  # fmt: skip
    print(f"\nalternating adapter sets, TTFT ms: {a['alternating TTFT']}")
    print(f"  with prefix_slots 1: {report['npllm llama.cpp, prefix_slots 1']}")
    print(f"\nswap: {a['swap']}")
    print(f"RSS idle: llama.cpp {a['rss_idle_mb']} MB, transformers {c.get('rss_idle_mb')} MB")
    for k, v in report["ratios"].items():
        print(f"{k:<44} {v}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
