"""Training jobs: an adapter from an imported dataset, recorded in npllm.training_runs.

Runs in the process that calls it (the `npllm adapter train` command, later the sleep
worker) — never in the serving daemon, which only loads the result. The job loads its
own copy of the base LLM, trains into a staging directory under the data dir and
records the run (settings, loss per step, time, base weights hash before and after).
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
from consolidation.trainer import Progress, plan_steps, train_adapter
from npllm.adapters import AdapterShape, BaseIdentity, check_name
from npllm.config import Settings
from npllm.errors import ConsolidationError

_START = """
INSERT INTO npllm.training_runs (kind, adapter, dataset, examples, steps, metrics)
VALUES ('adapter', %(adapter)s, %(dataset)s, %(examples)s, %(steps)s, %(metrics)s)
RETURNING id
"""
_FINISH = """
UPDATE npllm.training_runs
SET status = %(status)s, metrics = metrics || %(metrics)s, error = %(error)s,
    base_sha256_before = %(before)s, base_sha256_after = %(after)s, finished_at = now()
WHERE id = %(id)s
"""
_VERSION = "UPDATE npllm.training_runs SET version = %(version)s WHERE id = %(id)s"


@dataclass(frozen=True)
class Trained:
    run_id: int
    path: Path  # the staging directory holding the new adapter
    centroid: Any
    metrics: dict[str, Any]
    base: BaseIdentity  # the base LLM it was trained on


def train_from_dataset(
    settings: Settings,
    pool: Any,
    name: str,
    dataset: str,
    on_progress: Callable[[Progress], None] | None = None,
    nice: int = 10,
) -> Trained:
    """Train adapter `name` on imported dataset `dataset` into a staging directory."""
    from npllm.embeddings import load_embedder
    from npllm.llm import load_base_llm

    check_name(name)
    check_dataset_name(dataset)
    examples = [e["messages"] for e in dataset_examples(pool, dataset)]
    config = settings.training
    shape = AdapterShape.from_config(config)
    steps = plan_steps(len(examples), config)
    with pool.connection() as conn:
        run_id = conn.execute(
            _START,
            {
                "adapter": name,
                "dataset": dataset,
                "examples": len(examples),
                "steps": steps,
                "metrics": Jsonb({"settings": config.model_dump(), "shape": shape.to_dict()}),
            },
        ).fetchone()[0]  # type: ignore[index]
    if nice:
        os.nice(nice)  # yield the CPU to the daemon answering questions
    staging = settings.data_path / "adapters" / ".staging" / f"{name}-run{run_id}"
    try:
        llm = load_base_llm(settings)
        centroid = dataset_centroid(pool, load_embedder(settings), dataset)
        result = train_adapter(
            llm.model,
            llm.tokenizer,
            examples,
            config,
            shape,
            staging,
            settings.memory.system_prompt,
            on_progress=on_progress,
        )
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _finish(pool, run_id, "failed", {}, f"{type(exc).__name__}: {exc}", None, None)
        raise
    if result.base_sha256_before != result.base_sha256_after:
        _finish(pool, run_id, "failed", result.metrics(), "base weights changed", None, None)
        raise ConsolidationError("training changed the base LLM's weights; nothing published")
    metrics = result.metrics()
    _finish(
        pool,
        run_id,
        "succeeded",
        metrics,
        None,
        result.base_sha256_before,
        result.base_sha256_after,
    )
    return Trained(run_id, staging, centroid, metrics, BaseIdentity(llm.model_id, llm.fingerprint))


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
            },
        )
