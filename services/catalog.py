"""What the daemon has stored, for a person browsing it: the newest memories, and one
adapter's versions with what each learned from (`npllm memories list`, `npllm adapter
show`). Read-only named queries; the owners of these rows (npllm.memory, npllm.versions)
write them."""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from npllm.errors import NotFoundError

_RECENT_MEMORIES = """
SELECT id, text, kind, source, created_at, use_count, decayed_at
FROM npllm.memories
WHERE %(kind)s::text IS NULL OR kind = %(kind)s
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
"""
_ADAPTER = """
SELECT name, description, tags, status, base_model, dataset, created_at, updated_at
FROM npllm.adapters WHERE name = %(name)s AND kind = 'adapter'
"""
# Each version with the training run that made it (the newest, should there be several).
_VERSIONS = """
SELECT v.version, v.status, v.status_reason AS reason, v.created_at, v.activated_at,
       v.dataset, v.metrics - 'losses' AS metrics,
       (v.metrics ->> 'sleep_cycle')::bigint AS sleep_cycle,
       r.id AS run_id, r.examples AS run_examples, r.steps AS run_steps,
       r.status AS run_status, r.dataset AS run_dataset
FROM npllm.model_versions v
LEFT JOIN LATERAL (
    SELECT id, examples, steps, status, dataset FROM npllm.training_runs t
    WHERE t.adapter = v.adapter AND t.version = v.version ORDER BY t.id DESC LIMIT 1
) r ON true
WHERE v.adapter = %(name)s
ORDER BY v.version
"""
# The questions each version was taught (its routing keys of kind 'question' name the
# interaction they came from), and whether the user had corrected that answer.
_LEARNED = """
SELECT k.version, k.interaction_id, k.text AS question,
       rb.corrected_answer IS NOT NULL AS corrected
FROM npllm.routing_keys k
LEFT JOIN npllm.replay_buffer rb ON rb.interaction_id = k.interaction_id
WHERE k.adapter = %(name)s AND k.kind = 'question'
ORDER BY k.version, k.interaction_id NULLS LAST, k.id
"""


def recent_memories(pool: ConnectionPool, kind: str | None, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` memories (of `kind`, if given), newest first."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_RECENT_MEMORIES, {"kind": kind, "limit": limit}).fetchall()
    return [{**r, "created_at": r["created_at"].isoformat(), "decayed_at": _iso(r["decayed_at"])}
            for r in rows]  # fmt: skip


def adapter_history(pool: ConnectionPool, name: str) -> dict[str, Any]:
    """Adapter `name`: its row, and every version with its metrics, the training run that
    made it and the interactions it learned from. NotFoundError when there is none."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        adapter = cur.execute(_ADAPTER, {"name": name}).fetchone()
        if adapter is None:
            raise NotFoundError(
                f"no adapter named {name!r}; `npllm adapter list` shows them", param="name"
            )
        versions = cur.execute(_VERSIONS, {"name": name}).fetchall()
        learned = cur.execute(_LEARNED, {"name": name}).fetchall()
    taught: dict[int, list[dict[str, Any]]] = {}
    for row in learned:
        item = {k: row[k] for k in ("interaction_id", "question", "corrected")}
        taught.setdefault(row["version"], []).append(item)
    return {
        **{k: _iso(v) for k, v in adapter.items()},
        "tags": list(adapter["tags"]),
        "versions": [_version(v, taught.get(v["version"], [])) for v in versions],
    }


def _version(row: dict[str, Any], learned: list[dict[str, Any]]) -> dict[str, Any]:
    run = None
    if row["run_id"] is not None:
        run = {
            "id": row["run_id"],
            "examples": row["run_examples"],
            "steps": row["run_steps"],
            "status": row["run_status"],
            "dataset": row["run_dataset"],
        }
    keep = ("version", "status", "reason", "created_at", "activated_at", "dataset", "metrics")
    return {
        **{k: _iso(row[k]) for k in keep},
        "sleep_cycle": row["sleep_cycle"],
        "training_run": run,
        "learned_from": learned,
    }


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value
