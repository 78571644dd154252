"""Benchmark: learning without forgetting, over three "nights" of made-up facts.

    .venv/bin/python bench/forgetting.py [--seeds 0 1 2] [--facts 3] [--arms ...]
        [--lambdas 0.001 0.01 0.1] [--set training.KEY=VALUE ...] [--jobs 2]
        [--out bench/results]

Each night brings `--facts` new facts about invented things (seeded: a port, an author, a
release year, an implementation language), each with 3 training paraphrases of its
question and 1 held-out paraphrase. One LoRA adapter on the real base LLM is trained
night after night with the project's own trainer (consolidation/trainer.py) and MAS
(consolidation/mas.py), with the shipped training.* settings unless `--set` changes
them. After every night, every night's facts are asked (greedy); a fact is recalled
when its answer contains the value (exact match of the value's text), which fills the
3×3 matrix R[after night t][facts of night i].

Arms: naive (sequential LoRA), mas, replay (all earlier nights' examples mixed in), mas+
replay, tight replay (25 % of the earlier examples) with and without MAS, and joint (a
fresh adapter on everything so far: the upper bound). `mas+replay` is what the sleep
cycle does (it trains from the active version with MAS, on a sample that mixes earlier
cycles' data back in). Reported per arm, mean ± sd over seeds: ACC (mean of the last
row), BWT (Lopez-Paz & Ranzato 2017: mean of R[T,i] − R[i,i] over i < T), forgetting
(Chaudhry et al. 2018: mean of max_{l<T} R[l,i] − R[T,i]), the diagonal (recall right
after each night), held-out-paraphrase recall (last row), perplexity drift on fixed
generic sentences (adapter vs the bare base, after the last night) and training
throughput (tokens/s). Then a λ sweep of mas+replay (first seed; the shipped λ is the
arm's own run). Prints tables, writes JSON and a PNG (R matrices and the λ sweep).

Training uses the shipped settings, the anchor included (``training.anchor_weight``: KL
from the bare base at the prompt tokens); ``--set training.anchor_weight=0`` measures
without it.

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

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from consolidation import mas  # noqa: E402
from consolidation.trainer import encode_example, train_adapter  # noqa: E402
from npllm.adapters import AdapterShape  # noqa: E402
from npllm.config import TrainingConfig, load_settings  # noqa: E402
from npllm.llm import load_base_llm  # noqa: E402

SYSTEM = "You are a helpful assistant."
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
ARMS: dict[str, dict[str, Any]] = {
    "naive": {"mas": False, "replay": 0.0},
    "mas": {"mas": True, "replay": 0.0},
    "replay": {"mas": False, "replay": 1.0},
    "mas+replay": {"mas": True, "replay": 1.0},
    "tight-replay": {"mas": False, "replay": 0.25},
    "mas+tight-replay": {"mas": True, "replay": 0.25},
    "joint": {"mas": False, "replay": 1.0, "joint": True},
}
SHIPPED = "mas+replay"


@dataclass
class Fact:
    questions: list[str]  # PARAPHRASES of the question; the last is held out
    answer: str
    value: str

    def examples(self) -> list[list[dict[str, str]]]:
        return [
            [{"role": "user", "content": q}, {"role": "assistant", "content": self.answer}]
            for q in self.questions[:-1]
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
    model: Any, tokenizer: Any, questions: list[str], max_new_tokens: int = 24
) -> list[str]:
    """Greedy answers to `questions`, one left-padded batch."""
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
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


def recall(model: Any, tokenizer: Any, nights: list[list[Fact]]) -> tuple[list[float], list[float]]:
    """Per night: share of facts recalled on a training paraphrase, and on the held-out one."""
    facts = [f for night in nights for f in night]
    said = answers(
        model, tokenizer, [f.questions[0] for f in facts] + [f.questions[-1] for f in facts]
    )
    trained, held = said[: len(facts)], said[len(facts) :]
    per, out_trained, out_held = len(nights[0]), [], []
    for i in range(len(nights)):
        rows = range(i * per, (i + 1) * per)
        out_trained.append(sum(facts[k].value in trained[k] for k in rows) / per)
        out_held.append(sum(facts[k].value in held[k] for k in rows) / per)
    return out_trained, out_held


@dataclass
class ArmRun:
    R: list[list[float]] = field(default_factory=list)
    held_out: list[list[float]] = field(default_factory=list)
    ppl_base: float = 0.0
    ppl_after: float = 0.0
    train_tokens: int = 0
    train_seconds: float = 0.0

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
    ppl_base: float
    model_id: str


def _train_night(
    llm: Any,
    config: TrainingConfig,
    shape: AdapterShape,
    data: list[list[dict[str, str]]],
    out: Path,
    seed: int,
    init: Path | None,
    omega: mas.Matrices | None,
) -> tuple[int, float]:
    """Train one night into `out`; (tokens trained on, seconds)."""
    result = train_adapter(
        llm.model, llm.tokenizer, data, config, shape, out, SYSTEM,
        seed=seed, init_from=init, omega=omega,
    )  # fmt: skip
    encoded = [encode_example(llm.tokenizer, m, SYSTEM, 512)[0] for m in data]
    return sum(len(x) for x in encoded) * config.epochs, result.seconds


def first_night(
    llm: Any, config: TrainingConfig, shape: AdapterShape, nights: list[list[Fact]],
    seed: int, work: Path,
) -> FirstNight:  # fmt: skip
    from peft import PeftModel

    new = [e for f in nights[0] for e in f.examples()]
    out = work / f"seed{seed}-night0"
    tokens, seconds = _train_night(llm, config, shape, new, out, seed * 100, None, None)
    model = PeftModel.from_pretrained(llm.model, str(out))
    model.eval()
    trained, held = recall(model, llm.tokenizer, nights)
    model.unload()
    ppl_base = perplexity(llm.model, llm.tokenizer)
    return FirstNight(out, trained, held, tokens, seconds, ppl_base, llm.model_id)


def _importance(
    model: Any, tokenizer: Any, examples: list[list[dict[str, str]]], omega: mas.Matrices | None
) -> mas.Matrices:
    """`omega` plus the MAS importance of what `model` learned from `examples`."""
    encoded = [encode_example(tokenizer, m, SYSTEM, 512)[0] for m in examples]
    return mas.accumulate(omega, mas.importance(model, "default", encoded))


def run_arm(
    llm: Any,
    config: TrainingConfig,
    shape: AdapterShape,
    arm: dict[str, Any],
    nights: list[list[Fact]],
    seed: int,
    work: Path,
    first: FirstNight,
) -> ArmRun:
    """Nights 2.. of one arm, continuing from the shared night 1."""
    from peft import PeftModel

    rng = random.Random(seed)
    tokenizer = llm.tokenizer
    run = ArmRun(
        R=[first.trained], held_out=[first.held], ppl_base=first.ppl_base,
        train_tokens=first.tokens, train_seconds=first.seconds,
    )  # fmt: skip
    previous = first.path
    omega: mas.Matrices | None = None
    if arm["mas"]:  # importance of what night 1 learned
        model = PeftModel.from_pretrained(llm.model, str(previous))
        omega = _importance(model, tokenizer, [e for f in nights[0] for e in f.examples()], None)
        model.unload()
    for t in range(1, len(nights)):
        new = [e for f in nights[t] for e in f.examples()]
        old = [e for n in nights[:t] for f in n for e in f.examples()]
        if arm.get("joint"):
            data, init = new + old, None
        else:
            keep = math.ceil(arm["replay"] * len(old))
            data, init = new + rng.sample(old, keep), previous
        out = work / f"night{t}"
        tokens, seconds = _train_night(llm, config, shape, data, out, seed * 100 + t, init, omega)
        run.train_tokens += tokens
        run.train_seconds += seconds
        model = PeftModel.from_pretrained(llm.model, str(out))
        model.eval()
        if arm["mas"]:
            omega = _importance(model, tokenizer, new, omega)
        trained, held = recall(model, tokenizer, nights)
        run.R.append(trained)
        run.held_out.append(held)
        if t == len(nights) - 1:
            run.ppl_after = perplexity(model, tokenizer)
        model.unload()
        previous = out
    return run


# ---- worker processes: each holds its own copy of the base model ------------------------

_WORKER: dict[str, Any] = {}


def _start_worker(threads: int, training: dict[str, Any]) -> None:
    torch.set_num_threads(threads)
    settings = load_settings()
    config = TrainingConfig.model_validate(training)
    _WORKER.update(
        llm=load_base_llm(settings), config=config, shape=AdapterShape.from_config(config)
    )


def _first_job(seed: int, facts: int, work: Path) -> FirstNight:
    w = _WORKER
    return first_night(w["llm"], w["config"], w["shape"], make_nights(seed, facts), seed, work)


def _arm_job(
    arm: str, seed: int, facts: int, work: Path, first: FirstNight, lam: float | None = None
) -> tuple[ArmRun, float]:
    w = _WORKER
    config = w["config"] if lam is None else w["config"].model_copy(update={"mas_lambda": lam})
    started = time.perf_counter()
    run = run_arm(
        w["llm"], config, w["shape"], ARMS[arm], make_nights(seed, facts), seed, work, first
    )
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
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--lambdas", type=float, nargs="*", default=[0.001, 0.01, 0.1])
    parser.add_argument("--set", nargs="*", default=[], metavar="training.KEY=VALUE")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (each a model)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    settings = load_settings()
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if not key.startswith("training.") or not value:
            parser.error(f"--set takes training.KEY=VALUE, got {item!r}")
        overrides[key.removeprefix("training.")] = value
    config = TrainingConfig.model_validate({**settings.training.model_dump(), **overrides})
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    init = (threads, config.model_dump())
    pool: Any
    if args.jobs == 1:
        _start_worker(*init)
        pool = _Inline()
    else:
        pool = ProcessPoolExecutor(
            args.jobs, multiprocessing.get_context("spawn"), _start_worker, init
        )
    started = time.perf_counter()
    runs: dict[str, list[ArmRun]] = {arm: [] for arm in args.arms}
    sweep: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="npllm-forgetting-") as tmp:
        work = Path(tmp)
        firsts = {pool.submit(_first_job, seed, args.facts, work): seed for seed in args.seeds}
        first: dict[int, FirstNight] = {}
        jobs: dict[tuple[str, int], Future[tuple[ArmRun, float]]] = {}
        swept: dict[float, Future[tuple[ArmRun, float]]] = {}
        for done in as_completed(firsts):  # a seed's arms start when its night 1 is done
            seed = firsts[done]
            first[seed] = done.result()
            for arm in args.arms:
                work_dir = work / f"{arm}-{seed}"
                jobs[(arm, seed)] = pool.submit(
                    _arm_job, arm, seed, args.facts, work_dir, first[seed]
                )
            if seed != args.seeds[0]:
                continue
            for lam in args.lambdas:  # the λ sweep of the shipped arm, on the first seed
                if lam == config.mas_lambda and SHIPPED in args.arms:
                    continue  # that is the arm's own run
                work_dir = work / f"sweep-{lam}"
                swept[lam] = pool.submit(
                    _arm_job, SHIPPED, seed, args.facts, work_dir, first[seed], lam
                )
        order = [(arm, seed) for seed in args.seeds for arm in args.arms]
        for arm, seed in order:
            run, seconds = jobs[(arm, seed)].result()
            runs[arm].append(run)
            s = run.scores()
            print(
                f"seed {seed} {arm:17s} ACC {s['acc']:.2f} BWT {s['bwt']:+.2f} "
                f"diag {s['just_learned']:.2f} held-out {s['held_out']:.2f} "
                f"drift {s['ppl_drift']:+.3f} ({seconds:.0f} s after night 1)",
                flush=True,
            )
        for lam in args.lambdas:
            if lam in swept:
                sweep[str(lam)] = swept[lam].result()[0].scores()
            else:
                sweep[str(lam)] = runs[SHIPPED][0].scores()
            print(f"λ = {lam:g}: {sweep[str(lam)]}", flush=True)
        pool.shutdown()

    report: dict[str, Any] = {
        "benchmark": "forgetting",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {args.jobs} workers x {threads} torch threads",
        "base_model": first[args.seeds[0]].model_id,
        "training": config.model_dump(),
        "facts_per_night": args.facts,
        "seeds": args.seeds,
        "seconds": round(time.perf_counter() - started, 1),
        "ppl_base": first[args.seeds[0]].ppl_base,
        "arms": {},
        "lambda_sweep": sweep,
    }
    keys = ["acc", "bwt", "forgetting", "just_learned", "held_out", "ppl_drift", "tokens_per_s"]
    heads = ["ACC %", "BWT pts", "forget pts", "just learned %", "held-out %", "ppl drift %"]
    print(f"\n{'arm':17s} " + " ".join(f"{h:>15s}" for h in heads) + f" {'tok/s':>7s}")
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
        cols = [_fmt([s[k] for s in scores]) for k in keys[:-1]]
        tok = statistics.mean(s["tokens_per_s"] for s in scores)
        print(f"{arm:17s} " + " ".join(f"{c:>15s}" for c in cols) + f" {tok:7.0f}")
    if SHIPPED in report["arms"] and "joint" in report["arms"]:
        a = report["arms"]
        report["targets"] = {
            "each night >= 90% right after it": min(
                min(r["R"][i][i] for i in range(NIGHTS)) for r in a[SHIPPED]["runs"]
            )
            >= 0.9,  # fmt: skip
            "BWT >= -5 points": a[SHIPPED]["bwt"]["mean"] >= -0.05,
            "ACC within 5 points of joint": a[SHIPPED]["acc"]["mean"]
            >= a["joint"]["acc"]["mean"] - 0.05,
            "perplexity drift <= 5%": a[SHIPPED]["ppl_drift"]["mean"] <= 0.05,
        }
        print("\ntargets for the shipped default (mas+replay):")
        for name, ok in report["targets"].items():
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
