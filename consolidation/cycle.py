"""One consolidation cycle: replay buffer → datasets → MAS-regularised training → gate →
publish. Runs in a worker process (``npllm sleep --now``), never in the daemon.

1. Sample what is **new** in the replay buffer (rows no night has trained on, or changed
   since: a correction that came later; prioritised, premium + standard, seeded, at most
   ``sleep.max_samples``) and keep what can be learned: the user's correction, or an
   answer whose reward is positive.
2. Each sample joins the adapter the daemon's own modulator would route its question to;
   the rest form new **topic** adapters only when enough of them are alike, else join the
   nearest adapter (consolidation/topics.py), within the cap ``modulator.max_adapters``.
   Only adapters that received samples train; each also **rehearses** earlier samples it
   learned (``sleep.rehearsal_ratio`` per new one, at most ``sleep.max_rehearsal``).
   Imported datasets go to their adapter when they are new or changed.
3. Per adapter: train the next version from the active one (or a fresh adapter) with
   loss + λ·Σ Ω·(ΔW − ΔW*)² (consolidation/mas.py), Ω being the importance accumulated
   over its earlier cycles and stored with the version, on a step budget from the data
   that stops as soon as every taught answer is reproduced exactly
   (consolidation/trainer.py); each training is a ``npllm.training_runs`` row.
4. Gate: the validation loss must improve by ``training.gate_min_improvement`` over the
   active version (the bare base for a new adapter) and the retention score —
   exp(−loss) on the probe set of earlier cycles' examples — may drop by at most
   ``training.retention_tolerance``. Passing versions are published through the daemon's
   hot swap (or registered when it is not running); the others stay ``candidate`` with
   the reason. Corrections are never held out (each is trained on): validation uses the
   training examples, or the held-out fifth of an imported dataset large enough.
5. The cerebellum (npllm/cerebellum.py; unless ``cerebellum.role = "off"``) is trained,
   gated and published the same way on the **recurring** samples (a question asked at
   least ``cerebellum.min_asked`` times) of quality at least ``cerebellum.min_quality``,
   on its own model, under the name ``cerebellum``.
6. With ``modulator.train`` (off by default) the modulator is trained on the logged
   routing decisions and their rewards, and published only when an off-policy estimate
   says it routes better (consolidation/modulator_training.py).
7. Mark the samples with the cycle and the adapter that learned them; record everything
   in ``npllm.sleep_cycles``.

One cycle runs at a time: a cycle does not start while another one's worker is alive
(and the database holds at most one 'running' row).

Crash safety: the cycle's sample and routing are written to
``<data_dir>/adapters/.staging/cycle<id>/plan.json`` before training, and each adapter's
trainer checkpoints there every ``training.checkpoint_every`` steps. When the latest cycle
was interrupted (worker or daemon killed, or stopped by the daemon) the next one resumes
it: same sample, same routing, the adapters already finished are skipped, the others
continue from their last checkpoint (``sleep_cycles.resumed_from`` names the cycle it
continues). A failed or finished cycle removes its staging directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from consolidation import bookkeeping, datasets, mas, modulator_training, topics
from consolidation.bookkeeping import refuse_if_running
from consolidation.runs import finish_run, record_version, split_held_out, start_run
from consolidation.trainer import chat_loss, encode_example, plan_budget, train_adapter, yielding
from npllm import modulator, replay
from npllm.adapters import CEREBELLUM, AdapterShape, Registry, Version
from npllm.config import Settings
from npllm.errors import AdapterError, ModelError, NotFoundError, NpllmError
from npllm.llm import BaseLLM, weights_sha256
from npllm.modulator import Modulator

Publish = Callable[[str, Path, "np.ndarray | None", dict[str, Any]], Any]
PROBE_LIMIT = 200  # examples kept per adapter for the retention probe


def run_cycle(
    settings: Settings,
    pool: Any,
    llm: BaseLLM,
    embedder: Any,
    registry: Registry,
    publish: Publish,
    seed: int,
    trigger: str = "manual",
    on_phase: Callable[[str], None] | None = None,
    control: Callable[[], None] | None = None,
    cerebellum: tuple[BaseLLM, Registry] | None = None,
    publish_modulator: Callable[[int, int], Any] | None = None,
) -> dict[str, Any]:
    """Run one cycle; returns its metrics (also stored in npllm.sleep_cycles).
    `cerebellum`: its model and registry, to train it too (None: not trained).
    `publish_modulator(version, cycle)`: makes a trained modulator version route (with
    ``modulator.train``; None: it is only stored)."""
    refuse_if_running(pool)
    # Stopped here (control raises), no cycle has started: nothing to record.
    sha_before = weights_sha256(llm.model, control)
    staging_root = settings.data_path / "adapters" / ".staging"
    resume = _resumable(pool, staging_root, sha_before)
    # Staging directories of earlier killed cycles: nothing refers to them.
    for old in staging_root.glob("*"):
        if resume is None or old != staging_root / f"cycle{resume[0]}":
            shutil.rmtree(old, ignore_errors=True)
    seed = seed if resume is None else resume[1]["seed"]
    try:
        cycle = bookkeeping.start_cycle(
            pool, trigger, seed, sha_before, None if resume is None else resume[0]
        )
    except psycopg.errors.UniqueViolation:  # another cycle started meanwhile
        refuse_if_running(pool)
        raise
    staging = staging_root / f"cycle{cycle}"
    plan: dict[str, Any] = {}
    if resume is not None:
        os.replace(staging_root / f"cycle{resume[0]}", staging)
        plan = resume[1]

    def phase(text: str) -> None:
        bookkeeping.set_phase(pool, cycle, text)
        if on_phase:
            on_phase(text)

    metrics: dict[str, Any] = {"cycle": cycle, "adapters": {}}
    status, error, items = "failed", None, []
    # A request pauses the cycle within one block of the model's compute, wherever it is.
    yields = contextlib.ExitStack()
    models = [llm.model] + ([cerebellum[0].model] if cerebellum is not None else [])
    for model in {id(m): m for m in models}.values():
        yields.enter_context(yielding(model, control))
    try:
        if plan:
            phase(f"resuming cycle {plan['cycle']}")
            metrics["resumed_from"] = plan["cycle"]
        else:
            phase("sampling")
            plan = _plan(settings, pool, embedder, registry, seed, cycle)
            plan["base_sha256"] = sha_before
        plan["cycle"] = cycle
        metrics["topics"] = {name: g["why"] for name, g in plan["groups"].items()}
        metrics["skipped"] = plan.get("skipped", {})
        _write_plan(staging, plan)
        everything = replay.fetch(
            pool, [k for g in plan["groups"].values() for k in g["items"] + g["rehearse"]]
        )
        by_id = {i.interaction_id: i for i in everything}
        items = [by_id[k] for k in plan["items"] if k in by_id]  # tonight's new samples
        for name, g in plan["groups"].items():
            if name in plan["done"]:  # finished before the cycle it continues was killed
                metrics["adapters"][name] = plan["done"][name]
                continue
            metrics["adapters"][name] = _consolidate(
                settings,
                llm,
                registry,
                name,
                [by_id[k] for k in g["items"] if k in by_id],
                [by_id[k] for k in g["rehearse"] if k in by_id],
                np.asarray(g["centroid"], np.float32),
                cycle,
                publish,
                phase,
                control,
                dataset=plan.get("datasets", {}).get(name),
                pool=pool,
            )
            plan["done"][name] = metrics["adapters"][name]
            _write_plan(staging, plan)
        if cerebellum is not None:
            metrics["cerebellum"] = plan["done"].get(CEREBELLUM) or _cerebellum(
                settings, items, cerebellum, cycle, publish, phase, control
            )
            plan["done"][CEREBELLUM] = metrics["cerebellum"]
            _write_plan(staging, plan)
        if settings.modulator.train:
            if control:
                control()
            metrics["modulator"] = plan.get("modulator") or _modulator(
                settings, pool, registry, cycle, int(seed or 0), publish_modulator, phase
            )
            plan["modulator"] = metrics["modulator"]
            _write_plan(staging, plan)
        learned = {
            k: name for name, g in plan["groups"].items() for k in g["items"] + g["rehearse"]
        }
        for rep, twins in plan.get("duplicates", {}).items():
            learned.update({twin: learned[int(rep)] for twin in twins if int(rep) in learned})
        if learned:
            replay.mark_sampled(pool, list(learned), cycle, learned)
        status = "succeeded"
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        yields.close()
        if status != "interrupted":  # an interrupted cycle's checkpoints are resumed from
            shutil.rmtree(staging, ignore_errors=True)
        sha_after = weights_sha256(llm.model)
        metrics["base_unchanged"] = sha_after == sha_before
        bookkeeping.finish_cycle(pool, cycle, status, len(items), metrics, error, sha_after)
    return metrics


def learnable(item: replay.ReplayItem) -> bool:
    """What a night can learn from: the user's correction, or an answer they liked."""
    return item.corrected_answer is not None or item.reward > 0


def _plan(
    settings: Settings, pool: Any, embedder: Any, registry: Registry, seed: int, cycle: int
) -> dict[str, Any]:
    """Tonight's work, written to plan.json before training: the new samples, the adapter
    each joins (consolidation/topics.py) with what it rehearses, and the datasets to learn."""
    sleep = settings.sleep
    new = [i for i in replay.sample(pool, sleep.max_samples, seed=seed, new_only=True)
           if learnable(i)]  # fmt: skip
    centroids: dict[str, np.ndarray] = {v.adapter: c for v, c in registry.active() if c is not None}
    # Stale adapters (trained for another base) are rebuilt from the samples they attract.
    centroids.update(registry.stale_centroids())
    router, _ = modulator.routing(settings, pool, centroids)
    listing = {a["name"]: a for a in registry.listing()}
    vectors = np.asarray(embedder.embed([i.question for i in new])) if new else None
    assigned = (
        topics.assign(
            new,
            vectors,
            router,
            centroids,
            cap=registry.cap or len(centroids) + len(new),
            population=len(registry.population()),
            min_support=sleep.new_topic_min_samples,
            similarity=settings.modulator.none_similarity,
            taken={*listing, CEREBELLUM},
        )
        if vectors is not None
        else {}
    )
    groups: dict[str, dict[str, Any]] = {}
    for name, topic in assigned.items():
        rehearse: list[replay.ReplayItem] = []
        budget = min(math.ceil(sleep.rehearsal_ratio * len(topic.items)), sleep.max_rehearsal)
        if not topic.new and budget:
            rehearse = [
                i
                for i in replay.sample(pool, budget, seed=seed, adapter=name,
                                       exclude=[t.interaction_id for t in topic.items])
                if learnable(i)
            ]  # fmt: skip
        groups[name] = {
            "items": [i.interaction_id for i in topic.items],
            "rehearse": [i.interaction_id for i in rehearse],
            "centroid": _centroid(pool, topic, centroids.get(name), listing.get(name)).tolist(),
            "why": topic.why,
            "new": topic.new,
        }
    wanted = _datasets_to_train(pool, registry, set(groups))
    skipped = {}
    coming = {name for name, g in groups.items() if g["new"]}  # the cap counts them too
    for name, d in list(wanted.items()):
        if name in groups:
            continue
        try:  # trained from its dataset alone: a new adapter must fit under the cap
            registry.check_capacity(name, coming=coming)
        except AdapterError as exc:
            skipped[name] = f"dataset {d['dataset']!r} not learned: {exc}"
            del wanted[name]
            continue
        coming.add(name)
        groups[name] = {
            "items": [],
            "rehearse": [],
            "centroid": datasets.dataset_centroid(pool, embedder, d["dataset"]).tolist(),
            "why": f"its dataset {d['dataset']!r} is new or changed",
            "new": name not in listing,
        }
    return {
        "seed": seed,
        "items": [i.interaction_id for i in new],
        # Rows each sample stands for (its duplicates): learned with it, marked with it.
        "duplicates": {str(i.interaction_id): i.duplicates for i in new if i.duplicates},
        "groups": groups,
        "datasets": wanted,
        "skipped": skipped,
        "done": {},
    }


def _centroid(
    pool: Any,
    topic: topics.Topic,
    old: np.ndarray | None,
    adapter: dict[str, Any] | None,
) -> np.ndarray:
    """Where the modulator sends questions from now on: the mean of every question the
    adapter has learned — its earlier ones (the stored centroid, weighted by how many it
    stands for) and tonight's."""
    total = np.sum(topic.vectors, axis=0).astype(np.float64)
    if old is not None:
        earlier = replay.learned_count(pool, topic.name)
        if adapter is not None and adapter.get("dataset"):
            sizes = {d["name"]: d["examples"] for d in datasets.list_datasets(pool)}
            earlier += sizes.get(adapter["dataset"], 0)
        total += max(earlier, 1) * old
    return np.asarray(total / max(float(np.linalg.norm(total)), 1e-8), np.float32)


def _cerebellum(
    settings: Settings,
    items: list[replay.ReplayItem],
    cerebellum: tuple[BaseLLM, Registry],
    cycle: int,
    publish: Publish,
    phase: Callable[[str], None],
    control: Callable[[], None] | None,
) -> dict[str, Any]:
    """Train the cerebellum on what it is for: the recurring, well-rated answers of every
    topic — tonight's samples whose question was asked at least ``cerebellum.min_asked``
    times, of quality at least ``cerebellum.min_quality``. A draft model pays for itself on
    routines; a one-off correction is the adapters' to learn."""
    model, registry = cerebellum
    c = settings.cerebellum
    asked = replay.times_asked(
        registry.pool, [i.interaction_id for i in items], settings.feedback.reask_similarity
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
    report = _consolidate(
        settings, model, registry, CEREBELLUM, chosen, [], None, cycle, publish, phase, control
    )
    return {**report, "recurring": recurring}  # interaction id → times its question was asked


def _modulator(
    settings: Settings,
    pool: Any,
    registry: Registry,
    cycle: int,
    seed: int,
    publish: Callable[[int, int], Any] | None,
    phase: Callable[[str], None],
) -> dict[str, Any]:
    """Train the modulator on the logged routing decisions (consolidation/modulator_training.py) and
    publish it when the off-policy estimate says it routes better."""
    phase("training the modulator")
    current = Modulator(settings.modulator)
    found = modulator.active(pool)
    if found is not None:
        try:
            current.load(found[1])
        except ModelError as exc:
            return {"verdict": f"skipped: the active modulator v{found[0]} does not load: {exc}"}
    current.set_adapters({v.adapter: c for v, c in registry.active()})
    report = modulator_training.consolidate(settings, pool, current, cycle, seed)
    if report["verdict"] == "passes" and publish is not None:
        phase("publishing the modulator")
        report["published"] = publish(report["version"], cycle)
        report["verdict"] = "published"
    return report


def _consolidate(
    settings: Settings,
    llm: BaseLLM,
    registry: Registry,
    name: str,
    group: list[replay.ReplayItem],
    rehearse: list[replay.ReplayItem],
    centroid: np.ndarray | None,
    cycle: int,
    publish: Publish,
    phase: Callable[[str], None],
    control: Callable[[], None] | None,
    dataset: dict[str, Any] | None = None,
    pool: Any = None,
) -> dict[str, Any]:
    """Train, gate and publish the next version of adapter `name` on tonight's samples
    (`group`), the earlier ones it rehearses and its dataset (if new or changed)."""
    from peft import PeftModel

    training = settings.training
    prompt = settings.memory.system_prompt
    taught = [item.chat()["messages"] for item in group + rehearse]
    imported: list[list[dict[str, str]]] = []
    if dataset is not None:  # the adapter's imported dataset is trained with its samples
        try:
            rows = datasets.dataset_examples(pool, dataset["dataset"])
        except NotFoundError:  # deleted since the cycle was planned
            rows = []
        imported = [e["messages"] for e in rows[: settings.sleep.max_samples]]
    if not taught and not imported:
        return {
            "samples": 0,
            "verdict": f"skipped: dataset {dataset and dataset['dataset']!r} is gone",
        }
    # Every correction is trained on (none is held out); a large dataset holds 1 in 5 out.
    imported_train, held_out = split_held_out(imported, training)
    train = taught + imported_train
    validation = held_out or train
    previous = registry.current(name)
    probe = _read_probe(previous)
    omega = _read_omega(previous)

    def losses(model: Any) -> tuple[float, float | None]:
        probe_loss = chat_loss(model, llm.tokenizer, probe, prompt) if probe else None
        return chat_loss(model, llm.tokenizer, validation, prompt), probe_loss

    if previous is None:
        before = losses(llm.model)
    else:
        old = PeftModel.from_pretrained(llm.model, str(previous.path))
        try:  # a stop (raised inside the model's compute) leaves the model as it was
            before = losses(old)
        finally:
            old.unload()
    phase(f"training {name}")
    staging = settings.data_path / "adapters" / ".staging" / f"cycle{cycle}" / name
    shutil.rmtree(staging, ignore_errors=True)
    budget = plan_budget(len(train), training, incremental=previous is not None)
    run_id = start_run(
        registry.pool, settings, name, len(train), budget, sleep_cycle=cycle,
        kind="cerebellum" if name == CEREBELLUM else "adapter",
        dataset=None if dataset is None else dataset["dataset"],
    )  # fmt: skip
    try:
        result = train_adapter(
            llm.model,
            llm.tokenizer,
            train,
            training,
            AdapterShape.from_config(training),
            staging,
            prompt,
            init_from=None if previous is None else previous.path,
            omega=omega,
            control=control,
            checkpoint=staging.parent / f"{name}.checkpoint",
            on_progress=lambda p: phase(
                f"training {name} step {p.step}/{p.steps} (loss {p.loss:.3f}, ETA {p.eta_s:.0f} s)"
            ),
            held_out=held_out or None,
            recall=range(len(taught)),  # the corrections and liked answers: exactly
        )
    except BaseException as exc:
        finish_run(registry.pool, run_id, None, exc)
        raise
    finish_run(registry.pool, run_id, result)
    phase(f"gating {name}")
    candidate = PeftModel.from_pretrained(llm.model, str(staging))
    try:
        after = losses(candidate)
        # What tonight taught is what the next nights must protect; rehearsed samples were
        # counted in the nights that taught them.
        new = [item.chat()["messages"] for item in group] + imported_train
        samples = [encode_example(llm.tokenizer, m, prompt, 512)[0] for m in new]
        new_omega = mas.accumulate(omega, mas.importance(candidate, "default", samples))
    finally:
        candidate.unload()
    mas.save(new_omega, staging / "mas_omega.safetensors")
    _write_probe(staging / "probe.jsonl", (probe + new)[-PROBE_LIMIT:])

    improved = after[0] <= before[0] * (1 - training.gate_min_improvement)
    retention_before = None if before[1] is None else math.exp(-before[1])
    retention_after = None if after[1] is None else math.exp(-after[1])
    retained = (
        retention_before is None
        or retention_after is None
        or retention_after >= retention_before - training.retention_tolerance
    )
    trained = result.metrics()
    report: dict[str, Any] = {
        "samples": len(group),
        "rehearsed": len(rehearse),
        **(
            {}
            if dataset is None
            else {
                "dataset": dataset["dataset"],
                "dataset_sha256": dataset["sha256"],
                "dataset_examples": len(imported),
            }
        ),
        "train": len(train),
        "validation": len(validation),
        "previous_version": None if previous is None else previous.version,
        **{
            k: trained[k]
            for k in (
                "steps",
                "steps_done",
                "budget",
                "stopped",
                "recalled",
                "losses",
                "seconds",
                "tokens",
                "tokens_per_s",
                "resumed_at_step",
            )
        },  # fmt: skip
        "validation_loss": {"before": round(before[0], 5), "after": round(after[0], 5)},
        "retention_score": {"before": retention_before, "after": retention_after},
        "base_unchanged": result.base_sha256_before == result.base_sha256_after,
        "sleep_cycle": cycle,
    }
    phase(f"trained {name}: {result.stop_reason}")
    reason = []
    if not improved:
        reason.append(
            f"validation loss {after[0]:.4f} is not {training.gate_min_improvement:.0%} "
            f"below {before[0]:.4f}"
        )
    if not retained:
        reason.append(
            f"retention score fell from {retention_before:.3f} to {retention_after:.3f} "
            f"(tolerance {training.retention_tolerance})"
        )
    if not reason:
        phase(f"publishing {name}")
        try:
            report["published"] = publish(name, staging, centroid, report)
            report["verdict"] = "published"
            record_version(registry.pool, run_id, int(report["published"]))
        except NpllmError as exc:  # refused by the daemon (cap, smoke test, ...): kept as is
            report["verdict"] = f"not published: {exc}"
    else:
        kept = registry.add_version(name, staging, centroid=centroid, metrics=report,
                                    check_capacity=False)  # fmt: skip
        registry.refuse(kept, "; ".join(reason), {})
        report["verdict"] = "rejected: " + "; ".join(reason)
        report["candidate_version"] = kept.version
        record_version(registry.pool, run_id, kept.version)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(staging.parent / f"{name}.checkpoint", ignore_errors=True)
    return report


def _datasets_to_train(
    pool: Any, registry: Registry, routed: set[str]
) -> dict[str, dict[str, Any]]:
    """Imported datasets go to their adapter — the one trained on it (`adapters.dataset`),
    else the adapter of the dataset's name — when that adapter trains this cycle anyway,
    or has no version for this base yet, or its active version predates the dataset's
    import. adapter name → {"dataset", "sha256"}."""
    listing = {a["name"]: a for a in registry.listing()}
    owner = {a["dataset"]: a["name"] for a in listing.values() if a["dataset"]}
    wanted = {}
    for d in datasets.list_datasets(pool):
        name = owner.get(d["name"], d["name"])
        if name == CEREBELLUM:  # not an adapter name: `npllm adapter train` can use it
            continue
        active = next(
            (v for v in listing.get(name, {}).get("versions", []) if v["status"] == "active"),
            None,
        )
        current = registry.current(name)
        learned = (
            current is not None
            and active is not None
            and (
                active["metrics"].get("dataset_sha256") == d["sha256"]
                or (
                    listing[name]["dataset"] == d["name"]
                    and datetime.fromisoformat(active["created_at"])
                    >= datetime.fromisoformat(d["created_at"])
                )
            )
        )
        if name in routed or not learned:
            wanted[name] = {"dataset": d["name"], "sha256": d["sha256"]}
    return wanted


def _resumable(pool: Any, staging_root: Path, sha: str) -> tuple[int, dict[str, Any]] | None:
    """The latest cycle, if it was interrupted and left its plan (and checkpoints) for
    the same base weights: (its id, its plan)."""
    row = bookkeeping.latest_cycle(pool)
    if row is None or row[1] != "interrupted":
        return None
    path = staging_root / f"cycle{row[0]}" / "plan.json"
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return (int(row[0]), plan) if plan.get("base_sha256") == sha else None


def _write_plan(staging: Path, plan: dict[str, Any]) -> None:
    """The cycle's sample, routing and finished adapters, written atomically."""
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / "plan.json.tmp"
    tmp.write_text(json.dumps(plan))
    os.replace(tmp, staging / "plan.json")


def _read_probe(version: Version | None) -> list[list[dict[str, str]]]:
    path = None if version is None else version.path / "probe.jsonl"
    if path is None or not path.exists():
        return []
    return [json.loads(line)["messages"] for line in path.read_text().splitlines() if line]


def _write_probe(path: Path, examples: list[list[dict[str, str]]]) -> None:
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in examples))


def _read_omega(version: Version | None) -> mas.Matrices | None:
    path = None if version is None else version.path / "mas_omega.safetensors"
    if path is None or not path.exists():
        return None
    return mas.load(path)
