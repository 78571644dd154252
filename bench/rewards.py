"""Benchmark: the modulator learns a user's routing preference from implicit feedback, in
its sleep (PPO, issue 25) — through the real daemon, its nights and its served path.

    .venv/bin/python bench/rewards.py [--arm prefer|random] [--nights 2] [--seed 0]
        [--out bench/results]

A real `npllm serve` in a temp data dir with `modulator.train` on (the shipped method,
`ppo`, and the shipped gate: `modulator.min_improvement`, `modulator.confidence`). Two
adapters are trained first with `npllm adapter train` on the test suite's datasets:
`zorblax` (facts about an invented project, tests/data/zorblax.jsonl) and `sqlbot` (SQL
answers in a "SQLBOT:" style, tests/data/sqlbot.jsonl). Then, each day, a seeded scripted
user asks the `day` questions of bench/data/rewards.json (30 SQL how-to questions, 12 about
Zorblax; no two alike in a row, so none is taken for a re-ask of the one before) and rates
every answer implicitly, the way npllm reads it:

- `--arm prefer` (a routing preference): a SQL answer sqlbot gave is not what they want —
  they press "regenerate" (the same question again at temperature 0.7: a re-ask, npllm's
  implicit negative on the first answer); a SQL answer of the base (no adapter) is copied
  (`copied`: implicit positive). A Zorblax answer zorblax gave is copied; one without it is
  regenerated. The preference: the base for SQL, zorblax for Zorblax.
- `--arm random` (uninformative): each answer is copied or regenerated with probability
  1/2, whoever gave it. A modulator trained on this must not be served.

Then a forced night (`POST /v1/sleep`): the night trains the modulator on the logged, rated
routing decisions (consolidation/modulator_ppo.py: a reward model, PPO against it, the
policy distilled into the served modulator, served only when the doubly robust gain's
lower bound reaches the margin) — and, as every night, the adapters on what was copied.

Measured after every night (and before the first), through the served path: where the
`held_out` questions (never asked by the user) are routed — the share of SQL questions sent
to sqlbot and to no adapter, the share of Zorblax questions sent to zorblax — the night's
modulator report (its verdict, the DR gain's lower bound, the reward model's skill) and its
`npllm.modulator_trainings` row. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from live import NightRefused, force_night, live_daemon  # noqa: E402
from month import Client, _order  # noqa: E402

from npllm.config import load_settings  # noqa: E402

DATA = REPO / "bench" / "data" / "rewards.json"
DATASETS = REPO / "tests" / "data"
ADAPTERS = ("zorblax", "sqlbot")
TOKENS = 24  # a day's answers: enough to be an answer, short enough for 40 a day
ROW = """SELECT coalesce(sleep_cycle, 0), method, decisions, coalesce(n_train, 0),
       round(coalesce(dr_gain_low, 'NaN')::numeric, 3),
       round(coalesce(reward_model_skill, 'NaN')::numeric, 3), served, reason
FROM npllm.modulator_trainings ORDER BY id DESC LIMIT 1"""


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def _used(reply: dict[str, Any]) -> str:
    """The adapter that answered ('none': the base alone)."""
    adapters = reply["npllm"].get("adapters") or []
    return str(adapters[0]["name"]) if adapters else "none"


def train_adapters(env: dict[str, str]) -> dict[str, str]:
    """Both adapters, imported and trained by the CLI and published to the daemon."""
    out = {}
    for name in ADAPTERS:
        for args in (("dataset", "import", name, str(DATASETS / f"{name}.jsonl")),
                     ("adapter", "train", name, "--dataset", name)):  # fmt: skip
            done = _cli(env, *args)
            if done.returncode != 0:
                raise RuntimeError(f"npllm {' '.join(args)} failed:\n{done.stderr}")
        out[name] = done.stdout.strip().splitlines()[-1]
    return out


def likes(arm: str, topic: str, used: str, rng: random.Random) -> bool:
    """Whether the scripted user copies this answer (else they regenerate it)."""
    if arm == "random":
        return rng.random() < 0.5
    wanted = "none" if topic == "sql" else "zorblax"
    return used == wanted


def day(client: Client, data: dict[str, Any], arm: str, rng: random.Random) -> dict[str, Any]:
    """The user's day: every `day` question once, rated implicitly (see the docstring)."""
    topic_of = {q: t for t in ("sql", "zorblax") for q in data[t]["day"]}
    log: dict[str, Any] = {"asked": 0, "copied": 0, "regenerated": 0, "routed": {}}
    for question in _order(client, list(topic_of), rng):
        topic = topic_of[question]
        reply = client.ask(question, tokens=TOKENS, who="user")
        used = _used(reply)
        log["asked"] += 1
        key = f"{topic}->{used}"
        log["routed"][key] = log["routed"].get(key, 0) + 1
        if likes(arm, topic, used, rng):
            client.feedback(reply, "copied")
            log["copied"] += 1
        else:  # "regenerate": the same question again, sampled — a re-ask of the first
            client.ask(question, tokens=TOKENS, temperature=0.7, who="user")
            log["regenerated"] += 1
    return log


def measure(client: Client, data: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Where the held-out questions are routed now (greedy, one token: routing alone)."""
    topic_of = {q: t for t in ("sql", "zorblax") for q in data[t]["held_out"]}
    before = client.metrics()["implicit_events"]
    routed: dict[str, dict[str, int]] = {"sql": {}, "zorblax": {}}
    modes = set()
    for question in _order(client, list(topic_of), rng):
        reply = client.ask(question, tokens=1)
        used = _used(reply)
        counts = routed[topic_of[question]]
        counts[used] = counts.get(used, 0) + 1
        modes.add(reply["npllm"].get("routing", {}).get("mode", "?"))
    n_sql, n_zorb = len(data["sql"]["held_out"]), len(data["zorblax"]["held_out"])
    return {
        "routed": routed,
        "sql_to_sqlbot": round(routed["sql"].get("sqlbot", 0) / n_sql, 3),
        "sql_to_none": round(routed["sql"].get("none", 0) / n_sql, 3),
        "zorblax_to_zorblax": round(routed["zorblax"].get("zorblax", 0) / n_zorb, 3),
        "modes": sorted(modes),
        "implicit_events_caused": client.metrics()["implicit_events"] - before,
    }


def night(client: Client, env: dict[str, str], seed: int) -> dict[str, Any]:
    """A forced night; its modulator report and the newest modulator_trainings row."""
    try:
        done = force_night(client.http, seed, poll_s=1.0)
    except NightRefused as refused:
        return {"status": f"refused: {refused}"}
    metrics = done.cycle.get("metrics") or {}
    report = metrics.get("modulator") or {}
    row = _cli(env, "psql", "-At", "-F", "\t", "-c", ROW).stdout.strip()
    fields = row.split("\t") if row else []
    names = ("cycle", "method", "decisions", "n_train", "dr_gain_low", "skill", "served", "reason")
    return {
        "id": done.cycle["id"],
        "status": done.cycle["status"],
        "wall_s": round(done.wall_s, 1),
        "modulator_verdict": report.get("verdict"),
        "modulator": {
            k: report.get(k) for k in ("decisions", "dr", "ips", "reason") if k in report
        },
        "training_row": dict(zip(names, fields, strict=False)) if fields else None,
        "adapters": {n: r.get("verdict") for n, r in metrics.get("adapters", {}).items()},
    }


HEADER = (
    "night  cycle s  decisions  DR gain low  skill  served  SQL->sqlbot  SQL->none  "
    "Zorblax->zorblax  verdict"
)


def table_row(n: int, entry: dict[str, Any]) -> str:
    m, t = entry["measure"], (entry.get("night") or {}).get("training_row") or {}
    wall = (entry.get("night") or {}).get("wall_s", 0.0)
    verdict = ((entry.get("night") or {}).get("modulator_verdict") or "-")[:60]
    return (
        f"{n:>5}  {wall:>7.1f}  {t.get('decisions', '-'):>9}  {t.get('dr_gain_low', '-'):>11}  "
        f"{t.get('skill', '-'):>5}  {t.get('served', '-'):>6}  {m['sql_to_sqlbot']:>11.0%}  "
        f"{m['sql_to_none']:>9.0%}  {m['zorblax_to_zorblax']:>16.0%}  {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--arm", choices=("prefer", "random"), default="prefer")
    parser.add_argument("--nights", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    if args.nights < 1:
        parser.error("--nights must be at least 1")
    data = json.loads(DATA.read_text())
    settings = load_settings()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"rewards-{args.arm}-seed{args.seed}.json"
    report: dict[str, Any] = {
        "benchmark": "rewards",
        "arm": args.arm,
        "seed": args.seed,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {platform.node()}, {os.cpu_count()} cores",
        "settings": {
            k: getattr(settings.modulator, k)
            for k in (
                "method",
                "min_decisions",
                "min_improvement",
                "confidence",
                "ppo_timesteps",
            )  # fmt: skip
        },
        "nights": [],
    }
    started = time.perf_counter()
    with live_daemon(settings.model_cache_path, NPLLM_MODULATOR__TRAIN="true") as live:
        client = Client(live.http)
        report["adapters"] = train_adapters(live.env)
        report["nights"].append({"n": 0, "measure": measure(client, data, rng)})
        print(HEADER, flush=True)
        print(table_row(0, report["nights"][0]), flush=True)
        for n in range(1, args.nights + 1):
            log = day(client, data, args.arm, rng)
            entry = {"n": n, "day": log, "night": night(client, live.env, args.seed * 100 + n)}
            entry["measure"] = measure(client, data, rng)
            report["nights"].append(entry)
            report["errors_5xx"] = client.server_errors
            report["minutes"] = round((time.perf_counter() - started) / 60, 1)
            out.write_text(json.dumps(report, indent=1))
            print(table_row(n, entry), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
