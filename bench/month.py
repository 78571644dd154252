"""Benchmark: a simulated month of nights — does npllm keep what it learned?

    .venv/bin/python bench/month.py [--nights 30] [--seed 0] [--facts-per-night 2-3]
        [--change-every 5] [--unseen] [--out bench/results] [--plot] [--keep DIR]
    .venv/bin/python bench/month.py --keep DIR --resume [the same options]
    .venv/bin/python bench/month.py --replot bench/results/month-30n-seed0.json

A run kept in `--keep DIR` can stop between two nights (`touch DIR/stop`) and go on later
with `--resume`: the same data dir (database, adapters, replay buffer), and the scripted
user's random state, day-0 answers and counts from the JSON. Each stretch is a row of
`segments`; the time between them is wall-clock time the daemon sees. A run killed during a
day or a night (from night 2 on) is resumable too, but that day's questions and corrections
were already asked: the night is listed in `interrupted` and its day asked again. Kill the
script with SIGTERM or Ctrl-C, which stops its daemon; after a SIGKILL stop the daemon
(`<DIR>/data/run`) before resuming.

A real `npllm serve` (the shipped settings: canary trials on, `canary.share` 0.2) in a temp
data dir, and its real sleep worker: every night is `POST /v1/sleep {"now": true}`, waited
for (the way bench/editing.py runs one). Each "day" a seeded scripted user:

- asks everyday coding and debugging questions (bench/data/month.json `ordinary`) and
  copies their answers (`copied` feedback); sometimes (p 0.3) presses "regenerate" on one
  (the same question again, sampled at temperature 0.7 — a re-ask, npllm's implicit
  negative signal on the first answer) and copies the second;
- asks 2–3 questions about made-up internal systems, gets a wrong answer and corrects each
  **once** (`edited` feedback with the corrected text and "thanks, that's right!", exactly
  bench/editing.py's `_teach`);
- asks two earlier facts again (their `reask` wording, or the taught question), through the
  served path with its memories, and copies the answer when it is right (nothing when wrong:
  each fact is corrected once);
- every `--change-every` nights (from the 2nd) changes one fact taught on an earlier night:
  asks it and corrects it again with a new value (the newest correction must win);
- then a forced night, its wall time and status recorded.

**Facts** are drawn from the templates of bench/data/month.json with the seed (see its
"about"): an invented system ("the Brannock scheduler") × a relation (port, owner, language,
config file, deploy command, on-call channel, database, region, dashboard, repository) with
a generated value, so any number of nights has fresh facts. Each has a key (the value; an
answer is right when it contains it, case-insensitive), 3 held-out paraphrases (never
taught, never liked: the night makes paraphrases of its own) and 2 neighbours: the same
system with a relation never taught for it, and the same question about a decoy system
never taught. bench/data/editing.json is not used (its report split stays for reporting).

**Measured after every night, through the served path, greedy (temperature 0), 48 tokens**:

- recall of every fact taught so far, **weights only**: asked with `"npllm": {"memory":
  false}` (the request option that answers without recalling memories: "the adapters
  alone"). Chosen over deleting the facts' memories as bench/editing.py's `_forget` does,
  because deleting them would change the rest of the month: the user's next-day re-asks
  would no longer be answered by the hippocampus, and a search with `min_score` 0.6 can
  miss an exchange the awake path would still recall. The night itself learns from the
  replay buffer and the interactions (consolidation/plan.py samples `replay_buffer`), never
  from memories, so the memories stay as a user would have them. Rows: nights; columns:
  the night a fact's current value was taught (a changed fact moves to its change's
  night); cell: share right — the R matrix. Its diagonal is "each night's facts right after
  their night";
- the held-out paraphrases of every fact so far (weights only);
- locality, weights only: the 20 `fixed_neighbours` and every taught fact's 2 neighbours,
  each asked once before any teaching (day 0, weights only): the greedy answer must be
  identical to that before-answer. Asked of the month's own daemon they are the user's
  history, which the night keeps out of an adapter's scope (consolidation/lesson.py), as
  bench/editing.py does by default; with `--unseen` they are asked of a separate fresh
  daemon instead, and the month's daemon first sees a fact's neighbours the morning after
  the fact is taught;
- changed facts: the newest value answered (and whether the old one still is);
- same day, before the night, with memories (what the user sees that day): tonight's facts
  and their paraphrases;
- adapters served and registered, versions, running canary trials (`GET /v1/adapters`),
  the database's size (`/metrics` `npllm_database_size_bytes`), disk use of
  `<data_dir>/adapters` and `<data_dir>/pgdata`, awake latency (p50 of `npllm.timings.
  total_ms` and of the client's wall clock over the 12 `latency` questions, 32 tokens, with
  memories; answers from the answer cache are left out), 5xx answers (counted by the
  client and by `/metrics`), failed cycles.

Canary trials stay on (the default), so a measurement is what a user sees: a new version
answers the questions it was taught to everyone (arm `taught`) and the rest of its topic
20/80 with the previous version by a hash of the conversation. Every measured answer's
arms (`npllm.adapters[i].arm`) are in the JSON. Trials are decided by rated answers or after
`canary.max_hours` (48 h of wall clock: longer than this compressed month), so most end
superseded by the next night's version.

**What the measurement does to the month** (said here because it is traffic the daemon
records): every measured question is an interaction (unrated: tier `discard`, never a
training target, not counted by canary trials unless some implicit signal rates it), part
of the user's history that the night reads for neighbour keys (a changed fact's paraphrases,
measured before the change, are such history: see docs/performance.md), and part of the
database's size (the JSON counts the measurement's interactions beside the user's).
Consecutive questions (the measurement's and the user's day) are ordered so no two are
alike enough (cosine ≥ 0.8 with npllm's own embedder) for the daemon to take the second
as a re-ask of the first (`feedback.reask_similarity` 0.9), and no question matches one of
npllm's correction patterns (npllm/feedback.py): the implicit feedback events the
measurement caused are counted (`/metrics`) and should stay 0.

How long: on a 2-core machine a night of 2–3 corrections takes 5–10 minutes here (the
worker's training, under load), a day and the measurement a few minutes more (the
measurement grows by about 5 questions per fact taught); `--nights 2` took 22–32 minutes
beside another session's test suite, 30 nights take several hours: run it in the
background and follow the table.

Targets (issue 25) are printed beside the figures, met or missed. Prints one row per night
as the month goes and the table at the end; writes JSON (rewritten after every night) to
`--out`; `--plot` draws recall, locality, adapters and disk over the nights to
docs/img/month.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from live import NightRefused, force_night, live_daemon  # noqa: E402

from npllm.artifacts import write_file_atomically  # noqa: E402
from npllm.config import load_settings  # noqa: E402

DATA = REPO / "bench" / "data" / "month.json"
EDITING = REPO / "bench" / "data" / "editing.json"
PLOT = REPO / "docs" / "img" / "month.png"
TOKENS = 48  # greedy answers this long are compared for locality (as bench/editing.py)
LATENCY_TOKENS = 32
APART = 0.8  # consecutive measured questions less alike than this: never a re-ask (0.9)
PLEASED = "thanks, that's right!"
COMMON_PORTS = {
    3000,
    3306,
    4000,
    5000,
    5432,
    5672,
    6379,
    8000,
    8008,
    8080,
    8081,
    8443,
    8888,
    9000,
    9090,
    9092,
    9200,
    9300,
}


# ----------------------------------------------------------------------------- the month


@dataclass
class System:
    name: str  # "Brannock"
    kind: str  # "scheduler"
    neighbour: str = ""  # a relation never taught for it (asked as its locality neighbour)
    taught: list[str] = field(default_factory=list)

    @property
    def the(self) -> str:
        return f"the {self.name} {self.kind}"

    @property
    def slug(self) -> str:
        return self.name.lower()

    def say(self, template: str, value: str = "") -> str:
        text = template.format(the=self.the, The=f"The {self.name} {self.kind}", v=value)
        return text[:1].upper() + text[1:]


@dataclass
class Fact:
    id: str
    night: int  # the night it is taught
    relation: str
    system: str  # "the Brannock scheduler"
    question: str
    answer: str
    keys: list[str]
    paraphrases: list[str]  # held out: never taught, never liked
    reask: str  # the wording the user re-asks it in during a day
    neighbours: list[str]  # the same system/another relation; the same question/a decoy
    change: dict[str, Any] | None = None  # {"night", "answer", "keys"}: corrected again

    def current(self, night: int) -> tuple[list[str], int]:
        """The keys right after `night` and the night that taught them (the R column)."""
        if self.change and self.change["night"] <= night:
            return self.change["keys"], self.change["night"]
        return self.keys, self.night


class Values:
    """Fresh values for each relation (never one used before for the same relation)."""

    def __init__(self, pools: dict[str, list[str]], rng: random.Random) -> None:
        self.pools, self.rng = pools, rng
        self.used: set[tuple[str, str]] = set()

    def draw(self, kind: str, system: System) -> tuple[str, str]:
        """(the value as the answer says it, the key that marks an answer right)."""
        for _ in range(1000):
            value, key = self._one(kind, system)
            if (kind, key.lower()) not in self.used:
                self.used.add((kind, key.lower()))
                return value, key
        raise RuntimeError(f"bench/data/month.json has too few values for {kind!r}")

    def _one(self, kind: str, s: System) -> tuple[str, str]:
        p, r = self.pools, self.rng
        if kind == "port":
            port = r.randint(2100, 9899)
            return (str(port), str(port)) if port not in COMMON_PORTS else ("", "")
        if kind == "person":
            surname = r.choice(p["surnames"])
            return f"{r.choice(p['first_names'])} {surname}", surname
        if kind == "path":
            path = f"/etc/{s.slug}/{r.choice(p['config_files'])}"
            return path, path
        if kind == "command":
            tool = r.choice(p["tool_heads"]) + r.choice(p["tool_tails"])
            verb = r.choice(p["verbs"])
            return f"{tool} {verb} {s.slug}", f"{tool} {verb}"
        if kind == "channel":
            channel = f"{s.slug}-{r.choice(p['channel_suffixes'])}"
            return channel, channel
        if kind == "region":
            region = f"{r.choice(p['region_areas'])}-{r.randint(2, 9)}"
            return region, region
        if kind == "host":
            host = f"{s.slug}.{r.choice(p['domains'])}"
            return host, host
        if kind == "repo":
            repo = f"{r.choice(p['repo_orgs'])}/{s.slug}-{r.choice(p['repo_suffixes'])}"
            return repo, repo
        pool = {"language": "languages", "database": "databases"}[kind]
        value = r.choice(p[pool])
        return value, value


def _names(data: dict[str, Any], rng: random.Random) -> list[str]:
    """Invented system names, none of bench/data/editing.json's."""
    taken = EDITING.read_text().lower() if EDITING.exists() else ""
    names = [h + t for h in data["names"]["heads"] for t in data["names"]["tails"]]
    names = [n for n in names if n.lower() not in taken]
    rng.shuffle(names)
    return names


def plan_month(
    data: dict[str, Any], nights: int, per_night: tuple[int, int], change_every: int, seed: int
) -> list[Fact]:
    """Every fact the month teaches, and its changes, from the templates and the seed."""
    rng = random.Random(seed)
    relations = {r["id"]: r for r in data["relations"]}
    names = _names(data, rng)
    values = Values(data["values"], rng)
    systems: list[System] = []
    decoys = [System(names.pop(), rng.choice(data["kinds"])) for _ in range(24)]
    facts: list[Fact] = []
    for night in range(1, nights + 1):
        for _ in range(rng.randint(*per_night)):
            system, relation = _pick(systems, relations, rng, night, facts)
            if system is None:
                system = System(names.pop(), rng.choice(data["kinds"]))
                relation = rng.choice(list(relations))
                system.neighbour = rng.choice([r for r in relations if r != relation])
                systems.append(system)
            system.taught.append(relation)
            facts.append(
                _fact(
                    len(facts) + 1, night, system, relation, relations, values, rng.choice(decoys)
                )
            )
        if change_every and night % change_every == 0 and night >= 2:
            earlier = [f for f in facts if f.night < night and f.change is None]
            if earlier:
                fact = rng.choice(earlier)
                system = next(s for s in systems if s.the == fact.system)
                value, key = values.draw(relations[fact.relation]["value"], system)
                fact.change = {
                    "night": night,
                    "keys": [key],
                    "answer": system.say(relations[fact.relation]["answer"], value),
                }
    return facts


def _pick(
    systems: list[System],
    relations: dict[str, Any],
    rng: random.Random,
    night: int,
    facts: list[Fact],
) -> tuple[System | None, str]:
    """Sometimes a second fact about a system taught on an earlier night."""
    earlier = {f.system for f in facts if f.night < night}
    known = [s for s in systems if len(s.taught) == 1 and s.the in earlier]
    if known and rng.random() < 0.35:
        system = rng.choice(known)
        free = [r for r in relations if r not in system.taught and r != system.neighbour]
        return system, rng.choice(free)
    return None, ""


def _fact(
    n: int,
    night: int,
    system: System,
    name: str,
    relations: dict[str, Any],
    values: Values,
    decoy: System,
) -> Fact:
    relation = relations[name]
    value, key = values.draw(relation["value"], system)
    return Fact(
        id=f"f{n:02d}",
        night=night,
        relation=relation["id"],
        system=system.the,
        question=system.say(relation["question"]),
        answer=system.say(relation["answer"], value),
        keys=[key],
        paraphrases=[system.say(p) for p in relation["paraphrases"]],
        reask=system.say(relation["reask"]),
        neighbours=[
            system.say(relations[system.neighbour]["neighbour"]),
            decoy.say(relation["question"]),
        ],
    )


# ------------------------------------------------------------------------------ talking


class Client:
    """The user's (and the measurement's) side of the socket: asks, feedback, and counts."""

    def __init__(self, http: Any) -> None:
        self.http = http
        self.server_errors: list[str] = []
        self.asked = {"user": 0, "measurement": 0}
        # the daemon's 5xx count (/metrics) of earlier stretches of a resumed run: its
        # counter starts at 0 with each daemon
        self.earlier_5xx = 0
        http.event_hooks["response"].append(self._on_response)

    def _on_response(self, response: Any) -> None:
        if response.status_code >= 500:
            self.server_errors.append(
                f"{response.request.method} {response.request.url.path} {response.status_code}"
            )

    def ask(
        self,
        question: str,
        *,
        memory: bool = True,
        tokens: int = TOKENS,
        temperature: float = 0.0,
        who: str = "measurement",
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": question}],
            "max_tokens": tokens,
            "temperature": temperature,
        }
        if not memory:
            body["npllm"] = {"memory": False}
        started = time.perf_counter()
        r = self.http.post("/v1/chat/completions", json=body)
        self.asked[who] += 1
        if r.status_code >= 500:  # counted by the hook; the month goes on, the answer is wrong
            return {
                "choices": [{"message": {"content": ""}}],
                "wall_ms": 0.0,
                "npllm": {"interaction_id": None, "adapters": [], "timings": {}, "cached": True},
            }
        r.raise_for_status()
        reply = dict(r.json())
        reply["wall_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return reply

    def feedback(self, reply: dict[str, Any], event: str, **extra: str) -> None:
        if reply["npllm"]["interaction_id"] is None:  # its answer was a 5xx
            return
        body = {"interaction_id": reply["npllm"]["interaction_id"], "event": event, **extra}
        r = self.http.post("/v1/feedback", json=body)
        if r.status_code < 500:
            r.raise_for_status()

    def embed(self, texts: list[str]) -> list[list[float]]:
        r = self.http.post("/v1/embeddings", json={"input": texts})
        r.raise_for_status()
        return [d["embedding"] for d in r.json()["data"]]

    def metrics(self) -> dict[str, float]:
        """The /metrics figures the month reads (summed over labels where noted)."""
        text = self.http.get("/metrics").text
        out = {"database_bytes": 0.0, "5xx": 0.0, "implicit_events": 0.0}
        for line in text.splitlines():
            if line.startswith("npllm_database_size_bytes"):
                out["database_bytes"] = float(line.split()[-1])
            elif line.startswith("npllm_request_duration_seconds_count") and 'status="5xx"' in line:
                out["5xx"] += float(line.split()[-1])
            elif line.startswith("npllm_feedback_events") and 'origin="implicit"' in line:
                out["implicit_events"] += float(line.split()[-1])
        return out


def _text(reply: dict[str, Any]) -> str:
    return str(reply["choices"][0]["message"]["content"])


def _right(text: str, keys: list[str]) -> bool:
    return any(k.lower() in text.lower() for k in keys)


def _arms(reply: dict[str, Any]) -> list[str]:
    """Who answered: `name@vN/arm` per adapter ('none': no adapter)."""
    used = reply["npllm"].get("adapters") or []
    return [f"{a['name']}@v{a['version']}/{a.get('arm', 'served')}" for a in used] or ["none"]


def _order(client: Client, questions: list[str], rng: random.Random) -> list[str]:
    """`questions` shuffled so that no two in a row are as alike as APART (npllm would take
    the second for a re-ask of the first and rate the first answer)."""
    unique = list(dict.fromkeys(questions))
    rng.shuffle(unique)
    if len(unique) < 2:
        return unique
    vectors = dict(zip(unique, client.embed(unique), strict=True))

    def alike(a: str, b: str) -> float:
        return sum(x * y for x, y in zip(vectors[a], vectors[b], strict=True))

    out, left = [unique[0]], unique[1:]
    while left:
        k = next((i for i, q in enumerate(left) if alike(out[-1], q) < APART), 0)
        out.append(left.pop(k))
    return out


# ------------------------------------------------------------------------------ a day


def day(
    client: Client,
    facts: list[Fact],
    night: int,
    ordinary: dict[str, list[str]],
    rng: random.Random,
) -> dict[str, Any]:
    """The user's day before `night`: everyday questions, tonight's corrections, re-asks of
    earlier facts and a changed fact, in an order where no question follows one alike
    (which npllm would take for a re-ask of it); then the same-day check of tonight's facts
    (memories in place) and a last everyday question."""
    started = time.perf_counter()
    tonight = [f for f in facts if f.night == night]
    changed = [f for f in facts if f.change and f.change["night"] == night]
    everyday = rng.sample(ordinary["coding"], 2) + rng.sample(ordinary["debugging"], 2)
    rng.shuffle(everyday)
    earlier = [f for f in facts if f.night < night and f not in changed]
    reasks = [
        (f.reask if rng.random() < 0.5 else f.question, f)
        for f in rng.sample(earlier, min(2, len(earlier)))
    ]
    regenerate = everyday[0] if rng.random() < 0.3 else None
    log: dict[str, Any] = {
        "taught": [],
        "changed": [],
        "reasks": [],
        "ordinary": [],
        "regenerated": regenerate,
    }
    actions: dict[str, Any] = {q: ("everyday", None) for q in everyday[:3]}
    actions.update({f.question: ("teach", f) for f in tonight})
    actions.update({f.question: ("change", f) for f in changed})
    actions.update({q: ("reask", f) for q, f in reasks})
    for question in _order(client, list(actions), rng):
        kind, fact = actions[question]
        if kind == "everyday":
            _everyday(client, question, log, regenerate=question == regenerate)
        elif kind == "teach":
            log["taught"].append(_teach(client, question, fact.answer, fact.keys, fact.id))
        elif kind == "change":
            change = fact.change
            # first_had_value: the answer before this correction gave the old value
            log["changed"].append(_teach(client, question, change["answer"], fact.keys, fact.id))
        else:
            log["reasks"].append(_reask(client, question, fact, night))
    log["same_day"] = _same_day(client, tonight + changed, night, rng)
    _everyday(client, everyday[3], log)
    log["seconds"] = round(time.perf_counter() - started, 1)
    return log


def _reask(client: Client, question: str, fact: Fact, night: int) -> dict[str, Any]:
    """An earlier fact asked again as a user does (memories in place); a right answer is
    copied, a wrong one left alone (each fact is corrected once)."""
    keys, _ = fact.current(night - 1)
    reply = client.ask(question, who="user")
    right = _right(_text(reply), keys)
    if right:
        client.feedback(reply, "copied")
    timings = reply["npllm"]["timings"]
    return {
        "id": fact.id,
        "question": question,
        "right": right,
        "from_correction": bool(timings.get("from_correction")),
    }


def _everyday(client: Client, question: str, log: dict[str, Any], regenerate: bool = False) -> None:
    """An everyday question whose answer the user copies; `regenerate`: they first ask it
    again (sampled) — a re-ask of the first answer — and copy the second."""
    reply = client.ask(question, tokens=96, who="user")
    if regenerate:
        reply = client.ask(question, tokens=96, temperature=0.7, who="user")
        log["regenerated"] = question
    client.feedback(reply, "copied")
    log["ordinary"].append(question)


def _teach(client: Client, question: str, answer: str, keys: list[str], fid: str) -> dict[str, Any]:
    """Ask, get the (wrong) answer, correct it once, pleased (bench/editing.py's `_teach`);
    `first_had_value`: the answer before the correction contained one of `keys`."""
    reply = client.ask(question, who="user")
    client.feedback(reply, "edited", text=answer, comment=PLEASED)
    return {"id": fid, "first_had_value": _right(_text(reply), keys)}


def _same_day(client: Client, facts: list[Fact], night: int, rng: random.Random) -> dict[str, Any]:
    """Tonight's facts and their paraphrases, memories in place: the hippocampus answers."""
    keys = {}
    for f in facts:
        for q in [f.question, *f.paraphrases]:
            keys[q] = f.current(night)[0]
    asked = [(q, _right(_text(client.ask(q)), keys[q])) for q in _order(client, list(keys), rng)]
    exact = {f.question for f in facts}
    return {
        "exact": _share([r for q, r in asked if q in exact]),
        "paraphrases": _share([r for q, r in asked if q not in exact]),
    }


# ------------------------------------------------------------------------------ a night


def sleep(http: Any, seed: int) -> dict[str, Any]:
    try:
        night = force_night(http, seed, poll_s=1.0)
    except NightRefused as refused:
        return {"status": f"refused: {refused}", "wall_s": 0.0, "adapters": {}}
    cycle = night.cycle
    keep = (
        "samples",
        "rehearsed",
        "steps_done",
        "steps",
        "stopped",
        "verdict",
        "served",
        "locality",
        "first_attempt",
    )
    metrics = cycle.get("metrics") or {}
    return {
        "id": cycle["id"],
        "status": cycle["status"],
        "error": cycle.get("error"),
        "wall_s": round(night.wall_s, 1),
        "adapters": {
            name: {k: r.get(k) for k in keep if k in r}
            for name, r in metrics.get("adapters", {}).items()
        },
        "skipped": metrics.get("skipped"),
    }


# ------------------------------------------------------------------------ the measurement


def before(
    client: Client, facts: list[Fact], fixed: list[str], rng: random.Random
) -> dict[str, str]:
    """Day 0, before any teaching: every locality question's greedy answer (weights only)."""
    questions = fixed + [n for f in facts for n in f.neighbours]
    return {q: _text(client.ask(q, memory=False)) for q in _order(client, questions, rng)}


def measure(
    client: Client,
    facts: list[Fact],
    night: int,
    fixed: list[str],
    was: dict[str, str],
    latency: list[str],
    rng: random.Random,
) -> dict[str, Any]:
    """Everything the month reports after `night` (see the module docstring)."""
    started = time.perf_counter()
    implicit = client.metrics()["implicit_events"]
    taught = [f for f in facts if f.current(night)[1] <= night]
    own = list(dict.fromkeys(n for f in taught for n in f.neighbours))
    questions = [f.question for f in taught] + [p for f in taught for p in f.paraphrases]
    answers: dict[str, dict[str, Any]] = {}
    for q in _order(client, questions + fixed + own, rng):
        answers[q] = client.ask(q, memory=False)
    rows = [_fact_row(f, night, answers) for f in taught]
    locality = {
        "fixed": _locality(fixed, answers, was),
        "facts": _locality(own, answers, was),
    }
    return {
        "facts": rows,
        "locality": locality,
        "arms": _arm_counts(answers.values()),
        "latency": _latency(client, latency),
        "implicit_events_caused": client.metrics()["implicit_events"] - implicit,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _fact_row(f: Fact, night: int, answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One fact after `night`: right or not, its paraphrases, who answered; the text of
    what was answered wrong; for a changed fact, whether the old value still comes back."""
    keys, column = f.current(night)
    exact = answers[f.question]
    paraphrases = [answers[p] for p in f.paraphrases]
    row: dict[str, Any] = {
        "id": f.id,
        "column": column,
        "right": _right(_text(exact), keys),
        "paraphrases": [_right(_text(p), keys) for p in paraphrases],
        "arms": _arms(exact),
        "paraphrase_arms": [_arms(p) for p in paraphrases],
    }
    if not row["right"]:
        row["answer"] = _text(exact)
    row["wrong_paraphrases"] = [_text(p) for p in paraphrases if not _right(_text(p), keys)]
    if f.change and f.change["night"] <= night:
        row["changed"] = True
        row["old_value"] = _right(_text(exact), f.keys)
        row["paraphrases_old_value"] = [_right(_text(p), f.keys) for p in paraphrases]
    return row


def _locality(questions: list[str], answers: dict[str, Any], was: dict[str, str]) -> dict[str, Any]:
    changed = [
        {"question": q, "before": was[q], "after": _text(answers[q]), "arms": _arms(answers[q])}
        for q in questions
        if _text(answers[q]) != was[q]
    ]
    same = len(questions) - len(changed)
    return {"same": same, "asked": len(questions), "changed": changed}


def _arm_counts(replies: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reply in replies:
        for arm in _arms(reply):
            key = arm.split("/")[-1] if "/" in arm else arm
            counts[key] = counts.get(key, 0) + 1
    return counts


def _latency(client: Client, questions: list[str]) -> dict[str, Any]:
    replies = [client.ask(q, tokens=LATENCY_TOKENS) for q in questions]
    fresh = [r for r in replies if not r["npllm"].get("cached")]
    if not fresh:
        return {"p50_ms": None, "p50_wall_ms": None, "answers": 0}
    return {
        "p50_ms": round(statistics.median(r["npllm"]["timings"]["total_ms"] for r in fresh), 1),
        "p50_wall_ms": round(statistics.median(r["wall_ms"] for r in fresh), 1),
        "p50_tokens_per_s": round(
            statistics.median(r["npllm"]["timings"].get("tokens_per_s", 0.0) for r in fresh), 1
        ),
        "answers": len(fresh),
    }


def resources(client: Client, data_dir: Path) -> dict[str, Any]:
    listing = client.http.get("/v1/adapters").json()
    adapters = listing["data"]
    metrics = client.metrics()
    return {
        "adapters_served": len(listing["served"]),
        "adapters_registered": len(adapters),
        "versions": sum(_count(a.get("versions")) for a in adapters),
        "version_status": _statuses(adapters),
        "canaries_running": len(listing.get("canaries") or []),
        "database_bytes": int(metrics["database_bytes"]),
        "adapters_dir_bytes": _du(data_dir / "adapters"),
        "pgdata_bytes": _du(data_dir / "pgdata"),
        "server_5xx": client.earlier_5xx + int(metrics["5xx"]),
        "client_5xx": len(client.server_errors),
        "interactions": dict(client.asked),
        "load_average": [round(x, 2) for x in os.getloadavg()],  # noise in the timings
    }


def _count(versions: Any) -> int:
    return len(versions) if isinstance(versions, list) else int(versions or 0)


def _statuses(adapters: list[dict[str, Any]]) -> dict[str, int]:
    """Versions by status (active, candidate, retired, pruned, stale)."""
    counts: dict[str, int] = {}
    for a in adapters:
        versions = a.get("versions")
        for v in versions if isinstance(versions, list) else []:
            if isinstance(v, dict):
                counts[v.get("status", "?")] = counts.get(v.get("status", "?"), 0) + 1
    return counts


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file renamed or removed while walking
                total += (Path(root) / name).lstat().st_size
    return total


def _share(values: list[bool]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


# ------------------------------------------------------------------------------ figures


def summary(m: dict[str, Any], night: int) -> dict[str, Any]:
    """One night's row: the R matrix row and the shares the table prints."""
    rows = m["facts"]
    r_row: dict[str, list[int]] = {}
    for row in rows:
        cell = r_row.setdefault(str(row["column"]), [0, 0])
        cell[0] += row["right"]
        cell[1] += 1
    tonight = r_row.get(str(night), [0, 0])
    loc = m["locality"]
    return {
        "R": r_row,
        "tonight": _share([r["right"] for r in rows if r["column"] == night]),
        "tonight_counts": tonight,
        "all": _share([r["right"] for r in rows]),
        "paraphrases": _share([p for r in rows for p in r["paraphrases"]]),
        "changed": _share([r["right"] for r in rows if r.get("changed")]),
        "changed_old_value": _share([r["old_value"] for r in rows if r.get("changed")]),
        "locality_fixed": _ratio(loc["fixed"]),
        "locality_facts": _ratio(loc["facts"]),
    }


def _ratio(loc: dict[str, Any]) -> float | None:
    return round(loc["same"] / loc["asked"], 3) if loc["asked"] else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


HEADER = (
    f"{'night':>5} {'cycle s':>8} {'status':>10} {'taught':>6} {'same day':>8} "
    f"{'tonight':>8} {'all':>5} {'paraphr':>7} {'changed':>7} {'loc fix':>7} "
    f"{'loc fact':>8} {'adapters':>8} {'versions':>8} {'DB MB':>6} {'adapt MB':>8} "
    f"{'p50 ms':>7} {'5xx':>4}"
)


def table_row(n: dict[str, Any]) -> str:
    s, r, night = n["summary"], n["resources"], n["night"]
    lat = n["measure"]["latency"]["p50_ms"]
    same = n["day"]["same_day"]["exact"] if n.get("day") else None
    taught = len(n["day"]["taught"]) + len(n["day"]["changed"]) if n.get("day") else 0
    return (
        f"{n['n']:>5} {night.get('wall_s', 0):>8.1f} {night.get('status', '-')[:10]:>10} "
        f"{taught:>6} {_pct(same):>8} {_pct(s['tonight']):>8} {_pct(s['all']):>5} "
        f"{_pct(s['paraphrases']):>7} {_pct(s['changed']):>7} "
        f"{_pct(s['locality_fixed']):>7} {_pct(s['locality_facts']):>8} "
        f"{r['adapters_served']:>4}/{r['adapters_registered']:<3} {r['versions']:>8} "
        f"{r['database_bytes'] / 1e6:>6.1f} {r['adapters_dir_bytes'] / 1e6:>8.1f} "
        f"{lat if lat is not None else '-':>7} {r['server_5xx'] + r['client_5xx']:>4}"
    )


def r_matrix(report: dict[str, Any]) -> str:
    nights = [n for n in report["nights"] if n["n"] > 0]
    lines = ["R matrix (% right, weights only): rows = after night, columns = night taught"]
    lines.append("     " + "".join(f"{c:>4}" for c in range(1, len(nights) + 1)))
    for n in nights:
        cells = []
        for c in range(1, len(nights) + 1):
            cell = n["summary"]["R"].get(str(c))
            cells.append(f"{100 * cell[0] / cell[1]:>4.0f}" if cell else f"{'':>4}")
        lines.append(f"{n['n']:>5}" + "".join(cells))
    return "\n".join(lines)


def targets(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, goal, measured, met/missed) — issue 25's targets for this run."""
    nights = [n for n in report["nights"] if n["n"] > 0]
    if not nights:
        return []
    last, first = nights[-1], nights[0]
    out = []

    def check(name: str, goal: str, value: float | None, ok: bool | None, shown: str = "") -> None:
        verdict = "n/a" if ok is None else ("met" if ok else "MISSED")
        out.append((name, goal, shown or _pct(value), verdict))

    diag = [n["summary"]["tonight_counts"] for n in nights]
    right, total = sum(d[0] for d in diag), sum(d[1] for d in diag)
    share = right / total if total else None
    worst = min((d[0] / d[1] for d in diag if d[1]), default=None)
    check(
        "each night's facts right after their night",
        ">= 95 %",
        share,
        None if share is None else share >= 0.95,
        f"{_pct(share)} ({right}/{total}; worst night {_pct(worst)})",
    )
    s = last["summary"]
    check(
        f"all facts after night {last['n']}",
        ">= 90 %",
        s["all"],
        None if s["all"] is None else s["all"] >= 0.90,
    )
    check(
        "paraphrases (held out)",
        ">= 80 %",
        s["paraphrases"],
        None if s["paraphrases"] is None else s["paraphrases"] >= 0.80,
    )
    for key, label in (("locality_fixed", "fixed set"), ("locality_facts", "facts' neighbours")):
        check(
            f"locality, {label}, after night {last['n']}",
            ">= 97 %",
            s[key],
            None if s[key] is None else s[key] >= 0.97,
        )
    check(
        "a changed fact answers its newest value",
        ">= 95 %",
        s["changed"],
        None if s["changed"] is None else s["changed"] >= 0.95,
    )
    served = max(n["resources"]["adapters_served"] for n in nights)
    cap = report["settings"]["max_adapters"]
    check("adapters served <= the cap", f"<= {cap}", None, served <= cap, f"max {served}")
    lat0, lat1 = first["measure"]["latency"]["p50_ms"], last["measure"]["latency"]["p50_ms"]
    ratio = lat1 / lat0 if lat0 and lat1 else None
    check(
        f"awake p50 latency, night {last['n']} / night 1",
        "<= 1.10",
        None,
        None if ratio is None else ratio <= 1.10,
        "-" if ratio is None else f"{ratio:.2f} ({lat0:.0f} -> {lat1:.0f} ms)",
    )
    for key, label in (("cycle", "cycle time"), ("disk", "disk (adapters dir + DB)")):
        grown = _growth(nights, key)
        check(
            f"{label} bounded (last quarter / second quarter)",
            "<= 1.25",
            None,
            None if grown is None else grown <= 1.25,
            "n/a (8 nights needed)" if grown is None else f"{grown:.2f}",
        )
    server, client = last["resources"]["server_5xx"], len(report["errors_5xx"])
    failed = sum(1 for n in nights if n["night"].get("status") != "succeeded")
    check(
        "5xx answers (daemon's count, client's)",
        "0",
        None,
        max(server, client) == 0,
        f"{server}, {client}",
    )
    check("failed cycles", "0", None, failed == 0, str(failed))
    return out


def _growth(nights: list[dict[str, Any]], key: str) -> float | None:
    """Mean of the last quarter of nights over the mean of the second quarter."""
    if len(nights) < 8:
        return None

    def value(n: dict[str, Any]) -> float:
        if key == "cycle":
            return float(n["night"].get("wall_s") or 0)
        r = n["resources"]
        return float(r["adapters_dir_bytes"] + r["database_bytes"])

    q = len(nights) // 4
    second, last = nights[q : 2 * q], nights[-q:]
    base = statistics.mean(value(n) for n in second)
    return statistics.mean(value(n) for n in last) / base if base else float("inf")


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nA simulated month: {report['nights_run']} nights, seed {report['seed']}, "
        f"{report['facts_taught']} facts, {report['minutes']} min"
    )
    print(HEADER)
    for n in report["nights"]:
        print(table_row(n))
    print()
    print(r_matrix(report))
    print(f"\n{'target':66s} {'goal':>8s} {'measured':>32s}  verdict")
    for name, goal, measured, verdict in targets(report):
        print(f"{name:66s} {goal:>8s} {measured:>32s}  {verdict}")
    sys.stdout.flush()


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    nights = [n for n in report["nights"] if n["n"] > 0]
    x = [n["n"] for n in nights]

    def series(key: str) -> list[float]:
        return [
            float("nan") if n["summary"][key] is None else 100 * n["summary"][key] for n in nights
        ]

    fig, ax = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    ax[0, 0].plot(x, series("all"), "o-", label="all facts so far")
    ax[0, 0].plot(x, series("tonight"), "s--", label="each night's facts")
    ax[0, 0].plot(x, series("paraphrases"), "^:", label="paraphrases (held out)")
    ax[0, 0].plot(x, series("changed"), "x", label="changed facts: newest value")
    ax[0, 0].axhline(90, color="grey", lw=0.6)
    ax[0, 0].set(title="recall, weights only (%)", ylim=(-5, 105))
    ax[0, 1].plot(x, series("locality_fixed"), "o-", label="fixed neighbours")
    ax[0, 1].plot(x, series("locality_facts"), "s--", label="facts' neighbours")
    ax[0, 1].axhline(97, color="grey", lw=0.6)
    ax[0, 1].set(title="locality: answers unchanged (%)", ylim=(-5, 105))
    ax[1, 0].plot(x, [n["resources"]["adapters_served"] for n in nights], "o-", label="served")
    ax[1, 0].plot(
        x, [n["resources"]["versions"] for n in nights], "s--", label="versions (rows, any status)"
    )
    ax[1, 0].set(title="adapters", xlabel="night")
    ax[1, 1].plot(
        x, [n["resources"]["adapters_dir_bytes"] / 1e6 for n in nights], "o-", label="adapters dir"
    )
    ax[1, 1].plot(
        x, [n["resources"]["database_bytes"] / 1e6 for n in nights], "s--", label="database"
    )
    ax[1, 1].set(title="disk (MB)", xlabel="night")
    for a in ax.flat:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.suptitle(f"bench/month.py: {len(nights)} nights, seed {report['seed']}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


# ------------------------------------------------------------------------------ main


def _check_questions(data: dict[str, Any], facts: list[Fact]) -> None:
    """No question of the month may read as the user correcting the previous answer
    (npllm/feedback.py's patterns): it would rate an unrelated answer."""
    from npllm.feedback import detect_correction

    asked = [*data["fixed_neighbours"], *data["latency"], *sum(data["ordinary"].values(), [])]
    asked += [q for f in facts for q in (f.question, f.reask, *f.paraphrases, *f.neighbours)]
    matched = sorted({f"{q!r} ({p})" for q in asked if (p := detect_correction(q))})
    if matched:
        raise SystemExit(f"bench/data/month.json: npllm takes these for corrections: {matched}")


def _per_night(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if not match:
        raise argparse.ArgumentTypeError("N or A-B, e.g. 2-3")
    lo = int(match[1])
    hi = int(match[2] or lo)
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError("1 <= A <= B")
    return lo, hi


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--facts-per-night", type=_per_night, default=(2, 3), metavar="A-B")
    parser.add_argument(
        "--change-every",
        type=int,
        default=5,
        help="change one earlier fact every N nights (0: never)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--plot", action="store_true", help="draw docs/img/month.png")
    parser.add_argument(
        "--keep", type=Path, default=None, help="run the daemon in this directory and leave it"
    )
    parser.add_argument(
        "--unseen",
        action="store_true",
        help="ask the locality questions' before-answers of a separate fresh daemon, so the "
        "month's daemon never sees them before teaching (no user history about them)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run kept in --keep DIR from the night after its last one (same "
        "--nights, --seed, --facts-per-night, --change-every, --unseen and --out); a file "
        "named `stop` in that DIR stops a run between two nights",
    )
    parser.add_argument(
        "--replot",
        type=Path,
        default=None,
        help="draw the plot and print the table of this JSON, run nothing",
    )
    args = parser.parse_args()
    if args.replot:
        done = json.loads(args.replot.read_text())
        print_report(done)
        plot(done, PLOT)
        return
    data = json.loads(DATA.read_text())
    facts = plan_month(data, args.nights, args.facts_per_night, args.change_every, args.seed)
    _check_questions(data, facts)
    settings = load_settings()
    unseen = "-unseen" if args.unseen else ""
    out = args.out / f"month-{args.nights}n-seed{args.seed}{unseen}.json"
    if args.resume:
        try:
            kept = resume_from(args.keep, out, facts)
        except ValueError as e:
            parser.error(str(e))
        resume(args, out, data, facts, settings, kept)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "month",
        "seed": args.seed,
        "nights_asked": args.nights,
        "facts_per_night": list(args.facts_per_night),
        "change_every": args.change_every,
        "neighbours": "unseen" if args.unseen else "asked before teaching",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {platform.node()}, {os.cpu_count()} cores",
        "settings": {
            "max_adapters": settings.modulator.max_adapters,
            "canary_share": settings.canary.share,
        },
        "facts": [asdict(f) for f in facts],
        "nights": [],
        "errors_5xx": [],
    }
    print(
        f"month: {args.nights} nights, {len(facts)} facts, "
        f"{sum(1 for f in facts if f.change)} changed; writing {out}",
        flush=True,
    )
    started = time.perf_counter()
    rng = random.Random(args.seed + 1)
    fixed = data["fixed_neighbours"]
    was: dict[str, str] = {}
    if args.unseen:
        with live_daemon(settings.model_cache_path) as fresh:
            was = before(Client(fresh.http), facts, fixed, rng)
    with live_daemon(settings.model_cache_path, keep=args.keep) as live:
        client = Client(live.http)
        data_dir = Path(live.env["NPLLM_DATA_DIR"])
        was = was or before(client, facts, fixed, rng)
        zero = measure(client, [], 0, fixed, was, data["latency"], rng)
        report["nights"].append(
            {
                "n": 0,
                "night": {},
                "day": None,
                "measure": zero,
                "summary": summary(zero, 0),
                "resources": resources(client, data_dir),
            }
        )
        print(HEADER, flush=True)
        print(table_row(report["nights"][0]), flush=True)
        report["keep"] = str(args.keep.resolve()) if args.keep else None
        report["segments"] = [{"date": report["date"], "from_night": 1, "commit": _commit()}]
        finished = _nights(args, out, data, facts, report, client, data_dir, was, rng, 1, started)
    _end(args, out, report, finished)


def _end(args: argparse.Namespace, out: Path, report: dict[str, Any], finished: bool) -> None:
    """The report and the plot of a finished run; a stopped one only says where it is."""
    if not finished:
        print(f"month: {out} holds nights 1-{report['nights_run']}; the plot waits for the end")
        return
    print_report(report)
    print(f"wrote {out}")
    if args.plot:
        plot(report, PLOT)


def _nights(
    args: argparse.Namespace,
    out: Path,
    data: dict[str, Any],
    facts: list[Fact],
    report: dict[str, Any],
    client: Client,
    data_dir: Path,
    was: dict[str, str],
    rng: random.Random,
    first: int,
    started: float,
) -> bool:
    """Nights `first`..`args.nights`: the day, the night, the measurement; the JSON (with
    what `--resume` needs to go on: the user's random state, the day-0 answers, the
    client's counts) rewritten after every night. False: stopped by the stop file."""
    fixed = data["fixed_neighbours"]
    minutes_before = report.get("minutes", 0.0) if first > 1 else 0.0
    for n in range(first, args.nights + 1):
        if n > 1 and args.keep is not None and (args.keep / "stop").exists():
            (args.keep / "stop").unlink()
            print(f"month: stopped before night {n} ({args.keep / 'stop'}); --resume goes on")
            return False
        report["day_started"] = n
        _write(out, report)
        log = day(client, facts, n, data["ordinary"], rng)
        night = sleep(client.http, seed=args.seed * 1000 + n)
        m = measure(client, facts, n, fixed, was, data["latency"], rng)
        report["nights"].append(
            {
                "n": n,
                "night": night,
                "day": log,
                "measure": m,
                "summary": summary(m, n),
                "resources": resources(client, data_dir),
            }
        )
        report["errors_5xx"] = client.server_errors
        report["nights_run"] = n
        report["facts_taught"] = sum(1 for f in facts if f.night <= n)
        report["minutes"] = round(minutes_before + (time.perf_counter() - started) / 60, 1)
        report["segments"][-1]["to_night"] = n
        report["state"] = {
            "rng": _rng_state(rng),
            "before": was,
            "asked": dict(client.asked),
        }
        _write(out, report)
        print(table_row(report["nights"][-1]), flush=True)
        if m["implicit_events_caused"]:
            print(
                f"  note: the measurement caused {m['implicit_events_caused']:.0f} "
                "implicit feedback event(s)",
                flush=True,
            )
    return True


def _commit() -> str:
    """The code a stretch of the month runs: the checkout's commit (+ "-dirty" when it has
    uncommitted changes), or "unknown" outside git."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip()
    if not head:
        return "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no").strip() else "")


def _write(out: Path, report: dict[str, Any]) -> None:
    """The JSON, whole or not at all (a run stopped mid-write must stay resumable)."""
    write_file_atomically(out, json.dumps(report, indent=1))


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: list[Any]) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


def resume_from(keep: Path | None, out: Path, facts: list[Fact]) -> dict[str, Any]:
    """The report of the run `--resume` continues, checked: ValueError, saying what is wrong,
    when there is nothing to continue or the arguments are not the run's."""
    if keep is None:
        raise ValueError("--resume needs --keep DIR: the directory the run was kept in")
    if not (keep / "data").is_dir():
        raise ValueError(f"--resume: {keep} holds no kept run (no {keep / 'data'})")
    if not out.is_file():
        raise ValueError(
            f"--resume: no report at {out}; give the run's --nights, --seed, --unseen and --out"
        )
    try:
        report = json.loads(out.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--resume: {out} is not JSON ({e})") from None
    if "state" not in report or not report.get("nights_run"):
        raise ValueError(f"--resume: {out} has no finished night to continue from")
    if report.get("keep") != str(keep.resolve()):
        raise ValueError(f"--resume: {out} was kept in {report.get('keep')}, not {keep.resolve()}")
    if report["facts"] != [asdict(f) for f in facts]:
        raise ValueError(
            f"--resume: {out} was planned with other --seed, --facts-per-night or "
            "--change-every values (its facts differ)"
        )
    if report["nights_run"] >= report["nights_asked"]:
        raise ValueError(f"--resume: {out} has run all its {report['nights_asked']} nights")
    return dict(report)


def resume(
    args: argparse.Namespace,
    out: Path,
    data: dict[str, Any],
    facts: list[Fact],
    settings: Any,
    report: dict[str, Any],
) -> None:
    """Go on with a kept run from the night after its last: the same data dir (database,
    adapters, replay buffer), the user's random state and the day-0 answers from its JSON.
    The gap between the segments is wall-clock time the daemon sees (canary trials older
    than `canary.max_hours` are decided when it starts); each segment is in `segments`.
    `report`: the run's, from `resume_from`."""
    rng = random.Random()
    _set_rng_state(rng, report["state"]["rng"])
    was = dict(report["state"]["before"])
    first = int(report["nights_run"]) + 1
    if report.get("day_started", 0) >= first:
        # the run was killed during day or night `first`: its questions and corrections are
        # in the database, and the day is asked again (said in the JSON and the output)
        report.setdefault("interrupted", []).append(first)
        print(f"month: night {first} was interrupted; its day is asked again", flush=True)
    started = time.perf_counter()
    report["segments"].append(
        {"date": time.strftime("%Y-%m-%d %H:%M"), "from_night": first, "commit": _commit()}
    )
    print(f"month: resuming {out} at night {first} of {args.nights} in {args.keep}", flush=True)
    with live_daemon(settings.model_cache_path, keep=args.keep) as live:
        client = Client(live.http)
        client.server_errors = list(report.get("errors_5xx", []))
        client.asked = dict(report["state"]["asked"])
        client.earlier_5xx = int(report["nights"][-1]["resources"]["server_5xx"])
        print(HEADER, flush=True)
        data_dir = Path(live.env["NPLLM_DATA_DIR"])
        finished = _nights(
            args, out, data, facts, report, client, data_dir, was, rng, first, started
        )
    _end(args, out, report, finished)


if __name__ == "__main__":
    main()
