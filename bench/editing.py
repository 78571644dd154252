"""Benchmark: corrections as knowledge edits, taught the way a person teaches and measured
the way knowledge-editing work measures an edit — through the real daemon and its night.

    .venv/bin/python bench/editing.py [--scenario one-night|week|sequential]
        [--split report|tune] [--facts 10] [--nights 10] [--arm shipped|plain]
        [--unseen] [--out bench/results]

Facts come from bench/data/editing.json (hand-written for this benchmark; see its "about"):
team facts about invented systems and overrides of a public default, each with 3
paraphrases and 6 neighbouring questions written independently of the night's own
paraphrase rules (npllm/variants.py). The **tune** split was used to choose
settings; figures reported in docs/performance.md come from the **report** split.

A real `npllm serve` (the shipped settings, or the `plain` arm: a LoRA fine-tune of the
corrections alone — no paraphrases, no keep-targets, no scopes, no served check — what the
night did before) in a temp data dir. Each fact is asked once (greedy, as a user asks) and
its wrong answer corrected once (`edited` feedback with a pleased comment). Before any
teaching, every neighbouring question is asked (greedy): its answer is what must not
change. Then:

- **same day** (before any night, memories in place): the exact question and the
  paraphrases, through the served path — the hippocampus answers;
- one `POST /v1/sleep` (the shipped night, worker and publish included), timed;
- **next morning**, with the facts' memories deleted (only the weights can answer):
  efficacy (the exact question), generalisation (the paraphrases, never trained on) and
  locality (a neighbour's greedy answer identical to its answer before teaching, its own
  memories deleted too). The before-answers are asked of the daemon itself before teaching,
  so they are the user's history, which the night keeps out of the adapter's scope
  (consolidation/lesson.py); with `--unseen` they are asked of a separate fresh daemon and
  the taught one never sees the neighbours before the morning.

Scenarios: `one-night` (`--facts` corrections, one night); `sequential` (`--nights`
nights of `--facts` corrections each; after every night its facts are scored, and after
the last every fact); `week` (five compressed days: each day 2 corrections among 3
ordinary questions whose answers are copied (`copied` feedback), one night a day; a fact
with an `update` is corrected again with its new value on a later day, and its newest value
is what counts). An answer is right when it contains one of the fact's keys
(case-insensitive). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from live import force_night, live_daemon  # noqa: E402

from npllm.config import load_settings  # noqa: E402

DATA = REPO / "bench" / "data" / "editing.json"
TOKENS = 48  # greedy answers this long are compared for locality
# The plain arm: the night as it was before scopes, paraphrases and the served check (a
# fine-tune of the corrections alone, routed by the adapter's centroid).
PLAIN = {
    "NPLLM_SLEEP__PARAPHRASES": "0",
    "NPLLM_SLEEP__NEIGHBOURS": "0",
    "NPLLM_TRAINING__RECALL_MARGIN": "0",
    "NPLLM_TRAINING__SERVED_CHECK": "false",
    "NPLLM_MODULATOR__SCOPE_SIMILARITY": "0.35",
    "NPLLM_TRAINING__MAX_CHANGED_NEIGHBOURS": "1.0",
}


def _ask(http: Any, question: str, tokens: int = TOKENS) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": tokens,
            "temperature": 0}  # fmt: skip
    r = http.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return dict(r.json())


def _text(reply: dict[str, Any]) -> str:
    return str(reply["choices"][0]["message"]["content"])


def _right(text: str, keys: list[str]) -> bool:
    return any(k.lower() in text.lower() for k in keys)


def _teach(http: Any, question: str, answer: str) -> None:
    first = _ask(http, question)
    http.post(
        "/v1/feedback",
        json={
            "interaction_id": first["npllm"]["interaction_id"],
            "event": "edited",
            "text": answer,
            "comment": "thanks, that's right!",
        },  # fmt: skip
    ).raise_for_status()


def _ordinary(http: Any, question: str) -> None:
    """An everyday question whose answer the user copies (implicit feedback)."""
    reply = _ask(http, question, 96)
    http.post("/v1/feedback", json={"interaction_id": reply["npllm"]["interaction_id"],
                                    "event": "copied"}).raise_for_status()  # fmt: skip


def _forget(http: Any, questions: list[str]) -> None:
    """Delete every memory about these questions: only the weights may answer them."""
    for question in questions:
        params = {"query": question, "k": 20, "min_score": 0.6}
        for memory in http.get("/v1/memories", params=params).json()["data"]:
            http.delete(f"/v1/memories/{memory['id']}")


def _night(http: Any) -> dict[str, Any]:
    night = force_night(http, seed=1)
    cycle = night.cycle
    return {
        "status": cycle["status"],
        "wall_s": round(night.wall_s, 1),
        "adapters": {
            name: {
                k: r.get(k)
                for k in (
                    "samples",
                    "rehearsed",
                    "steps_done",
                    "steps",
                    "stopped",
                    "verdict",
                    "served",
                    "locality",
                )
            }
            for name, r in cycle["metrics"].get("adapters", {}).items()
        },  # fmt: skip
    }


def _score(http: Any, facts: list[dict[str, Any]], before: dict[str, str]) -> dict[str, Any]:
    """Efficacy, generalisation and locality of `facts`, memories deleted."""
    _forget(http, [f["question"] for f in facts] + [n for f in facts for n in f["neighbours"]])
    rows = []
    for fact in facts:
        keys = fact.get("current_keys", fact["keys"])
        exact = _right(_text(_ask(http, fact["question"])), keys)
        paraphrases = [_right(_text(_ask(http, p)), keys) for p in fact["paraphrases"]]
        same = [_text(_ask(http, n)) == before[n] for n in fact["neighbours"]]
        rows.append({"id": fact["id"], "exact": exact, "paraphrases": paraphrases,
                     "neighbours": same})  # fmt: skip
    return _summary(rows)


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def share(values: list[bool]) -> float:
        return round(sum(values) / len(values), 3) if values else 0.0

    return {
        "efficacy": share([r["exact"] for r in rows]),
        "generalisation": share([p for r in rows for p in r["paraphrases"]]),
        "locality": share([n for r in rows for n in r["neighbours"]]),
        "facts": len(rows),
        "rows": rows,
    }


def _same_day(http: Any, facts: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for fact in facts:
        keys = fact.get("current_keys", fact["keys"])
        rows.append({
            "id": fact["id"],
            "exact": _right(_text(_ask(http, fact["question"])), keys),
            "paraphrases": [_right(_text(_ask(http, p)), keys) for p in fact["paraphrases"]],
            "neighbours": [],
        })  # fmt: skip
    return _summary(rows)


def _before(http: Any, facts: list[dict[str, Any]]) -> dict[str, str]:
    """Every neighbour's greedy answer before any teaching."""
    return {n: _text(_ask(http, n)) for f in facts for n in f["neighbours"]}


def one_night(
    http: Any, facts: list[dict[str, Any]], before: dict[str, str] | None = None
) -> dict[str, Any]:
    """`before`: the neighbours' answers asked of another daemon (`--unseen`), so the one
    taught never saw them; None: asked of this one before teaching, as a user's history."""
    before = before if before is not None else _before(http, facts)
    for fact in facts:
        _teach(http, fact["question"], fact["answer"])
    same_day = _same_day(http, facts)
    night = _night(http)
    return {"same_day": same_day, "night": night, "next_morning": _score(http, facts, before)}


def sequential(http: Any, facts: list[dict[str, Any]], per_night: int) -> dict[str, Any]:
    before = _before(http, facts)
    nights = []
    for start in range(0, len(facts), per_night):
        tonight = facts[start : start + per_night]
        for fact in tonight:
            _teach(http, fact["question"], fact["answer"])
        night = _night(http)
        night["score"] = _score(http, tonight, before)
        nights.append(night)
        print(f"night {len(nights)}: {night['wall_s']} s, efficacy "
              f"{night['score']['efficacy']:.0%}, generalisation "
              f"{night['score']['generalisation']:.0%}, locality "
              f"{night['score']['locality']:.0%}", flush=True)  # fmt: skip
    return {"nights": nights, "after_all": _score(http, facts, before)}


def week(
    http: Any, facts: list[dict[str, Any]], ordinary: list[str], days: int = 5
) -> dict[str, Any]:
    """Five compressed days: 2 corrections among 3 copied ordinary answers a day; a fact with
    an update is corrected again, with its new value, two days later."""
    taught = facts[: 2 * days]
    before = _before(http, taught)
    updates = [f for f in taught[: 2 * (days - 2)] if f.get("update")][:1]
    nights = []
    for day in range(days):
        today = taught[2 * day : 2 * day + 2]
        asked = ordinary[3 * day : 3 * day + 3]
        _ordinary(http, asked[0])
        _teach(http, today[0]["question"], today[0]["answer"])
        _ordinary(http, asked[1])
        _teach(http, today[1]["question"], today[1]["answer"])
        _ordinary(http, asked[2])
        for fact in updates:
            if day == taught.index(fact) // 2 + 2:  # two days after it was taught
                _teach(http, fact["question"], fact["update"]["answer"])
                fact["current_keys"] = fact["update"]["keys"]
                today = [*today, fact]
        night = _night(http)
        night["score"] = _score(http, today, before)
        nights.append(night)
        print(f"day {day + 1}: {night['wall_s']} s, right after the night "
              f"{night['score']['efficacy']:.0%}", flush=True)  # fmt: skip
    return {"nights": nights, "after_all": _score(http, taught, before),
            "updated": [f["id"] for f in updates]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=("one-night", "week", "sequential"),
                        default="one-night")  # fmt: skip
    parser.add_argument("--split", choices=("report", "tune"), default="report")
    parser.add_argument("--facts", type=int, default=10, help="corrections per night")
    parser.add_argument("--nights", type=int, default=10, help="nights (sequential)")
    parser.add_argument("--first", type=int, default=0, help="first fact of the split")
    parser.add_argument("--arm", choices=("shipped", "plain"), default="shipped")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--keep", type=Path, default=None, help="run the daemon in this directory and leave it"
    )
    parser.add_argument(
        "--unseen", action="store_true",
        help="one-night: ask the neighbours' before-answers of a separate fresh daemon, so the "
        "taught one never saw them (no user history about them)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.unseen and args.scenario != "one-night":
        parser.error("--unseen is for --scenario one-night")
    data = json.loads(DATA.read_text())[args.split]
    facts, ordinary = data["facts"][args.first :], data["ordinary"]
    settings = load_settings()
    env = PLAIN if args.arm == "plain" else {}
    started = time.perf_counter()
    before = None
    if args.unseen:
        with live_daemon(settings.model_cache_path, **env) as fresh:
            before = _before(fresh.http, facts[: args.facts])
    with live_daemon(settings.model_cache_path, keep=args.keep, **env) as live:
        if args.scenario == "one-night":
            result = one_night(live.http, facts[: args.facts], before)
        elif args.scenario == "sequential":
            result = sequential(live.http, facts[: args.facts * args.nights], args.facts)
        else:
            result = week(live.http, facts, ordinary)
    report = {
        "benchmark": "editing",
        "scenario": args.scenario,
        "split": args.split,
        "arm": args.arm,
        "neighbours": "unseen" if args.unseen else "asked before teaching",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {platform.node()}",
        "minutes": round((time.perf_counter() - started) / 60, 1),
        **result,
    }
    _print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    unseen = "-unseen" if args.unseen else ""
    out = args.out / f"editing-{args.scenario}-{args.split}-{args.arm}{unseen}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


def _print(report: dict[str, Any]) -> None:
    print(f"\n{report['scenario']} ({report['split']} split, {report['arm']} arm, neighbours "
          f"{report['neighbours']})")  # fmt: skip
    print(f"{'measure':40s} {'efficacy':>9s} {'generalisation':>15s} {'locality':>9s}")

    def row(label: str, s: dict[str, Any], locality: bool = True) -> None:
        loc = f"{s['locality']:>9.0%}" if locality else f"{'-':>9s}"
        print(f"{label:40s} {s['efficacy']:>9.0%} {s['generalisation']:>15.0%} {loc}")

    if "same_day" in report:
        row("same day (memories in place)", report["same_day"], locality=False)
    if "next_morning" in report:
        row("next morning (memories deleted)", report["next_morning"])
        print(f"night: {report['night']['wall_s']} s, {report['night']['adapters']}")
    for k, night in enumerate(report.get("nights", []), 1):
        row(f"night {k} ({night['wall_s']} s), its facts", night["score"])
    if "after_all" in report:
        row(f"after all nights ({report['after_all']['facts']} facts)", report["after_all"])


if __name__ == "__main__":
    main()
