"""Benchmark the sleep cycle as a user meets it: wake latency and cycle throughput.

    .venv/bin/python bench/sleep.py [--facts 8] [--requests 12] [--out bench/results]

A real daemon (shipped defaults) in a temp data dir is taught `--facts` corrected answers
(`edited` feedback with a pleased comment), then asked to sleep (POST /v1/sleep). While
its worker trains, `--requests` short questions are sent one after another; their
latency is compared with the same questions asked while awake, before the cycle. The
"extra delay" is latency mid-cycle minus the awake median. Also reported: the cycle's
wall time, its phases' training steps and the training throughput (tokens/s of the
examples it trained on, from the cycle's metrics). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from live import live_daemon  # noqa: E402

from npllm.config import load_settings  # noqa: E402

QUESTIONS = ["Name one sorting algorithm.", "What is a Python list?", "Say hello in French.",
             "What does HTTP stand for?"]  # fmt: skip


def _ask(http: Any, question: str, max_tokens: int = 8) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    r = http.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens},
    )
    r.raise_for_status()
    return time.perf_counter() - started, r.json()


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--facts", type=int, default=8)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    settings = load_settings()
    with live_daemon(settings.model_cache_path) as live:
        http = live.http
        for k in range(args.facts):
            question = f"What is the code name of release {k + 1} of the Quibblix gateway?"
            first = _ask(http, question, 16)[1]
            http.post(
                "/v1/feedback",
                json={
                    "interaction_id": first["npllm"]["interaction_id"],
                    "event": "edited",
                    "text": f"Release {k + 1} of the Quibblix gateway is code-named Amber{k}.",
                    "comment": "thanks, that's right!",
                },
            ).raise_for_status()
        awake = [_ask(http, QUESTIONS[k % len(QUESTIONS)] + " " * k)[0] for k in range(6)]
        latest = http.get("/v1/sleep").json()["latest_cycle"]
        http.post("/v1/sleep", json={"now": True, "seed": 1}).raise_for_status()
        started = time.perf_counter()
        while True:
            cycles = http.get("/v1/sleep").json()["cycles"]
            if cycles and cycles[0]["id"] != latest and cycles[0]["phase"].startswith("training"):
                break
            time.sleep(0.2)
        asleep = []
        for k in range(args.requests):
            asleep.append(_ask(http, QUESTIONS[k % len(QUESTIONS)] + " " * (k + 10))[0])
            time.sleep(1.0)  # let training resume between requests, as a user would
        while True:
            status = http.get("/v1/sleep").json()
            cycle = status["cycles"][0]
            if cycle["status"] != "running":
                break
            time.sleep(1.0)
        wall = time.perf_counter() - started
    metrics = cycle["metrics"]
    reports = [*metrics.get("adapters", {}).values()]
    if metrics.get("cerebellum", {}).get("losses"):
        reports.append(metrics["cerebellum"])
    steps = sum(len(r.get("losses", [])) for r in reports)
    tokens = sum(r.get("tokens", 0) for r in reports)
    seconds = sum(r.get("seconds", 0.0) for r in reports)
    base = statistics.median(awake)
    extra = [t - base for t in asleep]
    report = {
        "benchmark": "sleep",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.machine(),
        "facts": args.facts,
        "awake_latency_s": awake,
        "mid_cycle_latency_s": asleep,
        "extra_delay_p50_s": statistics.median(extra),
        "extra_delay_p95_s": _p95(extra),
        "cycle_status": cycle["status"],
        "cycle_wall_s": wall,
        "optimizer_steps": steps,
        "training_tokens": tokens,
        "training_tokens_per_s": tokens / seconds if seconds else None,
        "verdicts": {k: v.get("verdict") for k, v in metrics.get("adapters", {}).items()},
        "cerebellum": metrics.get("cerebellum", {}).get("verdict"),
    }
    print(f"{'figure':44s} value")
    print(f"{'awake latency, median (8 tokens)':44s} {base:.2f} s")
    print(f"{'mid-cycle latency, median':44s} {statistics.median(asleep):.2f} s")
    print(f"{'extra delay mid-cycle, p50 / p95':44s} {report['extra_delay_p50_s']:.2f} / "
          f"{report['extra_delay_p95_s']:.2f} s")  # fmt: skip
    print(f"{'cycle wall time (with the requests)':44s} {wall:.0f} s, {cycle['status']}")
    print(f"{'optimizer steps (adapters + cerebellum)':44s} {steps}")
    print(f"{'training throughput':44s} {report['training_tokens_per_s'] or 0:.0f} tokens/s")
    print(f"verdicts: {report['verdicts']}, cerebellum: {report['cerebellum']}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "sleep.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
