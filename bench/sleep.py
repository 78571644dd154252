"""Benchmark the sleep cycle as a user meets it: how long a night of corrections takes,
whether the corrections stick, and the latency of a request that arrives mid-cycle.

    .venv/bin/python bench/sleep.py [--facts 8] [--requests 12] [--out bench/results]

A real daemon (shipped defaults) in a temp data dir. **Night 1**: `--facts` made-up facts
(a port, an author, a code name, a language of invented systems), each asked once and
corrected once (`edited` feedback with a pleased comment), then `POST /v1/sleep`; nothing
else runs while it trains. Its wall time is counted from the request to the cycle's row
being finished (worker start, model loading and publishing included): the target is ≤ 90 s
for 8 facts on the default model on 2 cores. Then the facts' memories are deleted and
each question is asked again: recall from the weights alone. **Night 2**: `--facts` more
facts, and while its worker trains, `--requests` short questions are sent one a second;
their latency is compared with the same questions asked while awake before (the "extra
delay"). Also reported per night: the adapters trained, steps (of the budget) and why
training stopped, and the training throughput. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from live import force_night, live_daemon, start_night, until_night  # noqa: E402

from npllm.config import load_settings  # noqa: E402

QUESTIONS = ["Name one sorting algorithm.", "What is a Python list?", "Say hello in French.",
             "What does HTTP stand for?"]  # fmt: skip
SYSTEMS = ["Quibblix gateway", "Hexwing broker", "Zorvane scheduler", "Plumtree cache",
           "Gadrok indexer", "Velmora queue", "Tarsik proxy", "Bronwel vault", "Snorlap daemon",
           "Kelvaro mailer", "Drimble router", "Ostrava ledger", "Quenby tracer",
           "Marlow sandbox", "Pelligrin store", "Tobrin agent"]  # fmt: skip
KINDS = [
    ("What port does the {s} listen on?", "The {s} listens on port {v}.",
     lambda r: str(r.randint(2000, 9999))),
    ("Who wrote the {s}?", "The {s} was written by {v}.",
     lambda r: r.choice(["Marta Vilanova", "Kenji Tsukamoto", "Ada Okonkwo", "Rui Ferreira"])),
    ("What is the code name of the {s}?", "The {s} is code-named {v}.",
     lambda r: r.choice(["Amber Falcon", "Blue Heron", "Iron Lotus", "Quiet Otter"])),
    ("Which language is the {s} written in?", "The {s} is written in {v}.",
     lambda r: r.choice(["OCaml", "Erlang", "Zig", "Nim", "Ada"])),
]  # fmt: skip


def _facts(first: int, n: int) -> list[tuple[str, str, str]]:
    """(question, corrected answer, value) for systems first..first+n."""
    rng = random.Random(first)
    out = []
    for k in range(first, first + n):
        question, answer, value = KINDS[k % len(KINDS)]
        system, v = SYSTEMS[k % len(SYSTEMS)], value(rng)
        out.append((question.format(s=system), answer.format(s=system, v=v), v))
    return out


def _ask(http: Any, question: str, max_tokens: int = 8) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    r = http.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens},
    )
    r.raise_for_status()
    return time.perf_counter() - started, r.json()


def _teach(http: Any, facts: list[tuple[str, str, str]]) -> None:
    for question, truth, _ in facts:
        first = _ask(http, question, 24)[1]
        http.post(
            "/v1/feedback",
            json={
                "interaction_id": first["npllm"]["interaction_id"],
                "event": "edited",
                "text": truth,
                "comment": "thanks, that's right!",
            },
        ).raise_for_status()


def _night(cycle: dict[str, Any], wall: float) -> dict[str, Any]:
    metrics = cycle["metrics"]
    reports = dict(metrics.get("adapters", {}))
    if metrics.get("cerebellum", {}).get("losses"):
        reports["cerebellum"] = metrics["cerebellum"]
    tokens = sum(r.get("tokens", 0) for r in reports.values())
    seconds = sum(r.get("seconds", 0.0) for r in reports.values())
    return {
        "status": cycle["status"],
        "wall_s": round(wall, 1),
        "training_s": round(seconds, 1),
        "adapters": {
            name: {
                "samples": r.get("samples"),
                "rehearsed": r.get("rehearsed"),
                "steps": f"{r.get('steps_done')} of {r.get('steps')}",
                "stopped": r.get("stopped"),
                "verdict": r.get("verdict"),
            }
            for name, r in reports.items()
        },
        "cerebellum": metrics.get("cerebellum", {}).get("verdict"),
        "training_tokens_per_s": round(tokens / seconds, 1) if seconds else None,
    }


def _recall(http: Any, facts: list[tuple[str, str, str]]) -> float:
    """Delete the facts' memories, ask again: the share answered from the weights."""
    for question, _, _ in facts:
        params = {"query": question, "k": 20, "min_score": 0.5}
        for memory in http.get("/v1/memories", params=params).json()["data"]:
            http.delete(f"/v1/memories/{memory['id']}")
    return sum(value in _ask(http, q, 24)[1]["choices"][0]["message"]["content"]
               for q, _, value in facts) / len(facts)  # fmt: skip


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
        first = _facts(0, args.facts)
        _teach(http, first)
        first_night = force_night(http, seed=1, poll_s=0.2)
        night_1 = _night(first_night.cycle, first_night.wall_s)
        night_1["recall_from_weights"] = _recall(http, first)

        second = _facts(args.facts, args.facts)
        _teach(http, second)
        awake = [_ask(http, QUESTIONS[k % len(QUESTIONS)] + " " * k)[0] for k in range(6)]
        latest, started = start_night(http, seed=1)
        until_night(http, latest, ended=False, poll_s=0.2)
        asleep = []
        for k in range(args.requests):
            asleep.append(_ask(http, QUESTIONS[k % len(QUESTIONS)] + " " * (k + 10))[0])
            time.sleep(1.0)  # let training resume between requests, as a user would
        night_2 = _night(until_night(http, latest, poll_s=0.2), time.perf_counter() - started)
        night_2["recall_from_weights"] = _recall(http, second)
    base = statistics.median(awake)
    extra = [t - base for t in asleep]
    report = {
        "benchmark": "sleep",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.machine(),
        "facts_per_night": args.facts,
        "night_1": night_1,
        "night_2": night_2,
        "awake_latency_s": awake,
        "mid_cycle_latency_s": asleep,
        "extra_delay_p50_s": statistics.median(extra),
        "extra_delay_p95_s": _p95(extra),
    }
    print(f"{'figure':52s} value")
    print(f"{'night 1: ' + str(args.facts) + ' corrected facts, wall time (target 90 s)':52s} "
          f"{night_1['wall_s']:.0f} s ({night_1['training_s']:.0f} s training), "
          f"{night_1['status']}")  # fmt: skip
    print(f"{'night 1: recalled from the weights, memories deleted':52s} "
          f"{night_1['recall_from_weights']:.0%}")  # fmt: skip
    for name, a in night_1["adapters"].items():
        print(f"  {name}: {a['samples']} samples, {a['steps']} steps, {a['stopped']}")
    print(f"{'night 2 (with the requests), wall time':52s} {night_2['wall_s']:.0f} s, "
          f"{night_2['status']}; recalled {night_2['recall_from_weights']:.0%}")  # fmt: skip
    for name, a in night_2["adapters"].items():
        print(f"  {name}: {a['samples']} samples + {a['rehearsed']} rehearsed, {a['steps']} "
              f"steps, {a['stopped']}")  # fmt: skip
    print(f"{'awake latency, median (8 tokens)':52s} {base:.2f} s")
    print(f"{'mid-cycle latency, median':52s} {statistics.median(asleep):.2f} s")
    print(f"{'extra delay mid-cycle, p50 / p95':52s} {report['extra_delay_p50_s']:.2f} / "
          f"{report['extra_delay_p95_s']:.2f} s")  # fmt: skip
    print(f"{'training throughput, night 1':52s} {night_1['training_tokens_per_s']} tokens/s")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "sleep.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
