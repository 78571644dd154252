"""Benchmark adapters and the modulator: decode speed, routing cost, hot swap.

    .venv/bin/python bench/adapters.py [--tokens 64] [--repeats 3] [--swaps 5]
                                       [--out bench/results]

Part 1 (in process, the real base model): greedy decode tokens/s of a 64-token answer
with no adapter (plain model), with peft loaded but "__base__" routed, with one r=16
adapter, with 3 adapters blended exactly (peft "cat", rank 48), and with 20 adapters
loaded but 1 routed; and the modulator's decision time (20 routable adapters).
Adapters are random (Gaussian A and B) with the shared shape: speed does not depend on
what they learned.
Part 2 (a real daemon): publishes a new adapter version `--swaps` times while a client
loop keeps asking; reports each swap's time (load + smoke test + flip) and the request
latencies before and during the swaps, and failed requests.

Prints a table and writes JSON; never part of the test suite.
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
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from live import live_daemon  # noqa: E402

from npllm.config import load_settings  # noqa: E402
from npllm.engines.transformers import PeftAdapters  # noqa: E402
from npllm.generation import GenerationParams  # noqa: E402
from npllm.llm import load_base_llm  # noqa: E402
from npllm.modulator import Modulator  # noqa: E402
from npllm.versions import Version  # noqa: E402

PROMPT = "Explain how a Python dictionary works internally, step by step."


def make_adapters(llm: Any, settings: Any, n: int, root: Path) -> list[Path]:
    from peft import LoraConfig, get_peft_model

    paths = []
    t = settings.training
    for i in range(n):
        torch.manual_seed(i)
        config = LoraConfig(
            r=t.lora_r,
            lora_alpha=t.lora_alpha,
            target_modules=t.lora_target_modules,
            init_lora_weights="gaussian",
        )
        model = get_peft_model(llm.model, config)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.01)  # non-zero, like a trained adapter
        path = root / f"a{i}"
        model.save_pretrained(str(path))
        model.unload()
        paths.append(path)
    return paths


def decode_speed(
    llm: Any, names: list[str] | None, tokens: int, repeats: int, peft: Any = None
) -> float:
    ids = llm.encode_chat([{"role": "user", "content": PROMPT}])
    params = GenerationParams(max_new_tokens=tokens)
    # ignore_eos is not exposed; a long explanatory prompt runs to max_new_tokens
    rates = []
    for _ in range(repeats):
        gen = llm.generate_ids(ids, params, adapter_names=names, peft=peft)
        rates.append(gen.completion_tokens / gen.seconds)
    return statistics.median(rates)


def part_decode(settings: Any, tokens: int, repeats: int) -> dict[str, Any]:
    llm = load_base_llm(settings)
    server = PeftAdapters(llm, blend_cache=4)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_adapters(llm, settings, 20, Path(tmp))
        results = {"no_adapter_plain_model": decode_speed(llm, None, tokens, repeats)}
        versions = [Version(f"a{i}", 1, p, "active") for i, p in enumerate(paths)]
        for v in versions[:3]:
            server.load(v)
            server.activate(v)
        results["peft_loaded_base_routed"] = decode_speed(
            llm, ["__base__"], tokens, repeats, server.peft
        )
        results["one_adapter"] = decode_speed(
            llm, server.adapter_names([("a0", 1.0)]), tokens, repeats, server.peft
        )
        t = time.perf_counter()
        blend = server.adapter_names([("a0", 0.5), ("a1", 0.3), ("a2", 0.2)])
        blend_build_ms = (time.perf_counter() - t) * 1000
        results["three_blended"] = decode_speed(llm, blend, tokens, repeats, server.peft)
        for v in versions[3:]:
            server.load(v)
            server.activate(v)
        results["twenty_loaded_one_active"] = decode_speed(
            llm, server.adapter_names([("a0", 1.0)]), tokens, repeats, server.peft
        )
    modulator = Modulator(settings.modulator)
    rng = np.random.default_rng(0)
    modulator.set_adapters({f"a{i}": rng.normal(size=384) for i in range(20)})
    queries = rng.normal(size=(500, 384))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    t = time.perf_counter()
    for q in queries:
        modulator.decide(q)
    modulator_ms = (time.perf_counter() - t) * 1000 / len(queries)
    return {
        "tokens": tokens,
        "tokens_per_s": {k: round(v, 2) for k, v in results.items()},
        "blend_build_ms": round(blend_build_ms, 1),
        "modulator_ms": round(modulator_ms, 3),
        "modulator_parameters": modulator.parameter_count,
    }


def part_swap(settings: Any, swaps: int, model_cache: Path) -> dict[str, Any]:
    llm = load_base_llm(settings)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_adapters(llm, settings, 1, Path(tmp))[0]
        del llm
        with live_daemon(model_cache) as live:
            http = live.http
            body = {
                "messages": [{"role": "user", "content": "Name a sorting algorithm."}],
                "max_tokens": 16,
                "temperature": 0.7,
                "npllm": {"adapters": []},
            }
            baseline = []
            for _ in range(8):
                t = time.perf_counter()
                http.post("/v1/chat/completions", json=body)
                baseline.append((time.perf_counter() - t) * 1000)
            first = http.post(
                "/v1/adapters/bench/versions", json={"path": str(path), "description": "bench"}
            ).json()
            stop = threading.Event()
            during: list[float] = []
            failures = 0

            def load() -> None:
                nonlocal failures
                import httpx

                client = httpx.Client(
                    transport=httpx.HTTPTransport(uds=str(live.socket)),
                    base_url="http://npllm",
                    timeout=300,
                )
                pinned = {**body, "npllm": {"adapters": ["bench"]}}
                while not stop.is_set():
                    t = time.perf_counter()
                    r = client.post("/v1/chat/completions", json=pinned)
                    during.append((time.perf_counter() - t) * 1000)
                    failures += r.status_code != 200

            worker = threading.Thread(target=load)
            worker.start()
            swap_ms = [first["swap_ms"]]
            for _ in range(swaps):
                r = http.post(
                    "/v1/adapters/bench/versions",
                    json={"path": str(path), "description": "bench"},
                )
                swap_ms.append(r.json()["swap_ms"])
                time.sleep(0.5)
            stop.set()
            worker.join(300)
    return {
        "swaps": len(swap_ms),
        "swap_ms": swap_ms,
        "swap_ms_max": max(swap_ms),
        "baseline_p50_ms": round(float(np.percentile(baseline, 50)), 1),
        "baseline_p99_ms": round(float(np.percentile(baseline, 99)), 1),
        "during_requests": len(during),
        "during_p50_ms": round(float(np.percentile(during, 50)), 1) if during else None,
        "during_p99_ms": round(float(np.percentile(during, 99)), 1) if during else None,
        "failed_requests": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--model-cache", type=Path, default=REPO / ".venv" / "npllm-model-cache")
    args = parser.parse_args()
    settings = load_settings(
        environ={"NPLLM_MODELS__CACHE_DIR": str(args.model_cache), "NPLLM_DATA_DIR": "/tmp"}
    )
    decode = part_decode(settings, args.tokens, args.repeats)
    swap = part_swap(settings, args.swaps, args.model_cache)
    report = {
        "benchmark": "adapters",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
        "decode": decode,
        "swap": swap,
    }
    tps = decode["tokens_per_s"]
    base = tps["no_adapter_plain_model"]
    print(f"\ndecode speed, {decode['tokens']}-token greedy answers (median of {args.repeats})")
    for key, value in tps.items():
        print(f"  {key:<28} {value:>7.2f} tokens/s  ({value / base - 1:+.1%} vs plain)")
    one, twenty = tps["one_adapter"], tps["twenty_loaded_one_active"]
    print(
        f"  one r=16 adapter costs {1 - one / base:.1%} (target <= 15%); 20 loaded vs 1: "
        f"{1 - twenty / one:.1%} (target <= 5%)"
    )
    request_ms = decode["tokens"] / one * 1000
    print(
        f"  modulator decision {decode['modulator_ms']:.3f} ms = "
        f"{decode['modulator_ms'] / request_ms:.3%} of a {request_ms:.0f} ms request "
        f"(target <= 3%); blend build {decode['blend_build_ms']:.0f} ms once per combination"
    )
    print(f"\nhot swap ({swap['swaps']} publishes under load)       target: <= 1000 ms, 0 failed")
    print(f"  swap ms: {', '.join(f'{x:.0f}' for x in swap['swap_ms'])}")
    print(
        f"  request p50/p99: before {swap['baseline_p50_ms']}/{swap['baseline_p99_ms']} ms, "
        f"during {swap['during_p50_ms']}/{swap['during_p99_ms']} ms "
        f"({swap['during_requests']} requests, {swap['failed_requests']} failed)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "adapters.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
