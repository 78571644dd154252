"""Measure how often greedy answers loop, per repetition setting, to choose the defaults.

    .venv/bin/python bench/loops.py [--tokens 256] [--out bench/results]

A fixed set of coding questions is answered greedily (the shipped system prompt, no
memories) by the llama.cpp engine in-process, once per setting. An answer *loops* when it
hits the token cap while repeating: some 6-token sequence occurs at least 3 times in its
second half. For each setting: the loop rate, the mean answer length, and the share of
answers that stop by themselves. Prints a table and writes JSON; never part of the test
suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QUESTIONS = [
    "How do I undo the last git commit but keep my changes?",
    "What does git stash do?",
    "Explain the difference between a list and a tuple in Python.",
    "How do I read a file line by line in Python?",
    "What is a Python decorator?",
    "How do I reverse a string in JavaScript?",
    "Write a SQL query that counts rows in a table named users.",
    "What is the difference between INNER JOIN and LEFT JOIN?",
    "How do I create a virtual environment in Python?",
    "What does the `async` keyword do in Python?",
    "Explain what a race condition is.",
    "How do I find which process listens on a port on Linux?",
    "What is a Docker volume?",
    "How do I merge two dictionaries in Python?",
    "Explain big-O notation briefly.",
    "What is the difference between a process and a thread?",
    "How do I squash commits in git?",
    "What does `chmod 755` mean?",
    "How do I handle exceptions in Python?",
    "What is a REST API?",
    "How do I sort a list of dicts by a key in Python?",
    "What is the purpose of a .gitignore file?",
    "Explain what an index does in a database.",
    "How do I make an HTTP request in Python?",
]
# Retrieval must survive the penalty: llama.cpp's window includes the prompt, so a fact in
# the context is itself "repeated" when the answer copies it.
FACTS = [
    ("The Kestrel gateway listens on port 4471.", "What port does Kestrel use?", "4471"),
    ("Our staging database is called pelican-staging.", "What is our staging database called?",
     "pelican-staging"),
    ("The Umber pipeline is owned by team Saffron.", "Who owns the Umber pipeline?", "Saffron"),
    ("Deploys run from the branch release-train.", "Which branch do deploys run from?",
     "release-train"),
    ("The cache TTL for sessions is 900 seconds.", "What is the session cache TTL?", "900"),
    ("Our Python services use the Quokka ORM.", "Which ORM do our Python services use?",
     "Quokka"),
]  # fmt: skip
SETTINGS = {
    "off": {},
    "repeat 1.1": {"repeat_penalty": 1.1},
    "repeat 1.2": {"repeat_penalty": 1.2},
    "frequency 0.3": {"frequency_penalty": 0.3},
    "presence 0.5": {"presence_penalty": 0.5},
    "repeat 1.1 + frequency 0.2": {"repeat_penalty": 1.1, "frequency_penalty": 0.2},
    "frequency 0.5": {"frequency_penalty": 0.5},
    "frequency 0.7": {"frequency_penalty": 0.7},
    "frequency 0.4 + presence 0.2": {"frequency_penalty": 0.4, "presence_penalty": 0.2},
}


def loops(ids: list[int], cap: int, n: int = 6, times: int = 3) -> bool:
    """Hit the cap while repeating: an n-token sequence seen `times` times in the second half."""
    if len(ids) < cap:
        return False
    tail = ids[len(ids) // 2 :]
    grams = Counter(tuple(tail[i : i + n]) for i in range(len(tail) - n + 1))
    return bool(grams) and max(grams.values()) >= times


def main() -> None:
    from npllm.config import load_settings
    from npllm.engines.llamacpp import LlamaCppEngine
    from npllm.generation import GenerationParams
    from npllm.weights import resolve

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    cache = REPO / ".venv" / "npllm-model-cache"
    settings = load_settings(environ={"NPLLM_MODELS__CACHE_DIR": str(cache)})
    import tempfile

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        engine = LlamaCppEngine(settings, resolve(settings.models.base, "m"), Path(tmp))
        system = settings.memory.system_prompt
        report: dict[str, Any] = {"tokens": args.tokens, "questions": len(QUESTIONS)}
        for label in args.settings:
            extra = SETTINGS[label]
            params = GenerationParams(max_new_tokens=args.tokens, **extra)
            rows = []
            for q in QUESTIONS[: args.questions]:
                chat = [{"role": "system", "content": system}, {"role": "user", "content": q}]
                gen = engine.generate(engine.encode_chat(chat), params)
                ids = engine.tokenizer.encode(gen.text)
                rows.append({"q": q, "tokens": gen.completion_tokens,
                             "loops": loops(ids, args.tokens) or (
                                 gen.finish_reason == "length" and loops(ids, len(ids))),
                             "stopped": gen.finish_reason == "stop",
                             "text": gen.text})  # fmt: skip
            recalled = 0
            for fact, q, needle in FACTS:
                system_msg = f"{system}\n\nKnown facts (trust these):\n- {fact}"
                chat = [{"role": "system", "content": system_msg}, {"role": "user", "content": q}]
                gen = engine.generate(
                    engine.encode_chat(chat), dataclasses.replace(params, max_new_tokens=64)
                )
                recalled += needle.lower() in gen.text.lower()
            report[label] = {
                "fact_recall": recalled / len(FACTS),
                "loop_rate": sum(r["loops"] for r in rows) / len(rows),
                "stop_rate": sum(r["stopped"] for r in rows) / len(rows),
                "mean_tokens": statistics.mean(r["tokens"] for r in rows),
                "rows": rows,
            }
        engine.close()
    report["seconds"] = round(time.time() - started)
    print(f"\n{'setting':<28} {'loop rate':>9} {'stops':>6} {'mean tokens':>11} {'facts':>6}")
    for label in args.settings:
        r = report[label]
        print(f"{label:<28} {r['loop_rate']:>9.0%} {r['stop_rate']:>6.0%} "
              f"{r['mean_tokens']:>11.0f} {r['fact_recall']:>6.0%}")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "loops.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
