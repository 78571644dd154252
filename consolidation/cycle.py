"""One consolidation cycle: replay buffer → plan → MAS-regularised training → gate →
publish. Runs in a worker process (``npllm sleep --now``), never in the daemon.

1. Plan (consolidation/plan.py): the **new** learnable samples of the replay buffer, each
   joining the adapter the daemon's own modulator routes its question to, or a new topic
   adapter (consolidation/topics.py); what each adapter rehearses; the imported datasets
   that are new or changed. Only adapters that receive something train.
2. Per adapter: train the next version from the active one (or a fresh adapter) with
   loss + λ·Σ Ω·(ΔW − ΔW*)² (consolidation/mas.py) until every taught answer is reproduced
   exactly or the budget is spent (consolidation/trainer.py); each training is a
   ``npllm.training_runs`` row (consolidation/runs.py).
3. Gate (consolidation/gate.py): validation loss improved, retention on earlier cycles'
   examples kept. Passing versions go to the cycle's publisher (consolidation/publisher.py:
   the daemon's hot swap, or the database when no daemon runs); the others stay
   ``candidate`` with the reason. Corrections are never held out. A merge
   (consolidation/merging.py) trains first, as a lesson of the surviving adapter; once
   its version is published the absorbed adapter retires (its versions kept).
4. The cerebellum (npllm/cerebellum.py; unless ``cerebellum.role = "off"``) is trained,
   gated and published the same way on the **recurring** samples (asked at least
   ``cerebellum.min_asked`` times, quality at least ``cerebellum.min_quality``).
5. With ``modulator.train`` (off by default) the modulator is trained on the logged
   routing decisions (PPO against a reward model, or supervised: ``modulator.method``)
   and published only when an off-policy estimate says it routes better
   (consolidation/modulator_training.py, consolidation/modulator_ppo.py).
6. Mark the samples with the cycle and the adapter that learned them; then forget
   (consolidation/forgetting.py): adapters idle for ``sleep.retire_idle_days`` retire from
   serving, exchange memories unused for ``memory.decay_days`` leave retrieval; record
   everything in ``npllm.sleep_cycles`` (consolidation/bookkeeping.py: one cycle runs at a
   time).

Crash safety: the plan is written to ``<data_dir>/adapters/.staging/cycle<id>/plan.json``
before training and each trainer checkpoints there. When the latest cycle was interrupted
(worker or daemon killed, or stopped) the next one resumes it: same plan, finished
adapters skipped, the others continued from their last checkpoint
(``sleep_cycles.resumed_from``). A failed or finished cycle removes its staging directory.

Stopping: a stop (the daemon's, or the publisher's when the daemon is gone) raises
``CycleStopped`` (npllm/errors.py) wherever the cycle calls ``control`` or publishes. It is
a KeyboardInterrupt: `run_cycle` catches BaseException only to record the cycle —
'interrupted' (staging kept, to resume) for a KeyboardInterrupt, 'failed' otherwise — and
re-raises.

One concept, over ~400 lines: the cycle's sequence (plan → train → gate → publish, per
adapter, then the modulator); bookkeeping, the plan, the gate and the training runs live in
their own modules.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from consolidation import bookkeeping, forgetting, gate, mas, merging, modulator_training
from consolidation.bookkeeping import refuse_if_running
from consolidation.lesson import Examples, Lesson, build, question
from consolidation.plan import Plan, make_plan, mark_learned, resumable, write_plan
from consolidation.publisher import Publisher, Trained
from consolidation.runs import finish_run, record_version, start_run
from consolidation.served import Served, served_params
from consolidation.served import reproduced as served_reproduced
from consolidation.trainer import (
    Sampler,
    TrainResult,
    encode_example,
    plan_budget,
    reproduced,
    train_adapter,
    yielding,
)
from npllm import modulator, replay
from npllm.adapters import CEREBELLUM, MODULATOR, AdapterShape
from npllm.config import Settings
from npllm.errors import AdapterError, ModelError, NpllmError
from npllm.llm import BaseLLM, weights_sha256
from npllm.modulator import Modulator
from npllm.versions import Keys, Registry, Version

log = logging.getLogger("npllm.cycle")

Chat = list[dict[str, str]]
# What the report keeps of the trainer's metrics.
_TRAINED = ("steps", "steps_done", "budget", "stopped", "recalled", "losses", "seconds",
            "tokens", "tokens_per_s", "resumed_at_step")  # fmt: skip


@dataclass
class CycleContext:
    """What a cycle runs with.

    `publisher`: where versions whose gate passed go (consolidation/publisher.py);
    `on_phase`: told each phase as it starts (also written to the cycle's row);
    `control`: called between steps and inside the model's compute, raises CycleStopped
    to stop; `cerebellum`: its model and registry, to train it too (None: not trained);
    `served`: the serving engine the night checks its taught answers and its neighbours
    with (consolidation/served.py; None: teacher forcing alone, ``training.served_check``
    off); `clock`: now, timezone-aware (what idle adapters and memory decay count from)."""

    settings: Settings
    pool: Any
    llm: BaseLLM
    embedder: Any
    registry: Registry
    publisher: Publisher
    seed: int
    trigger: str = "manual"
    on_phase: Callable[[str], None] | None = None
    control: Callable[[], None] | None = None
    cerebellum: tuple[BaseLLM, Registry] | None = None
    served: Served | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


def run_cycle(ctx: CycleContext) -> dict[str, Any]:
    """Run one cycle; returns its metrics (also stored in npllm.sleep_cycles)."""
    refuse_if_running(ctx.pool)
    # Stopped here (control raises), no cycle has started: nothing to record.
    sha_before = weights_sha256(ctx.llm.model, ctx.control)
    staging_root = ctx.settings.data_path / "adapters" / ".staging"
    resume = resumable(ctx.pool, staging_root, sha_before)
    # Staging directories of earlier killed cycles: nothing refers to them.
    for old in staging_root.glob("*"):
        if resume is None or old != staging_root / f"cycle{resume[0]}":
            shutil.rmtree(old, ignore_errors=True)
    if resume is not None:
        ctx = replace(ctx, seed=resume[1].seed)
    try:
        cycle = bookkeeping.start_cycle(
            ctx.pool, ctx.trigger, ctx.seed, sha_before, None if resume is None else resume[0]
        )
    except psycopg.errors.UniqueViolation:  # another cycle started meanwhile
        refuse_if_running(ctx.pool)
        raise
    staging = staging_root / f"cycle{cycle}"
    plan: Plan | None = None
    if resume is not None:
        os.replace(staging_root / f"cycle{resume[0]}", staging)
        plan = resume[1]
    metrics: dict[str, Any] = {"cycle": cycle, "adapters": {}}
    status, error, items = "failed", None, []
    yields = _yielding(ctx)
    try:
        plan = _prepare(ctx, cycle, staging, plan, sha_before, metrics)
        everything = replay.fetch(
            ctx.pool, [k for g in plan.groups.values() for k in g.items + g.rehearse]
        )
        by_id = {i.interaction_id: i for i in everything}
        items = [by_id[k] for k in plan.items if k in by_id]  # tonight's new samples
        _learn(ctx, cycle, staging, plan, by_id, items, metrics)
        mark_learned(ctx.pool, plan, cycle)
        metrics["forgetting"] = _forget(ctx, cycle, plan)
        status = "succeeded"
    except BaseException as exc:
        # CycleStopped is a KeyboardInterrupt: see its contract in npllm/errors.py.
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        yields.close()
        if status != "interrupted":  # an interrupted cycle's checkpoints are resumed from
            shutil.rmtree(staging, ignore_errors=True)
        sha_after = weights_sha256(ctx.llm.model)
        metrics["base_unchanged"] = sha_after == sha_before
        bookkeeping.finish_cycle(ctx.pool, cycle, status, len(items), metrics, error, sha_after)
    return metrics


def _forget(ctx: CycleContext, cycle: int, plan: Plan) -> dict[str, Any]:
    """The night's last step (consolidation/forgetting.py): idle adapters retire from
    serving, unused exchange memories leave retrieval. What it could not do is reported,
    not a failed night: what the night learned is published already."""
    _phase(ctx, cycle, "forgetting: idle adapters, unused exchange memories")
    try:
        fingerprint, now = ctx.registry.base.fingerprint, ctx.clock()
        busy = set(plan.groups)  # tonight's adapters: never retired by the same night
        return forgetting.forget(
            ctx.settings, ctx.pool, fingerprint, ctx.publisher, cycle, now, busy
        )
    except (NpllmError, psycopg.Error) as exc:
        log.warning("sleep cycle %s: forgetting failed: %s", cycle, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


def _phase(ctx: CycleContext, cycle: int, text: str) -> None:
    bookkeeping.set_phase(ctx.pool, cycle, text)
    if ctx.on_phase:
        ctx.on_phase(text)


def _yielding(ctx: CycleContext) -> contextlib.ExitStack:
    """A request pauses the cycle within one block of the model's compute, wherever it is."""
    yields = contextlib.ExitStack()
    models = [ctx.llm.model] + ([ctx.cerebellum[0].model] if ctx.cerebellum is not None else [])
    for model in {id(m): m for m in models}.values():
        yields.enter_context(yielding(model, ctx.control))
    return yields


def _prepare(
    ctx: CycleContext, cycle: int, staging: Path, plan: Plan | None, sha: str,
    metrics: dict[str, Any],
) -> Plan:  # fmt: skip
    """Tonight's plan (`plan`: the interrupted cycle's, to resume), written to staging."""
    if plan is not None:
        _phase(ctx, cycle, f"resuming cycle {plan.cycle}")
        metrics["resumed_from"] = plan.cycle
    else:
        _phase(ctx, cycle, "sampling")
        plan = make_plan(ctx.settings, ctx.pool, ctx.embedder, ctx.registry, ctx.seed)
        plan.base_sha256 = sha
    plan.cycle = cycle
    metrics["topics"] = {name: g.why for name, g in plan.groups.items()}
    metrics["skipped"] = plan.skipped
    write_plan(staging, plan)
    return plan


def _learn(
    ctx: CycleContext, cycle: int, staging: Path, plan: Plan,
    by_id: dict[int, replay.ReplayItem], items: list[replay.ReplayItem], metrics: dict[str, Any],
) -> None:  # fmt: skip
    """Every adapter of the plan, then the cerebellum and the modulator; the plan records
    each as it finishes (a resumed cycle skips those)."""
    stale = {v.adapter: v for v in ctx.registry.stale_versions()}
    for name, g in plan.groups.items():
        merge = merging.Merge.from_dict(g.merge) if g.merge else None
        if name not in plan.done:  # else finished before the cycle it continues was killed
            lesson = Lesson(
                name,
                ctx.llm,
                ctx.registry,
                [by_id[k] for k in g.items if k in by_id],
                [by_id[k] for k in g.rehearse if k in by_id],
                np.asarray(g.centroid, np.float32),
                plan.datasets.get(name),
                rebuilds=stale.get(name),
                absorbs=None if merge is None else ctx.registry.version(merge.absorbed,
                                                                        merge.version),
            )  # fmt: skip
            plan.done[name] = _consolidate(ctx, cycle, lesson)
            if merge is not None:
                plan.done[name]["merge"] = merge.to_dict()
            write_plan(staging, plan)
        report = plan.done[name]
        if merge is not None and report.get("verdict") == "published" and "merged" not in report:
            # Only now, the gate passed and the version serves: the absorbed one retires.
            _phase(ctx, cycle, f"retiring {merge.absorbed}, merged into {name}")
            report["merged"] = merging.complete(ctx.pool, ctx.publisher, merge, cycle, report)
            write_plan(staging, plan)
        metrics["adapters"][name] = report
    if ctx.cerebellum is not None:
        metrics["cerebellum"] = plan.done.get(CEREBELLUM) or _cerebellum(
            ctx, cycle, items, ctx.cerebellum
        )
        plan.done[CEREBELLUM] = metrics["cerebellum"]
        write_plan(staging, plan)
    if ctx.settings.modulator.train:
        if ctx.control:
            ctx.control()
        metrics["modulator"] = plan.modulator or train_modulator(ctx, cycle)
        plan.modulator = metrics["modulator"]
        write_plan(staging, plan)


def _cerebellum(
    ctx: CycleContext, cycle: int, items: list[replay.ReplayItem],
    cerebellum: tuple[BaseLLM, Registry],
) -> dict[str, Any]:  # fmt: skip
    """Train the cerebellum on what it is for: the recurring, well-rated answers of every
    topic — tonight's samples whose question was asked at least ``cerebellum.min_asked``
    times, of quality at least ``cerebellum.min_quality``. A draft model pays for itself on
    routines; a one-off correction is the adapters' to learn."""
    model, registry = cerebellum
    c = ctx.settings.cerebellum
    asked = replay.times_asked(
        registry.pool, [i.interaction_id for i in items], ctx.settings.feedback.reask_similarity
    )
    chosen = [
        i
        for i in items
        if i.quality >= c.min_quality and asked.get(i.interaction_id, 1) >= c.min_asked
    ]
    recurring = {str(i.interaction_id): asked.get(i.interaction_id, 1) for i in chosen}
    if len(chosen) < c.min_examples:
        return {
            "samples": len(chosen),
            "recurring": recurring,
            "verdict": f"skipped: {len(chosen)} recurring samples (asked at least "
            f"{c.min_asked} times, quality >= {c.min_quality}), fewer than "
            f"cerebellum.min_examples = {c.min_examples}",
        }
    report = _consolidate(ctx, cycle, Lesson(CEREBELLUM, model, registry, chosen))
    return {**report, "recurring": recurring}  # interaction id → times its question was asked


def train_modulator(ctx: CycleContext, cycle: int) -> dict[str, Any]:
    """Train the modulator on the logged routing decisions
    (consolidation/modulator_training.py) and publish it when the off-policy estimate says
    it routes better."""
    _phase(ctx, cycle, "training the modulator")
    current = Modulator(ctx.settings.modulator)
    found = modulator.active(modulator.store_for(ctx.settings, ctx.pool))
    if found is not None:
        try:
            current.load(modulator.weights(found))
        except ModelError as exc:
            return {
                "verdict": f"skipped: the active modulator v{found.version} does not load: {exc}"
            }
    current.set_adapters(ctx.registry.scopes(ctx.settings.modulator))
    report = modulator_training.consolidate(
        ctx.settings, ctx.pool, current, cycle, int(ctx.seed or 0)
    )
    if report["verdict"] == "passes":
        _phase(ctx, cycle, "publishing the modulator")
        trained = Trained(kind="modulator", name=MODULATOR, sleep_cycle=cycle,
                          version=report["version"], metrics=report)  # fmt: skip
        report["published"] = ctx.publisher.publish(trained)
        report["verdict"] = "published"
    return report


def _consolidate(
    ctx: CycleContext, cycle: int, lesson: Lesson, retry: bool = True
) -> dict[str, Any]:
    """Train, gate and publish the next version of `lesson.name` on tonight's samples, the
    earlier ones it rehearses and its dataset (if new or changed).

    A version refused only because it no longer gives earlier answers it gave (the gate's
    `forgotten`) is trained once more from the same active version, rehearsing those too:
    rehearsal samples a few earlier answers a night, and the ones it left out are what
    the night forgot. The first attempt stays a refused candidate; the report says so."""
    llm, prompt = lesson.llm, ctx.settings.memory.system_prompt
    previous = lesson.registry.current(lesson.name)
    ex = build(ctx.settings, ctx.pool, ctx.embedder, lesson, previous or lesson.rebuilds)
    if not ex.taught and not ex.imported:
        return {"samples": 0, "verdict": f"skipped: dataset {lesson.dataset_name!r} is gone"}
    stored = None if previous is None else previous.path
    probe, omega = _probe(ctx, stored), mas.read_omega(stored)
    chats = [chat for chat, _ in probe]
    with _loaded(llm, stored) as model:  # a stop inside leaves the model as it was
        before = gate.measure(model, llm.tokenizer, ex.validation, chats, prompt)
    checks = _Checks(ctx, cycle, lesson, ex, previous)
    run_id, result, staging = _train(ctx, cycle, lesson, ex, previous, omega)
    _phase(ctx, cycle, f"gating {lesson.name}")
    right = result.verified or _served_right(ctx, lesson, ex, staging)
    locality, keys = checks.after(staging)
    # What tonight taught is what the next nights must protect; rehearsed samples were
    # counted in the nights that taught them.
    learned: gate.Probe = [
        (item.chat()["messages"], item.interaction_id)
        for item, ok in zip(lesson.items, right, strict=False)
        if ok
    ]
    learned += [(m, None) for m in ex.imported_train]
    with _loaded(llm, staging) as candidate:
        after = gate.measure(candidate, llm.tokenizer, ex.validation, chats, prompt)
        samples = [encode_example(llm.tokenizer, m, prompt, 512)[0] for m, _ in learned]
        new_omega = mas.accumulate(omega, mas.importance(candidate, "default", samples))
    mas.save(new_omega, staging / mas.OMEGA_FILE)
    gate.write_probe(staging, probe + learned)
    if keys is not None:
        keys.save(staging)
    taught = gate.Taught(len(lesson.items), sum(right[: len(lesson.items)]),
                         len(lesson.rehearse), sum(right[len(lesson.items) :]))  # fmt: skip
    forgotten = None
    if gate.retention_fell(before, after, ctx.settings.training):
        _phase(ctx, cycle, f"checking what {lesson.name} still answers")
        forgotten = _forgotten(ctx, lesson, stored, staging, chats)
    verdict = gate.judge(before, after, ctx.settings.training, taught, locality, forgotten)
    report = _report(cycle, lesson, ex, previous, result, verdict)
    report["unlearned"] = [k for k, ok in zip(ex.sources, right, strict=True) if not ok]
    _phase(ctx, cycle, f"trained {lesson.name}: {result.stop_reason}")
    _publish_or_keep(ctx, cycle, lesson, run_id, staging, report, verdict)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(staging.parent / f"{lesson.name}.checkpoint", ignore_errors=True)
    again = _rehearse_again(ctx, lesson, probe, verdict) if retry else []
    if again:
        _phase(ctx, cycle, f"training {lesson.name} again, rehearsing {len(again)} it forgot")
        second = _consolidate(ctx, cycle, replace(lesson, rehearse=lesson.rehearse + again),
                              retry=False)  # fmt: skip
        second["first_attempt"] = report["verdict"]
        return second
    return report


def _rehearse_again(
    ctx: CycleContext, lesson: Lesson, probe: gate.Probe, verdict: gate.Verdict
) -> list[replay.ReplayItem]:
    """The replay samples behind the earlier answers a refused version no longer gives, when
    that alone refused it (nothing else to retry for)."""
    if verdict.passed or not verdict.forgotten or len(verdict.reasons) != 1:
        return []
    forgotten = set(verdict.forgotten)
    have = {i.interaction_id for i in lesson.items + lesson.rehearse}
    ids = [i for chat, i in probe if i is not None and i not in have
           and question(chat) in forgotten]  # fmt: skip
    return replay.fetch(ctx.pool, list(dict.fromkeys(ids)))


def _probe(ctx: CycleContext, stored: Path | None) -> gate.Probe:
    """The probe set of the version `stored` (its earlier nights' examples), without those a
    later correction superseded: an old value the user replaced is not to be retained."""
    probe = gate.read_probe(stored)
    gone = replay.superseded(ctx.pool, [i for _, i in probe if i is not None])
    return [(chat, i) for chat, i in probe if i not in gone]


def _forgotten(
    ctx: CycleContext, lesson: Lesson, stored: Path | None, staging: Path, chats: list[Chat]
) -> list[str]:
    """The probe's questions whose answers the version at `stored` reproduces exactly and
    the one at `staging` does not (greedy, teacher-forced, with the served penalties)."""
    llm, prompt = lesson.llm, ctx.settings.memory.system_prompt
    encoded = [encode_example(llm.tokenizer, m, prompt, 512) for m in chats]
    pad = llm.tokenizer.pad_token_id if llm.tokenizer.pad_token_id is not None else 0
    exact = Sampler(_sampler(ctx).params)  # the same answer as before: no margin
    with _loaded(llm, stored) as model:
        before = reproduced(model, encoded, pad, sampler=exact)
    with _loaded(llm, staging) as model:
        after = reproduced(model, encoded, pad, sampler=exact)
    return [question(m) for m, was, now in zip(chats, before, after, strict=True)
            if was and not now]  # fmt: skip


def _sampler(ctx: CycleContext) -> Sampler:
    """The served penalties and margin the trainer's recall check applies."""
    params = served_params(ctx.settings, ctx.settings.server.default_max_tokens)
    return Sampler(params, ctx.settings.training.recall_margin)


def _served_right(ctx: CycleContext, lesson: Lesson, ex: Examples, staging: Path) -> list[bool]:
    """Per taught chat: does the version answer it as taught — through the serving engine
    (ctx.served), else teacher-forced with the served penalties?"""
    if not ex.taught:
        return []
    if ctx.served is not None and lesson.kind == "adapter":
        return _served_as_taught(ctx.served, staging, ex.taught)
    llm, prompt = lesson.llm, ctx.settings.memory.system_prompt
    encoded = [encode_example(llm.tokenizer, m, prompt, 512) for m in ex.taught]
    pad = llm.tokenizer.pad_token_id if llm.tokenizer.pad_token_id is not None else 0
    with _loaded(llm, staging) as candidate:
        return reproduced(candidate, encoded, pad, sampler=_sampler(ctx))


def _candidate(served: Served, directory: Path) -> str | None:
    """Tonight's adapter in `directory`, loaded into the worker's engine; its name, or None
    when the engine cannot serve it (a conversion that fails, weights that are not finite):
    then nothing it was taught counts as served."""
    try:
        return served.load({"candidate": directory}, snapshot=True)["candidate"]
    except (AdapterError, ModelError, OSError, ValueError) as exc:
        log.warning("the serving engine cannot load %s: %s", directory, exc)
        return None


def _served_as_taught(served: Served, directory: Path, taught: list[Chat]) -> list[bool]:
    """Per taught chat: does the adapter in `directory` answer it as taught through the
    serving engine? None of them when the engine cannot serve it."""
    name = _candidate(served, directory)
    if name is None:
        return [False] * len(taught)
    return served_reproduced(served, name, taught)


class _Checks:
    """The gate's neighbouring questions (`ex.checks`), answered as served before the night
    and, for those the new version's scope takes, by the version (gate.Locality)."""

    TOKENS = 32  # greedy answer length compared

    def __init__(
        self, ctx: CycleContext, cycle: int, lesson: Lesson, ex: Examples,
        previous: Version | None,
    ) -> None:  # fmt: skip
        self.ctx, self.ex, self.lesson = ctx, ex, lesson
        self.questions = [c[-1]["content"] for c in ex.checks]
        self.vectors = (np.asarray(ctx.embedder.embed(self.questions))
                        if self.questions else np.zeros((0, 384)))  # fmt: skip
        old = None if previous is None else lesson.registry.keys(previous)
        self.routed_before = self._routed(old if old is not None and old.texts else None)
        self.routed_after = self._routed(ex.keys)
        # Only a question one of the two versions takes can change: the base answers the rest.
        self.asked = [k for k in range(len(self.questions))
                      if self.routed_before[k] or self.routed_after[k]]  # fmt: skip
        self.before: dict[int, str] = {}
        if ctx.served is None or not self.asked:
            return
        _phase(ctx, cycle, f"asking {lesson.name}'s neighbours before training")
        names = ctx.served.load({"previous": previous.path}) if previous else {}
        for k in self.asked:
            adapter = names.get("previous") if self.routed_before[k] else None
            self.before[k] = self._answer(k, adapter)

    def _answer(self, k: int, adapter: str | None) -> str:
        assert self.ctx.served is not None
        chat = [{"role": "user", "content": self.questions[k]}]
        return self.ctx.served.answers([chat], adapter, self.TOKENS)[0]

    def _routed(self, keys: Any) -> list[bool]:
        """Which of the questions a version with `keys` is routed to (its scope alone)."""
        if keys is None or not self.questions:
            return [False] * len(self.questions)
        router = Modulator(self.ctx.settings.modulator)
        router.set_adapters({self.lesson.name: keys.scope(self.ctx.settings.modulator)})
        return [bool(router.decide(v).chosen) for v in self.vectors]

    def after(self, staging: Path) -> tuple[gate.Locality | None, Keys | None]:
        """The new version's answers to the questions its scope takes, against before; and
        its keys, with the scope narrowed around what it changed.

        Routing learns its scope here: a neighbour whose answer the version changed becomes
        one of its neighbour keys — left to the base from now on — unless it is as alike to
        a question the version was taught as a question asked again
        (``feedback.reask_similarity``), where routing cannot tell them apart: one of the
        user's own questions (`ex.firm`) then counts against the version at the gate; a
        rule-made one so alike is no evidence either way ("How do I install X?" beside a
        taught "How do I deploy X?") and is reported, not counted."""
        keys = self.ex.keys
        if self.ctx.served is None or not self.questions or keys is None:
            return None, keys
        name = _candidate(self.ctx.served, staging) if self.asked else None
        if self.asked and name is None:  # not servable: refused anyway (it learned nothing)
            return None, keys
        changed = [
            k
            for k in self.asked
            if self._answer(k, name if self.routed_after[k] else None) != self.before[k]
        ]
        taught = keys.embeddings[[kind in ("question", "paraphrase") for kind in keys.kinds]]
        alike = (self.vectors[changed] @ taught.T).max(axis=1) if changed and len(taught) else []
        same = self.ctx.settings.feedback.reask_similarity
        kept = [k for k, a in zip(changed, alike, strict=True) if a < same]
        counted = [self.questions[k] for k in changed
                   if k not in kept and self.questions[k] in self.ex.firm]  # fmt: skip
        excluded = [self.questions[k] for k in kept]
        if kept:
            keys = keys.plus("neighbour", excluded, self.vectors[kept])
        unclear = [self.questions[k] for k in changed if k not in kept
                   and self.questions[k] not in self.ex.firm]  # fmt: skip
        return gate.Locality(len(self.questions), sum(self.routed_after), counted,
                             excluded, unclear), keys  # fmt: skip


@contextlib.contextmanager
def _loaded(llm: BaseLLM, adapter: Path | None) -> Iterator[Any]:
    """The base with the adapter at `adapter` on it (None: the bare base), taken off after."""
    if adapter is None:
        yield llm.model
        return
    from peft import PeftModel

    model = PeftModel.from_pretrained(llm.model, str(adapter))
    try:
        yield model
    finally:
        model.unload()


def _train(
    ctx: CycleContext, cycle: int, lesson: Lesson, ex: Examples, previous: Version | None,
    omega: mas.Matrices | None,
) -> tuple[int, TrainResult, Path]:  # fmt: skip
    """The next version, trained into staging from the active one (or a fresh adapter);
    a npllm.training_runs row. (its run id, the result, the staging directory)"""
    name, training, pool = lesson.name, ctx.settings.training, lesson.registry.pool
    _phase(ctx, cycle, f"training {name}")
    staging = ctx.settings.data_path / "adapters" / ".staging" / f"cycle{cycle}" / name
    shutil.rmtree(staging, ignore_errors=True)
    required = _required(lesson)  # what the run waits for (and corrections twice a pass)
    budget = plan_budget(len(ex.train), training, incremental=previous is not None)
    run_id = start_run(
        pool, ctx.settings, name, len(ex.train), budget, sleep_cycle=cycle, kind=lesson.kind,
        dataset=lesson.dataset_name,
    )  # fmt: skip
    try:
        result = train_adapter(
            lesson.llm.model,
            lesson.llm.tokenizer,
            ex.train,
            training,
            AdapterShape.from_config(training),
            staging,
            ctx.settings.memory.system_prompt,
            init_from=None if previous is None else previous.path,
            omega=omega,
            control=ctx.control,
            checkpoint=staging.parent / f"{name}.checkpoint",
            on_progress=lambda p: _phase(
                ctx,
                cycle,
                f"training {name} step {p.step}/{p.steps} (loss {p.loss:.3f}, ETA {p.eta_s:.0f} s)",
            ),  # fmt: skip
            held_out=ex.held_out or None,
            recall=range(len(ex.taught)),  # the corrections and liked answers: exactly
            sampler=_sampler(ctx),
            verify=_verifier(ctx, lesson, ex),
            # A correction is the user's own words, foreign to the model: it must win by the
            # margin. A liked answer is the model's own: served greedily as it is, it needs none.
            margins_needed=[training.recall_margin if f else 0.0 for f in _corrections(lesson)],
            required=required,
            repeat=_repeat(ex, lesson, required),
        )
    except BaseException as exc:
        finish_run(pool, run_id, None, exc)
        raise
    finish_run(pool, run_id, result)
    return run_id, result, staging


def _corrections(lesson: Lesson) -> list[bool]:
    """Per taught chat (tonight's, then the rehearsed), whether it is a correction."""
    return [item.corrected_answer is not None for item in lesson.items + lesson.rehearse]


def _required(lesson: Lesson) -> list[bool]:
    """Per taught chat, whether the run waits until it is served as taught: on a night with
    corrections, the corrections and every rehearsed answer (what an earlier night learned:
    the gate refuses a version that no longer gives it), not tonight's new liked answers;
    on a night without corrections, every answer. A new liked answer is the model's own
    text, often long or sampled; it is trained and counted, but it must not spend the steps
    the user's corrections need (the month benchmark's nights 3-4 ran out of budget on
    them, docs/performance.md)."""
    fixed = _corrections(lesson)
    if not any(fixed):
        return [True] * len(fixed)
    return fixed[: len(lesson.items)] + [True] * len(lesson.rehearse)


def _repeat(ex: Examples, lesson: Lesson, required: list[bool]) -> list[int]:
    """Per training example, its share of each pass: a correction appears twice when new
    liked answers (those `required`, `_required`, does not wait for) are trained beside it,
    so they do not outnumber it."""
    twice = not all(required)
    taught = [2 if twice and f else 1 for f in _corrections(lesson)]
    return taught + [1] * (len(ex.train) - len(taught))


def _verifier(
    ctx: CycleContext, lesson: Lesson, ex: Examples
) -> Callable[[Path], list[bool]] | None:
    """What the trainer calls once teacher forcing says every taught answer holds: the
    serving engine's own answers (consolidation/served.py)."""
    if ctx.served is None or lesson.kind != "adapter":
        return None
    check = ctx.served

    def verify(directory: Path) -> list[bool]:
        return _served_as_taught(check, directory, ex.taught)

    return verify


def _report(
    cycle: int, lesson: Lesson, ex: Examples, previous: Version | None, result: TrainResult,
    verdict: gate.Verdict,
) -> dict[str, Any]:  # fmt: skip
    """The adapter's entry in the cycle's metrics (its verdict is added when known)."""
    trained, dataset = result.metrics(), lesson.dataset
    return {  # fmt: skip
        "samples": len(lesson.items),
        "rehearsed": len(lesson.rehearse),
        **(
            {}
            if dataset is None
            else {
                "dataset": dataset["dataset"],
                "dataset_sha256": dataset["sha256"],
                "dataset_examples": len(ex.imported),
            }
        ),
        "train": len(ex.train),
        "paraphrases": len(ex.variants),
        "keys": None
        if ex.keys is None
        else {kind: ex.keys.kinds.count(kind) for kind in dict.fromkeys(ex.keys.kinds)},
        "served": verdict.taught.summary() if verdict.taught else None,
        "locality": None if verdict.locality is None else verdict.locality.summary(),
        "validation": len(ex.validation),
        "previous_version": None if previous is None else previous.version,
        **{k: trained[k] for k in _TRAINED},
        "validation_loss": {
            "before": round(verdict.before[0], 5),
            "after": round(verdict.after[0], 5),
        },
        "retention_score": {"before": verdict.retention_before, "after": verdict.retention_after},
        "forgotten": verdict.forgotten,
        "base_unchanged": result.base_sha256_before == result.base_sha256_after,
        "sleep_cycle": cycle,
    }


def _publish_or_keep(
    ctx: CycleContext, cycle: int, lesson: Lesson, run_id: int, staging: Path,
    report: dict[str, Any], verdict: gate.Verdict,
) -> None:  # fmt: skip
    """Publish a version whose gate passed; keep one that failed as a refused candidate,
    with the reasons. Sets the report's verdict."""
    registry = lesson.registry
    if verdict.passed:
        _phase(ctx, cycle, f"publishing {lesson.name}")
        trained = Trained(
            kind=lesson.kind,
            name=lesson.name,
            sleep_cycle=cycle,
            path=staging,
            centroid=lesson.centroid,
            metrics=report,
            dataset=lesson.dataset_name,
            # A merged version goes live at once: on trial, its control could not answer
            # what the adapter it absorbs knew.
            canary=False if lesson.absorbs is not None else None,
        )
        try:
            report["published"] = ctx.publisher.publish(trained)
            report["verdict"] = "published"
            record_version(registry.pool, run_id, int(report["published"]))
        except NpllmError as exc:  # refused by the daemon (cap, smoke test, ...): kept as is
            report["verdict"] = f"not published: {exc}"
        return
    reason = "; ".join(verdict.reasons)
    kept = registry.add_version(lesson.name, staging, centroid=lesson.centroid, metrics=report,
                                check_capacity=False, dataset=lesson.dataset_name)  # fmt: skip
    registry.refuse(kept, reason, {})
    report["verdict"] = "rejected: " + reason
    report["candidate_version"] = kept.version
    record_version(registry.pool, run_id, kept.version)
