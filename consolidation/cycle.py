"""One consolidation cycle: replay buffer → datasets → MAS-regularised training → gate →
publish. Runs in a worker process (``npllm sleep --now``), never in the daemon.

1. Sample the replay buffer (prioritised, premium + standard, seeded) and keep what can
   be learned: the user's correction, or an answer whose reward is positive.
2. Route each sample to the active (or stale: trained for another base, so rebuilt
   afresh) adapter whose centroid is nearest its question (at least
   ``modulator.none_similarity`` alike); the rest form new adapters, one per topic tag,
   named ``auto-<tag>-c<cycle>`` — so a fresh install learns from its first night.
3. Per adapter: train the next version from the active one (or a fresh adapter) with
   loss + λ·Σ Ω·(ΔW − ΔW*)² (consolidation/mas.py), Ω being the importance accumulated
   over its earlier cycles and stored with the version.
4. Gate: the validation loss must improve by ``training.gate_min_improvement`` over the
   active version (the bare base for a new adapter) and the retention score —
   exp(−loss) on the probe set of earlier cycles' examples — may drop by at most
   ``training.retention_tolerance``. Passing versions are published through the daemon's
   hot swap (or registered when it is not running); the others stay ``candidate`` with
   the reason. Fewer than 10 samples leave nothing to hold out: validation then uses
   the training examples (it checks that they were learned).
5. The cerebellum (npllm/cerebellum.py; unless ``cerebellum.role = "off"``) is trained,
   gated and published the same way on the samples of quality at least
   ``cerebellum.min_quality`` (all topics), on its own model, under the name
   ``cerebellum``.
6. With ``modulator.train`` (off by default) the modulator is trained on the logged
   routing decisions and their rewards, and published only when an off-policy estimate
   says it routes better (consolidation/routing.py).
7. Mark the samples with the cycle; record everything in ``npllm.sleep_cycles``.

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
from psycopg.types.json import Jsonb

from consolidation import datasets, mas, routing
from consolidation.trainer import chat_loss, encode_example, train_adapter, yielding
from npllm import modulator, replay
from npllm.adapters import CEREBELLUM, AdapterShape, Registry, Version
from npllm.config import Settings
from npllm.errors import ConsolidationError, ModelError, NotFoundError
from npllm.llm import BaseLLM, weights_sha256
from npllm.modulator import Modulator

Publish = Callable[[str, Path, "np.ndarray | None", dict[str, Any]], Any]
PROBE_LIMIT = 200  # examples kept per adapter for the retention probe
MIN_HELD_OUT = 10

_START = """
INSERT INTO npllm.sleep_cycles (trigger, seed, base_sha256_before, pid, resumed_from)
VALUES (%(trigger)s, %(seed)s, %(sha)s, %(pid)s, %(resumed_from)s) RETURNING id
"""
_RUNNING = "SELECT id, pid FROM npllm.sleep_cycles WHERE status = 'running'"
_LATEST = "SELECT id, status FROM npllm.sleep_cycles ORDER BY id DESC LIMIT 1"
_INTERRUPTED = """
UPDATE npllm.sleep_cycles
SET status = 'interrupted', finished_at = now(),
    error = 'its worker stopped without finishing (killed or crashed)'
WHERE id = %(id)s AND status = 'running'
"""
_PHASE = "UPDATE npllm.sleep_cycles SET phase = %(phase)s WHERE id = %(id)s"
_FINISH = """
UPDATE npllm.sleep_cycles
SET status = %(status)s, phase = 'done', samples = %(samples)s, metrics = %(metrics)s,
    error = %(error)s, base_sha256_after = %(sha)s, finished_at = now()
WHERE id = %(id)s
"""


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
    args = {
        "trigger": trigger,
        "seed": seed if resume is None else resume[1]["seed"],
        "sha": sha_before,
        "pid": os.getpid(),
        "resumed_from": None if resume is None else resume[0],
    }
    try:
        with pool.connection() as conn:
            row = conn.execute(_START, args).fetchone()
    except psycopg.errors.UniqueViolation:  # another cycle started meanwhile
        refuse_if_running(pool)
        raise
    cycle = int(row[0]) if row else 0
    staging = staging_root / f"cycle{cycle}"
    plan: dict[str, Any] = {}
    if resume is not None:
        os.replace(staging_root / f"cycle{resume[0]}", staging)
        plan = resume[1]

    def phase(text: str) -> None:
        with pool.connection() as conn:
            conn.execute(_PHASE, {"id": cycle, "phase": text})
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
            items = replay.fetch(pool, plan["items"])
            by_id = {i.interaction_id: i for i in items}
            groups = {
                name: (
                    [by_id[k] for k in g["items"] if k in by_id],
                    np.asarray(g["centroid"], np.float32),
                )
                for name, g in plan["groups"].items()
            }
            metrics["resumed_from"] = plan["cycle"]
        else:
            phase("sampling")
            items = [
                i
                for i in replay.sample(pool, settings.sleep.max_samples, seed=seed)
                if i.corrected_answer is not None or i.reward > 0
            ]
            groups = _route(items, registry, embedder, settings, cycle)
            wanted = _datasets_to_train(pool, registry, set(groups))
            for name, d in wanted.items():
                if name not in groups:  # trained from its dataset alone
                    centroid = datasets.dataset_centroid(pool, embedder, d["dataset"])
                    groups[name] = ([], centroid)
            plan = {
                "seed": seed,
                "base_sha256": sha_before,
                "items": [i.interaction_id for i in items],
                "groups": {
                    name: {"items": [i.interaction_id for i in g], "centroid": c.tolist()}
                    for name, (g, c) in groups.items()
                },
                "datasets": wanted,
                "done": {},
            }
        plan["cycle"] = cycle
        _write_plan(staging, plan)
        for name, (group, centroid) in groups.items():
            if name in plan["done"]:  # finished before the cycle it continues was killed
                metrics["adapters"][name] = plan["done"][name]
                continue
            metrics["adapters"][name] = _consolidate(
                settings,
                llm,
                registry,
                name,
                group,
                centroid,
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
                settings, pool, registry, cycle, int(args["seed"] or 0), publish_modulator, phase
            )
            plan["modulator"] = metrics["modulator"]
            _write_plan(staging, plan)
        if items:
            replay.mark_sampled(pool, [i.interaction_id for i in items], cycle)
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
        with pool.connection() as conn:
            conn.execute(
                _FINISH,
                {
                    "id": cycle,
                    "status": status,
                    "samples": len(items),
                    "metrics": Jsonb(metrics),
                    "error": error,
                    "sha": sha_after,
                },
            )
    return metrics


def refuse_if_running(pool: Any) -> None:
    """One cycle at a time (also enforced by the database: sql/007_one_running_cycle.sql).
    Cycles whose worker died are marked interrupted first."""
    mark_interrupted(pool)
    running = _running(pool)
    if running:
        cycle, pid = running[0]
        raise ConsolidationError(
            f"sleep cycle {cycle} is already running (pid {pid}); one cycle runs at a time: "
            "wait for it to end (`npllm sleep --status`)"
        )


def _running(pool: Any) -> list[tuple[int, int | None]]:
    with pool.connection() as conn:
        return [(int(r[0]), r[1]) for r in conn.execute(_RUNNING).fetchall()]


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cycle_running(pool: Any, cycle: int) -> bool:
    """Is `cycle` still running, with its worker alive?"""
    mark_interrupted(pool)
    return any(c == cycle for c, _ in _running(pool))


def mark_interrupted(pool: Any) -> list[int]:
    """Mark cycles whose worker died (kill -9, crash, power loss) as interrupted."""
    dead = [cycle for cycle, pid in _running(pool) if not _alive(pid)]
    with pool.connection() as conn:
        for cycle in dead:
            conn.execute(_INTERRUPTED, {"id": cycle})
    return dead


def _route(
    items: list[replay.ReplayItem],
    registry: Registry,
    embedder: Any,
    settings: Settings,
    cycle: int,
) -> dict[str, tuple[list[replay.ReplayItem], np.ndarray]]:
    """adapter name → (its samples, its centroid)."""
    if not items:
        return {}
    vectors = np.asarray(embedder.embed([i.question for i in items]))  # (items, dim)
    # Stale adapters (trained for another base) are rebuilt from the samples they attract:
    # they have no current version for this base, so they are trained afresh.
    active = [(v.adapter, c) for v, c in registry.active() if c is not None]
    active += registry.stale_centroids()
    groups: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        best, score = None, settings.modulator.none_similarity
        for name, centroid in active:
            similarity = float(vectors[k] @ centroid)
            if similarity >= score:
                best, score = name, similarity
        if best is None:
            tag = item.tags[0] if item.tags else "general"
            best = f"auto-{tag}-c{cycle}"
        groups.setdefault(best, []).append(k)
    routed = {}
    for name, rows in groups.items():
        mean = vectors[rows].mean(axis=0)
        routed[name] = ([items[k] for k in rows], mean / max(float(np.linalg.norm(mean)), 1e-8))
    return routed


def _cerebellum(
    settings: Settings,
    items: list[replay.ReplayItem],
    cerebellum: tuple[BaseLLM, Registry],
    cycle: int,
    publish: Publish,
    phase: Callable[[str], None],
    control: Callable[[], None] | None,
) -> dict[str, Any]:
    """Train the cerebellum on the well-rated samples of every topic (see the module doc)."""
    model, registry = cerebellum
    chosen = [i for i in items if i.quality >= settings.cerebellum.min_quality]
    if len(chosen) < settings.cerebellum.min_examples:
        return {
            "samples": len(chosen),
            "verdict": f"skipped: {len(chosen)} samples of quality >= "
            f"{settings.cerebellum.min_quality}, fewer than cerebellum.min_examples = "
            f"{settings.cerebellum.min_examples}",
        }
    return _consolidate(
        settings, model, registry, CEREBELLUM, chosen, None, cycle, publish, phase, control
    )


def _modulator(
    settings: Settings,
    pool: Any,
    registry: Registry,
    cycle: int,
    seed: int,
    publish: Callable[[int, int], Any] | None,
    phase: Callable[[str], None],
) -> dict[str, Any]:
    """Train the modulator on the logged routing decisions (consolidation/routing.py) and
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
    report = routing.consolidate(settings, pool, current, cycle, seed)
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
    centroid: np.ndarray | None,
    cycle: int,
    publish: Publish,
    phase: Callable[[str], None],
    control: Callable[[], None] | None,
    dataset: dict[str, Any] | None = None,
    pool: Any = None,
) -> dict[str, Any]:
    from peft import PeftModel

    training = settings.training
    prompt = settings.memory.system_prompt
    examples = [item.chat()["messages"] for item in group]
    if dataset is not None:  # the adapter's imported dataset is trained with its samples
        try:
            imported = datasets.dataset_examples(pool, dataset["dataset"])
        except NotFoundError:  # deleted since the cycle was planned
            imported = []
        examples += [e["messages"] for e in imported[: settings.sleep.max_samples]]
    if not examples:
        return {
            "samples": 0,
            "verdict": f"skipped: dataset {dataset and dataset['dataset']!r} is gone",
        }
    if len(examples) >= MIN_HELD_OUT:
        validation = examples[::5]
        train = [e for k, e in enumerate(examples) if k % 5]
    else:
        validation = train = examples
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
    )
    phase(f"gating {name}")
    candidate = PeftModel.from_pretrained(llm.model, str(staging))
    try:
        after = losses(candidate)
        samples = [encode_example(llm.tokenizer, m, prompt, 512)[0] for m in train]
        new_omega = mas.accumulate(omega, mas.importance(candidate, "default", samples))
    finally:
        candidate.unload()
    mas.save(new_omega, staging / "mas_omega.safetensors")
    _write_probe(staging / "probe.jsonl", (probe + train)[-PROBE_LIMIT:])

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
        **(
            {}
            if dataset is None
            else {
                "dataset": dataset["dataset"],
                "dataset_sha256": dataset["sha256"],
                "dataset_examples": len(examples) - len(group),
            }
        ),
        "train": len(train),
        "validation": len(validation),
        "previous_version": None if previous is None else previous.version,
        **{
            k: trained[k]
            for k in ("losses", "seconds", "tokens", "tokens_per_s", "resumed_at_step")
        },
        "validation_loss": {"before": round(before[0], 5), "after": round(after[0], 5)},
        "retention_score": {"before": retention_before, "after": retention_after},
        "base_unchanged": result.base_sha256_before == result.base_sha256_after,
        "sleep_cycle": cycle,
    }
    if improved and retained:
        phase(f"publishing {name}")
        report["published"] = publish(name, staging, centroid, report)
        report["verdict"] = "published"
    else:
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
        kept = registry.add_version(name, staging, centroid=centroid, metrics=report)
        registry.refuse(kept, "; ".join(reason), {})
        report["verdict"] = "rejected: " + "; ".join(reason)
        report["candidate_version"] = kept.version
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
    with pool.connection() as conn:
        row = conn.execute(_LATEST).fetchone()
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
