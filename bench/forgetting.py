"""Benchmark: learning without forgetting, over three "nights" of made-up facts, taught the
way a person teaches: one example per fact.

    .venv/bin/python bench/forgetting.py [--seeds 0 1 2] [--facts 3] [--examples-per-fact 1]
        [--arms ...] [--lambdas 0.001 0.01 0.1] [--set training.KEY=VALUE ...]
        [--set sleep.KEY=VALUE ...] [--jobs 2] [--out bench/results]

Each night brings `--facts` new facts about invented things (seeded: a port, an author, a
release year, an implementation language), each with 4 paraphrases of its question; a
fact is taught with its first `--examples-per-fact` paraphrases (default 1: a person
corrects a wrong answer once) and the 4th is never trained (held out). One LoRA adapter on
the real base LLM is trained night after night with the project's own trainer
(consolidation/trainer.py: the shipped step budget, stopping once every taught answer is
reproduced exactly) and MAS (consolidation/mas.py), with the shipped training.* and
sleep.* settings unless `--set` changes them, and the serving system prompt. After every
night, every night's facts are asked (greedy); a fact is recalled when its answer contains
the value (exact match of the value's text), which fills the 3×3 matrix
R[after night t][facts of night i]. Nothing is retrieved: only the weights answer.

Arms: naive (sequential LoRA), mas, rehearsal (what the cycle does without MAS: a bounded
share of earlier examples, sleep.rehearsal_ratio per new one, at most sleep.max_rehearsal,
the least rehearsed first), **mas+rehearsal (what the sleep cycle does; shipped)**, the
same with the dense Ω of earlier versions (``mas+rehearsal/dense``: the figure the
factored Ω is judged against), replay-all (MAS and every earlier example, the previous
cycle), and joint (a fresh adapter on everything so far). Reported per arm, mean ± sd over
seeds: ACC (mean of the last row), BWT (Lopez-Paz & Ranzato 2017: mean of R[T,i] − R[i,i]
over i < T), forgetting (Chaudhry et al. 2018: mean of max_{l<T} R[l,i] − R[T,i]), the
diagonal (recall right after each night), held-out-paraphrase recall (last row),
perplexity drift on fixed generic sentences (adapter vs the bare base, after the last
night), **locality** (CounterFact's: the share of 20 fixed unrelated questions whose greedy
24-token answer is unchanged from the bare base's after the last night — routed, as the
daemon serves: the modulator sends a question to the adapter only when it is like the
adapter's training questions; and always on, the adapter applied to every question),
training seconds per night and throughput. Then a λ sweep of the shipped arm (first
seed). Prints tables, writes JSON and a PNG (R matrices and the λ sweep).

Night 1 is the same for every arm (a fresh adapter on the first night's examples, no
earlier data, no importance yet), so it is trained once per seed and every arm continues
from it. The (seed, arm) runs are spread over `--jobs` worker processes, each with its
own copy of the model and cores / jobs torch threads: on 2 cores, two one-thread workers
train ~1.45× faster than one two-thread process (small matrices parallelise poorly).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from consolidation import mas  # noqa: E402
from consolidation.trainer import encode_example, train_adapter  # noqa: E402
from npllm.adapters import AdapterShape  # noqa: E402
from npllm.config import ModulatorConfig, SleepConfig, TrainingConfig, load_settings  # noqa: E402
from npllm.embeddings import load_embedder  # noqa: E402
from npllm.llm import load_base_llm  # noqa: E402
from npllm.modulator import Modulator  # noqa: E402

NIGHTS = 3
PARAPHRASES = 4  # the last one is held out
KINDS: list[tuple[list[str], str, str]] = [
    (
        [
            "What port does the {e} server listen on?",
            "Which port is the {e} server on?",
            "On which port can I reach the {e} server?",
            "Tell me the port number of the {e} server.",
        ],
        "The {e} server listens on port {v}.",
        "port",
    ),
    (
        [
            "Who wrote the {e} library?",
            "Who is the author of the {e} library?",
            "Which person created the {e} library?",
            "Who made the {e} library?",
        ],
        "The {e} library was written by {v}.",
        "author",
    ),
    (
        [
            "In which year was the {e} protocol released?",
            "When was the {e} protocol first released?",
            "What year did the {e} protocol come out?",
            "Which year saw the release of the {e} protocol?",
        ],
        "The {e} protocol was released in {v}.",
        "year",
    ),
    (
        [
            "Which language is the {e} compiler written in?",
            "What programming language was used for the {e} compiler?",
            "In what language is the {e} compiler implemented?",
            "The {e} compiler is written in which language?",
        ],
        "The {e} compiler is written in {v}.",
        "language",
    ),
]
SURNAMES = ["Okonkwo", "Haldorsen", "Vilanova", "Tsukamoto", "Brennagh", "Ilunga", "Marchetti",
            "Ferreira", "Kowalczyk", "Abernethy", "Lindqvist", "Oyelaran"]  # fmt: skip
LANGUAGES = ["Zig", "OCaml", "Erlang", "Fortran", "Ada", "Nim", "Crystal", "Elixir", "Pascal",
             "Haskell", "Lua", "Prolog"]  # fmt: skip
GENERIC = [
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "A list in Python can hold items of different types.",
    "The meeting was moved to Thursday afternoon because of the holiday.",
    "Binary search finds an item in a sorted array in logarithmic time.",
    "She opened the window to let some fresh air into the room.",
    "HTTP status code 404 means that the requested resource was not found.",
    "The train to the city leaves every twenty minutes on weekdays.",
]
# Locality: questions no night teaches, whose greedy answers must not change.
LOCAL = [
    "How do I reverse a list in Python?", "What is a Python decorator?",
    "Explain what a race condition is.", "How do I read a file line by line in Python?",
    "What does git rebase do?", "What is the difference between a list and a tuple?",
    "How do I make an HTTP request in Python?", "What is a foreign key in SQL?",
    "Write a function that checks if a number is prime.", "What is Big O notation?",
    "How do I install a package with pip?", "What is a segmentation fault?",
    "How can I merge two dictionaries in Python?", "What is the purpose of a Dockerfile?",
    "Explain recursion briefly.", "How do I create a virtual environment?",
    "What is a REST API?", "What does the yield keyword do?",
    "How do I sort a list of dicts by a key?", "What is the capital of France?",
]  # fmt: skip
# mas: MAS on; old: which earlier examples a night trains with ("none", "rehearsal": the
# cycle's bounded share, "all"); omega: "factored" (shipped) or "dense"; joint: a fresh
# adapter on everything so far.
ARMS: dict[str, dict[str, Any]] = {
    "naive": {"mas": False, "old": "none"},
    "mas": {"mas": True, "old": "none"},
    "rehearsal": {"mas": False, "old": "rehearsal"},
    "mas+rehearsal": {"mas": True, "old": "rehearsal"},
    "mas+rehearsal/dense": {"mas": True, "old": "rehearsal", "omega": "dense"},
    "replay-all": {"mas": True, "old": "all"},
    "joint": {"mas": False, "old": "all", "joint": True},
}
SHIPPED = "mas+rehearsal"


@dataclass
class Fact:
    questions: list[str]  # PARAPHRASES of the question; the last is held out
    answer: str
    value: str

    def examples(self, n: int) -> list[list[dict[str, str]]]:
        """The fact taught with its first `n` paraphrases (1: one correction)."""
        return [
            [{"role": "user", "content": q}, {"role": "assistant", "content": self.answer}]
            for q in self.questions[:n]
        ]


def _entity(rng: random.Random, taken: set[str]) -> str:
    syllables = ["qua", "vex", "blo", "tar", "zin", "mor", "kel", "dra", "pli", "sno", "vur", "gax"]
    while True:
        name = "".join(rng.sample(syllables, 3)).capitalize()
        if name not in taken:
            taken.add(name)
            return name


def make_nights(seed: int, facts: int) -> list[list[Fact]]:
    """NIGHTS lists of `facts` made-up facts; values are unique across all nights."""
    rng = random.Random(seed)
    taken: set[str] = set()
    used: set[str] = set()
    surnames, languages = rng.sample(SURNAMES, len(SURNAMES)), rng.sample(LANGUAGES, len(LANGUAGES))
    nights = []
    for night in range(NIGHTS):
        batch = []
        for k in range(facts):
            questions, answer, kind = KINDS[(night * facts + k) % len(KINDS)]
            entity = _entity(rng, taken)
            while True:
                if kind == "port":
                    value = str(rng.randint(2000, 9999))
                elif kind == "year":
                    value = str(rng.randint(1961, 2019))
                elif kind == "author":
                    value = surnames.pop()
                else:
                    value = languages.pop()
                if value not in used:
                    used.add(value)
                    break
            batch.append(
                Fact(
                    [q.format(e=entity) for q in questions],
                    answer.format(e=entity, v=value),
                    value,
                )
            )
        nights.append(batch)
    return nights


@torch.no_grad()
def answers(
    model: Any, tokenizer: Any, system: str, questions: list[str], max_new_tokens: int = 24
) -> list[str]:
    """Greedy answers to `questions` with the serving system prompt, one left-padded batch."""
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": q}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for q in questions
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
    )  # (n, prompt + new)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


@torch.no_grad()
def perplexity(model: Any, tokenizer: Any) -> float:
    losses = []
    for sentence in GENERIC:
        ids = torch.tensor([tokenizer.encode(sentence)])  # (1, seq)
        losses.append(float(model(input_ids=ids, labels=ids).loss))
    return math.exp(sum(losses) / len(losses))


def recall(
    model: Any, tokenizer: Any, system: str, nights: list[list[Fact]]
) -> tuple[list[float], list[float]]:
    """Per night: share of facts recalled on the taught question, and on the held-out one."""
    facts = [f for night in nights for f in night]
    said = answers(
        model, tokenizer, system,
        [f.questions[0] for f in facts] + [f.questions[-1] for f in facts],
    )  # fmt: skip
    trained, held = said[: len(facts)], said[len(facts) :]
    per, out_trained, out_held = len(nights[0]), [], []
    for i in range(len(nights)):
        rows = range(i * per, (i + 1) * per)
        out_trained.append(sum(facts[k].value in trained[k] for k in rows) / per)
        out_held.append(sum(facts[k].value in held[k] for k in rows) / per)
    return out_trained, out_held


def locality(
    model: Any, w: dict[str, Any], taught: list[list[dict[str, str]]]
) -> tuple[float, float]:
    """(routed, always on): shares of LOCAL whose greedy answer is the bare base's. Routed:
    the modulator, with the adapter's centroid (the mean of its training questions, as the
    cycle computes it), decides per question whether the adapter answers."""
    always = answers(model, w["llm"].tokenizer, w["system"], LOCAL)
    questions = [m[-2]["content"] for m in taught]
    mean = np.asarray(w["embedder"].embed(questions)).mean(axis=0)
    router = Modulator(w["modulator"])
    router.set_adapters({"adapter": mean / np.linalg.norm(mean)})
    routed = [
        a if router.decide(e).chosen else b
        for a, b, e in zip(always, w["base_local"], w["local_vectors"], strict=True)
    ]
    same = [a == b for a, b in zip(always, w["base_local"], strict=True)]
    routed_same = [a == b for a, b in zip(routed, w["base_local"], strict=True)]
    return sum(routed_same) / len(LOCAL), sum(same) / len(LOCAL)


@dataclass
class ArmRun:
    R: list[list[float]] = field(default_factory=list)
    held_out: list[list[float]] = field(default_factory=list)
    ppl_base: float = 0.0
    ppl_after: float = 0.0
    train_tokens: int = 0
    train_seconds: float = 0.0
    night_seconds: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    locality_routed: float = 0.0
    locality_always: float = 0.0

    def scores(self) -> dict[str, float]:
        t = len(self.R) - 1
        last = self.R[t]
        earlier = range(t)
        return {
            "acc": statistics.mean(last),
            "bwt": statistics.mean(last[i] - self.R[i][i] for i in earlier),
            "forgetting": statistics.mean(
                max(self.R[lv][i] for lv in range(i, t)) - last[i] for i in earlier
            ),
            "just_learned": statistics.mean(self.R[i][i] for i in range(t + 1)),
            "held_out": statistics.mean(self.held_out[t]),
            "ppl_drift": self.ppl_after / self.ppl_base - 1,
            "locality_routed": self.locality_routed,
            "locality_always": self.locality_always,
            "night_s": statistics.mean(self.night_seconds),
            "steps": statistics.mean(self.steps),
            "tokens_per_s": self.train_tokens / self.train_seconds if self.train_seconds else 0,
        }


@dataclass
class FirstNight:
    """Night 1, shared by every arm of a seed."""

    path: Path
    trained: list[float]
    held: list[float]
    tokens: int
    seconds: float
    steps: int
    ppl_base: float
    model_id: str


def _train_night(
    w: dict[str, Any],
    config: TrainingConfig,
    data: list[list[dict[str, str]]],
    out: Path,
    seed: int,
    init: Path | None,
    omega: mas.Matrices | None,
) -> tuple[int, float, int]:
    """Train one night into `out` (the shipped budget, stopping once every example is
    reproduced exactly); (tokens trained on, seconds, steps)."""
    llm = w["llm"]
    result = train_adapter(
        llm.model, llm.tokenizer, data, config, w["shape"], out, w["system"],
        seed=seed, init_from=init, omega=omega,
    )  # fmt: skip
    return result.tokens, result.seconds, len(result.losses)


def first_night(
    w: dict[str, Any], config: TrainingConfig, nights: list[list[Fact]], seed: int,
    per_fact: int, work: Path,
) -> FirstNight:  # fmt: skip
    from peft import PeftModel

    llm = w["llm"]
    new = [e for f in nights[0] for e in f.examples(per_fact)]
    out = work / f"seed{seed}-night0"
    tokens, seconds, steps = _train_night(w, config, new, out, seed * 100, None, None)
    model = PeftModel.from_pretrained(llm.model, str(out))
    model.eval()
    trained, held = recall(model, llm.tokenizer, w["system"], nights)
    model.unload()
    ppl_base = perplexity(llm.model, llm.tokenizer)
    return FirstNight(out, trained, held, tokens, seconds, steps, ppl_base, llm.model_id)


def _importance(
    w: dict[str, Any],
    model: Any,
    examples: list[list[dict[str, str]]],
    omega: mas.Matrices | None,
    dense: bool,
) -> mas.Matrices:
    """`omega` plus the MAS importance of what `model` learned from `examples`."""
    encoded = [encode_example(w["llm"].tokenizer, m, w["system"], 512)[0] for m in examples]
    return mas.accumulate(omega, mas.importance(model, "default", encoded, factored=not dense))


def _rehearse(
    old: list[list[dict[str, str]]], times: dict[int, int], new: int, sleep: SleepConfig,
    rng: random.Random,
) -> list[list[dict[str, str]]]:  # fmt: skip
    """The cycle's bounded rehearsal: ceil(rehearsal_ratio × new) earlier examples, at most
    max_rehearsal, drawn with weight 1 / (1 + times rehearsed) as the replay priority does
    (Efraimidis–Spirakis keys)."""
    budget = min(math.ceil(sleep.rehearsal_ratio * new), sleep.max_rehearsal, len(old))
    keys = sorted(
        range(len(old)), key=lambda k: math.log(rng.random()) * (1 + times.get(k, 0)),
        reverse=True,
    )  # fmt: skip
    chosen = keys[:budget]
    for k in chosen:
        times[k] = times.get(k, 0) + 1
    return [old[k] for k in chosen]


def run_arm(
    w: dict[str, Any],
    config: TrainingConfig,
    arm: dict[str, Any],
    nights: list[list[Fact]],
    seed: int,
    per_fact: int,
    work: Path,
    first: FirstNight,
) -> ArmRun:
    """Nights 2.. of one arm, continuing from the shared night 1."""
    from peft import PeftModel

    llm = w["llm"]
    rng = random.Random(seed)
    tokenizer = llm.tokenizer
    dense = arm.get("omega") == "dense"
    run = ArmRun(
        R=[first.trained], held_out=[first.held], ppl_base=first.ppl_base,
        train_tokens=first.tokens, train_seconds=first.seconds,
        night_seconds=[first.seconds], steps=[first.steps],
    )  # fmt: skip
    previous = first.path
    omega: mas.Matrices | None = None
    if arm["mas"]:  # importance of what night 1 learned
        model = PeftModel.from_pretrained(llm.model, str(previous))
        night1 = [e for f in nights[0] for e in f.examples(per_fact)]
        omega = _importance(w, model, night1, None, dense)
        model.unload()
    times: dict[int, int] = {}
    for t in range(1, len(nights)):
        new = [e for f in nights[t] for e in f.examples(per_fact)]
        old = [e for n in nights[:t] for f in n for e in f.examples(per_fact)]
        if arm.get("joint"):
            data, init = new + old, None
        elif arm["old"] == "all":
            data, init = new + old, previous
        elif arm["old"] == "rehearsal":
            data, init = new + _rehearse(old, times, len(new), w["sleep"], rng), previous
        else:
            data, init = new, previous
        out = work / f"night{t}"
        tokens, seconds, steps = _train_night(w, config, data, out, seed * 100 + t, init,
                                              None if arm.get("joint") else omega)  # fmt: skip
        run.train_tokens += tokens
        run.train_seconds += seconds
        run.night_seconds.append(seconds)
        run.steps.append(steps)
        model = PeftModel.from_pretrained(llm.model, str(out))
        model.eval()
        if arm["mas"]:
            omega = _importance(w, model, new, omega, dense)
        trained, held = recall(model, tokenizer, w["system"], nights)
        run.R.append(trained)
        run.held_out.append(held)
        if t == len(nights) - 1:
            run.ppl_after = perplexity(model, tokenizer)
            taught = [e for n in nights for f in n for e in f.examples(per_fact)]
            run.locality_routed, run.locality_always = locality(model, w, taught)
        model.unload()
        previous = out
    return run


# ---- worker processes: each holds its own copy of the base model ------------------------

_WORKER: dict[str, Any] = {}


def _start_worker(threads: int, training: dict[str, Any], sleep: dict[str, Any]) -> None:
    torch.set_num_threads(threads)
    settings = load_settings()
    config = TrainingConfig.model_validate(training)
    llm = load_base_llm(settings)
    embedder = load_embedder(settings)
    system = settings.memory.system_prompt
    _WORKER.update(
        llm=llm,
        embedder=embedder,
        config=config,
        sleep=SleepConfig.model_validate(sleep),
        shape=AdapterShape.from_config(config),
        system=system,
        modulator=ModulatorConfig.model_validate(settings.modulator.model_dump()),
        base_local=answers(llm.model, llm.tokenizer, system, LOCAL),
        local_vectors=np.asarray(embedder.embed(LOCAL)),
    )


def _first_job(seed: int, facts: int, per_fact: int, work: Path) -> FirstNight:
    w = _WORKER
    return first_night(w, w["config"], make_nights(seed, facts), seed, per_fact, work)


def _arm_job(
    arm: str, seed: int, facts: int, per_fact: int, work: Path, first: FirstNight,
    lam: float | None = None,
) -> tuple[ArmRun, float]:  # fmt: skip
    w = _WORKER
    config = w["config"] if lam is None else w["config"].model_copy(update={"mas_lambda": lam})
    started = time.perf_counter()
    run = run_arm(w, config, ARMS[arm], make_nights(seed, facts), seed, per_fact, work, first)
    return run, time.perf_counter() - started


class _Inline:
    """--jobs 1: the same jobs, in this process."""

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self) -> None:
        pass


def _fmt(values: list[float], pct: bool = True) -> str:
    scale = 100 if pct else 1
    mean = statistics.mean(values) * scale
    sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:6.1f} ± {sd:4.1f}"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report["arms"])
    fig, axes = plt.subplots(1, len(arms) + 1, figsize=(3 * (len(arms) + 1), 3.2))
    for ax, arm in zip(axes, arms, strict=False):
        mean_r = report["arms"][arm]["R_mean"]
        ax.imshow(mean_r, vmin=0, vmax=1, cmap="viridis")
        for i, row in enumerate(mean_r):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("facts of night")
        ax.set_ylabel("after night")
        ax.set_xticks(range(NIGHTS), [str(i + 1) for i in range(NIGHTS)])
        ax.set_yticks(range(NIGHTS), [str(i + 1) for i in range(NIGHTS)])
    ax = axes[-1]
    sweep = report.get("lambda_sweep", {})
    if sweep:
        lambdas = sorted(sweep, key=float)
        ax.plot([float(x) for x in lambdas], [sweep[x]["acc"] for x in lambdas], "o-", label="ACC")
        ax.plot([float(x) for x in lambdas], [sweep[x]["bwt"] for x in lambdas], "s-", label="BWT")
        ax.set_xscale("log")
        ax.set_title(f"λ sweep ({SHIPPED})", fontsize=9)
        ax.set_xlabel("mas_lambda")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--facts", type=int, default=3, help="new facts per night")
    parser.add_argument(
        "--examples-per-fact", type=int, default=1, choices=range(1, PARAPHRASES),
        help="paraphrases each fact is taught with (1: one correction, as a person teaches)",
    )  # fmt: skip
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--lambdas", type=float, nargs="*", default=[0.001, 0.01, 0.1])
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (each a model)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    settings = load_settings()
    overrides: dict[str, dict[str, Any]] = {"training": {}, "sleep": {}}
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in overrides or not name or not value:
            parser.error(f"--set takes training.KEY=VALUE or sleep.KEY=VALUE, got {item!r}")
        overrides[section][name] = value
    config = TrainingConfig.model_validate(
        {**settings.training.model_dump(), **overrides["training"]}
    )
    sleep = SleepConfig.model_validate({**settings.sleep.model_dump(), **overrides["sleep"]})
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    init = (threads, config.model_dump(), sleep.model_dump())
    pool: Any
    if args.jobs == 1:
        _start_worker(*init)
        pool = _Inline()
    else:
        pool = ProcessPoolExecutor(
            args.jobs, multiprocessing.get_context("spawn"), _start_worker, init
        )
    per_fact = args.examples_per_fact
    started = time.perf_counter()
    runs: dict[str, list[ArmRun]] = {arm: [] for arm in args.arms}
    sweep: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="npllm-forgetting-") as tmp:
        work = Path(tmp)
        firsts = {
            pool.submit(_first_job, seed, args.facts, per_fact, work): seed for seed in args.seeds
        }
        first: dict[int, FirstNight] = {}
        jobs: dict[tuple[str, int], Future[tuple[ArmRun, float]]] = {}
        swept: dict[float, Future[tuple[ArmRun, float]]] = {}
        for done in as_completed(firsts):  # a seed's arms start when its night 1 is done
            seed = firsts[done]
            first[seed] = done.result()
            for arm in args.arms:
                work_dir = work / f"{arm.replace('/', '-')}-{seed}"
                jobs[(arm, seed)] = pool.submit(
                    _arm_job, arm, seed, args.facts, per_fact, work_dir, first[seed]
                )
            if seed != args.seeds[0]:
                continue
            for lam in args.lambdas:  # the λ sweep of the shipped arm, on the first seed
                if lam == config.mas_lambda and SHIPPED in args.arms:
                    continue  # that is the arm's own run
                work_dir = work / f"sweep-{lam}"
                swept[lam] = pool.submit(
                    _arm_job, SHIPPED, seed, args.facts, per_fact, work_dir, first[seed], lam
                )
        order = [(arm, seed) for seed in args.seeds for arm in args.arms]
        for arm, seed in order:
            run, seconds = jobs[(arm, seed)].result()
            runs[arm].append(run)
            s = run.scores()
            print(
                f"seed {seed} {arm:20s} ACC {s['acc']:.2f} BWT {s['bwt']:+.2f} "
                f"diag {s['just_learned']:.2f} held-out {s['held_out']:.2f} "
                f"drift {s['ppl_drift']:+.3f} locality {s['locality_routed']:.2f}/"
                f"{s['locality_always']:.2f} ({seconds:.0f} s after night 1)",
                flush=True,
            )
        for lam in args.lambdas:
            if lam in swept:
                sweep[str(lam)] = swept[lam].result()[0].scores()
            elif SHIPPED in runs and runs[SHIPPED]:
                sweep[str(lam)] = runs[SHIPPED][0].scores()
            if str(lam) in sweep:
                print(f"λ = {lam:g}: {sweep[str(lam)]}", flush=True)
        pool.shutdown()

    report: dict[str, Any] = {
        "benchmark": "forgetting",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {args.jobs} workers x {threads} torch threads",
        "base_model": first[args.seeds[0]].model_id,
        "training": config.model_dump(),
        "sleep": sleep.model_dump(),
        "facts_per_night": args.facts,
        "examples_per_fact": per_fact,
        "seeds": args.seeds,
        "seconds": round(time.perf_counter() - started, 1),
        "ppl_base": first[args.seeds[0]].ppl_base,
        "arms": {},
        "lambda_sweep": sweep,
    }
    keys = ["acc", "bwt", "forgetting", "just_learned", "held_out", "ppl_drift",
            "locality_routed", "locality_always", "night_s", "steps", "tokens_per_s"]  # fmt: skip
    heads = ["ACC %", "BWT pts", "forget pts", "just learned %", "held-out %", "ppl drift %",
             "local. routed %", "local. always %"]  # fmt: skip
    print(f"\n{'arm':20s} " + " ".join(f"{h:>15s}" for h in heads)
          + f" {'night s':>8s} {'steps':>6s}")  # fmt: skip
    for arm, arm_runs in runs.items():
        scores = [r.scores() for r in arm_runs]
        mean_r = [
            [statistics.mean(r.R[i][j] for r in arm_runs) for j in range(NIGHTS)]
            for i in range(NIGHTS)
        ]
        report["arms"][arm] = {
            "R_mean": mean_r,
            "runs": [{"R": r.R, "held_out": r.held_out, **r.scores()} for r in arm_runs],
            **{
                k: {
                    "mean": statistics.mean(s[k] for s in scores),
                    "sd": statistics.stdev([s[k] for s in scores]) if len(scores) > 1 else 0.0,
                }
                for k in keys
            },
        }
        cols = [_fmt([s[k] for s in scores]) for k in keys[:8]]
        night = statistics.mean(s["night_s"] for s in scores)
        steps = statistics.mean(s["steps"] for s in scores)
        print(f"{arm:20s} " + " ".join(f"{c:>15s}" for c in cols) + f" {night:8.1f} {steps:6.1f}")
    if SHIPPED in report["arms"]:
        a = report["arms"]
        targets = {
            "each night >= 90% right after it": min(
                min(r["R"][i][i] for i in range(NIGHTS)) for r in a[SHIPPED]["runs"]
            )
            >= 0.9,  # fmt: skip
            "BWT >= -5 points": a[SHIPPED]["bwt"]["mean"] >= -0.05,
            "perplexity drift <= 5%": a[SHIPPED]["ppl_drift"]["mean"] <= 0.05,
            "locality (routed) >= 95%": a[SHIPPED]["locality_routed"]["mean"] >= 0.95,
        }
        if "joint" in a:
            targets["ACC within 5 points of joint"] = (
                a[SHIPPED]["acc"]["mean"] >= a["joint"]["acc"]["mean"] - 0.05
            )
        if "mas+rehearsal/dense" in a:
            dense = a["mas+rehearsal/dense"]
            targets["factored Ω: ACC and BWT no worse than dense"] = (
                a[SHIPPED]["acc"]["mean"] >= dense["acc"]["mean"]
                and a[SHIPPED]["bwt"]["mean"] >= dense["bwt"]["mean"]
            )
        report["targets"] = targets
        print(f"\ntargets for the shipped default ({SHIPPED}):")
        for name, ok in targets.items():
            print(f"  {'met    ' if ok else 'NOT met'}  {name}")
    print(f"\n{report['seconds']:.0f} s in all")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "forgetting.json"
    out.write_text(json.dumps(report, indent=2))
    png = args.out / "forgetting.png"
    _plot(report, png)
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
