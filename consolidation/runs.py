"""Training runs: the ``npllm.training_runs`` bookkeeping and the `npllm adapter train` job.

Every training — a sleep cycle's adapter or cerebellum, or an adapter trained from an
imported dataset — is one ``npllm.training_runs`` row: `start_run` before it starts (its
budget and settings), `finish_run` when it ends (loss per step, time, base weights hash
before and after, or the error), `record_version` once its version exists. The training
loop itself is consolidation/trainer.py's `train_adapter`.

`train_from_dataset` is the `npllm adapter train` job. It runs in the process that calls
it (the CLI command) — never in the serving daemon, which only loads the result: it loads
its own copy of the base LLM and trains into a staging directory under the data dir.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from consolidation.datasets import check_name as check_dataset_name
from consolidation.datasets import dataset_centroid, dataset_examples
from consolidation.publisher import Trained
from consolidation.trainer import Budget, Progress, TrainResult, plan_budget, train_adapter
from npllm.adapters import AdapterShape, check_name
from npllm.config import Settings, TrainingConfig
from npllm.errors import ConsolidationError
from npllm.versions import BaseIdentity, Registry

_START = """
INSERT INTO npllm.training_runs (kind, adapter, dataset, examples, steps, budget, metrics,
                                 sleep_cycle)
VALUES (%(kind)s, %(adapter)s, %(dataset)s, %(examples)s, %(steps)s, %(budget)s, %(metrics)s,
        %(sleep_cycle)s)
RETURNING id
"""
_FINISH = """
UPDATE npllm.training_runs
SET status = %(status)s, metrics = metrics || %(metrics)s, error = %(error)s,
    base_sha256_before = %(before)s, base_sha256_after = %(after)s, finished_at = now(),
    steps_done = %(steps_done)s, stopped = %(stopped)s
WHERE id = %(id)s
"""
_VERSION = "UPDATE npllm.training_runs SET version = %(version)s WHERE id = %(id)s"


@dataclass(frozen=True)
class DatasetRun:
    """What `train_from_dataset` made: its training run, the staging directory holding the
    new adapter, the version to publish (from that directory) and the base LLM it was
    trained on."""

    run_id: int
    staging: Path
    trained: Trained
    base: BaseIdentity


def train_from_dataset(
    settings: Settings,
    pool: Any,
    name: str,
    dataset: str,
    on_progress: Callable[[Progress], None] | None = None,
    nice: int = 10,
    description: str = "",
) -> DatasetRun:
    """Train adapter `name` on imported dataset `dataset` into a staging directory, to be
    published as described by `description`. A new adapter over the cap
    (modulator.max_adapters) is refused before anything is trained."""
    from npllm.embeddings import load_embedder
    from npllm.llm import load_base_llm, model_identity

    check_name(name)
    check_dataset_name(dataset)
    Registry.for_settings(pool, settings, BaseIdentity(*model_identity(settings))).check_capacity(
        name
    )
    examples = [e["messages"] for e in dataset_examples(pool, dataset)]
    config = settings.training
    shape = AdapterShape.from_config(config)
    train, held_out = split_held_out(examples, config)
    run_id = start_run(
        pool, settings, name, len(examples), plan_budget(len(train), config), dataset=dataset
    )
    if nice:
        os.nice(nice)  # yield the CPU to the daemon answering questions
    staging = settings.data_path / "adapters" / ".staging" / f"{name}-run{run_id}"
    try:
        llm = load_base_llm(settings)
        centroid = dataset_centroid(pool, load_embedder(settings), dataset)
        result = train_adapter(
            llm.model,
            llm.tokenizer,
            train,
            config,
            shape,
            staging,
            settings.memory.system_prompt,
            on_progress=on_progress,
            held_out=held_out or None,
        )
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        finish_run(pool, run_id, None, exc)
        raise
    metrics = finish_run(pool, run_id, result)
    trained = Trained(
        kind="adapter",
        name=name,
        path=staging,
        centroid=centroid,
        metrics=metrics,
        dataset=dataset,
        description=description,
    )
    return DatasetRun(run_id, staging, trained, BaseIdentity(llm.model_id, llm.fingerprint))


def start_run(
    pool: Any,
    settings: Settings,
    adapter: str,
    examples: int,
    budget: Budget,
    *,
    kind: str = "adapter",
    dataset: str | None = None,
    sleep_cycle: int | None = None,
) -> int:
    """A npllm.training_runs row for a run about to start (its budget and settings)."""
    shape = AdapterShape.from_config(settings.training)
    with pool.connection() as conn:
        row = conn.execute(
            _START,
            {
                "kind": kind,
                "adapter": adapter,
                "dataset": dataset,
                "examples": examples,
                "steps": budget.steps,
                "budget": budget.reason,
                "metrics": Jsonb(
                    {"settings": settings.training.model_dump(), "shape": shape.to_dict()}
                ),
                "sleep_cycle": sleep_cycle,
            },
        ).fetchone()
    if row is None:
        raise ConsolidationError("the database did not return the training run's id")
    return int(row[0])


def finish_run(
    pool: Any, run_id: int, result: TrainResult | None, error: BaseException | None = None
) -> dict[str, Any]:
    """Record how run `run_id` ended (its metrics, why it stopped, the base hashes); a
    changed base is a failure. Returns the metrics."""
    if result is None:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        _finish(pool, run_id, status, {}, f"{type(error).__name__}: {error}", None, None)
        return {}
    metrics = result.metrics()
    if result.base_sha256_before != result.base_sha256_after:
        _finish(pool, run_id, "failed", metrics, "base weights changed", None, None)
        raise ConsolidationError("training changed the base LLM's weights; nothing published")
    _finish(pool, run_id, "succeeded", metrics, None, result.base_sha256_before,
            result.base_sha256_after)  # fmt: skip
    return metrics


def split_held_out(examples: list[Any], config: TrainingConfig) -> tuple[list[Any], list[Any]]:
    """(training, held-out) examples: 1 in 5 held out once there are
    ``training.held_out_min_examples``; a smaller set is trained whole (and must be recalled
    exactly instead, see consolidation/trainer.py)."""
    if len(examples) < config.held_out_min_examples:
        return examples, []
    return [e for k, e in enumerate(examples) if k % 5], examples[::5]


def record_version(pool: Any, run_id: int, version: int) -> None:
    with pool.connection() as conn:
        conn.execute(_VERSION, {"id": run_id, "version": version})


def _finish(
    pool: Any,
    run_id: int,
    status: str,
    metrics: dict[str, Any],
    error: str | None,
    before: str | None,
    after: str | None,
) -> None:
    with pool.connection() as conn:
        conn.execute(
            _FINISH,
            {
                "id": run_id,
                "status": status,
                "metrics": Jsonb(metrics),
                "error": error,
                "before": before,
                "after": after,
                "steps_done": metrics.get("steps_done"),
                "stopped": metrics.get("stopped"),
            },
        )
