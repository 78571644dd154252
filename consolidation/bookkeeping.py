"""The ``npllm.sleep_cycles`` rows: one per cycle, with its phase, status and metrics.

A cycle's worker writes its row (`start_cycle` → `set_phase` … → `finish_cycle`); the
daemon, the CLI and the API read them (`recent_cycles`, `cycle_running`). One cycle runs
at a time: `refuse_if_running` checks before a cycle starts, and the database holds at
most one 'running' row (sql/007_one_running_cycle.sql). A 'running' row whose worker
died (kill -9, crash, power loss) is marked 'interrupted' by the writers
(`mark_interrupted`); `recent_cycles` only reads, and reports such a row as it will read
once marked.
"""

from __future__ import annotations

import os
from typing import Any

from psycopg.types.json import Jsonb

from npllm.errors import ConsolidationError

WORKER_DIED = "its worker stopped without finishing (killed or crashed)"

_START = """
INSERT INTO npllm.sleep_cycles (trigger, seed, base_sha256_before, pid, resumed_from)
VALUES (%(trigger)s, %(seed)s, %(sha)s, %(pid)s, %(resumed_from)s) RETURNING id
"""
_RUNNING = "SELECT id, pid FROM npllm.sleep_cycles WHERE status = 'running'"
_LATEST = "SELECT id, status FROM npllm.sleep_cycles ORDER BY id DESC LIMIT 1"
_INTERRUPTED = """
UPDATE npllm.sleep_cycles
SET status = 'interrupted', finished_at = now(), error = %(error)s
WHERE id = %(id)s AND status = 'running'
"""
_PHASE = "UPDATE npllm.sleep_cycles SET phase = %(phase)s WHERE id = %(id)s"
_FINISH = """
UPDATE npllm.sleep_cycles
SET status = %(status)s, phase = 'done', samples = %(samples)s, metrics = %(metrics)s,
    error = %(error)s, base_sha256_after = %(sha)s, finished_at = now()
WHERE id = %(id)s
"""
_UNTRAINABLE = """
INSERT INTO npllm.sleep_cycles (trigger, seed, status, phase, error, pid, finished_at)
VALUES (%(trigger)s, %(seed)s, 'failed', 'done', %(error)s, %(pid)s, now()) RETURNING id
"""
_RECENT = """
SELECT id, trigger, status, phase, samples, resumed_from, pid, started_at, finished_at, error,
       metrics, now() AS checked_at
FROM npllm.sleep_cycles ORDER BY id DESC LIMIT %(limit)s
"""


def start_cycle(pool: Any, trigger: str, seed: int, sha: str, resumed_from: int | None) -> int:
    """The 'running' row of a cycle this process starts; its id. Raises
    psycopg.errors.UniqueViolation when another cycle is running."""
    args = {"trigger": trigger, "seed": seed, "sha": sha, "pid": os.getpid(),
            "resumed_from": resumed_from}  # fmt: skip
    with pool.connection() as conn:
        row = conn.execute(_START, args).fetchone()
    return int(row[0]) if row else 0


def set_phase(pool: Any, cycle: int, phase: str) -> None:
    with pool.connection() as conn:
        conn.execute(_PHASE, {"id": cycle, "phase": phase})


def finish_cycle(
    pool: Any,
    cycle: int,
    status: str,
    samples: int,
    metrics: dict[str, Any],
    error: str | None,
    sha: str,
) -> None:
    """Close the cycle's row: its status ('succeeded', 'failed', 'interrupted'), metrics
    and the base weights hash after it."""
    with pool.connection() as conn:
        conn.execute(
            _FINISH,
            {"id": cycle, "status": status, "samples": samples, "metrics": Jsonb(metrics),
             "error": error, "sha": sha},
        )  # fmt: skip


def latest_cycle(pool: Any) -> tuple[int, str] | None:
    """The newest cycle's (id, status)."""
    with pool.connection() as conn:
        row = conn.execute(_LATEST).fetchone()
    return None if row is None else (int(row[0]), row[1])


def refuse_untrainable(pool: Any, settings: Any, trigger: str, seed: int | None) -> None:
    """A base that transformers cannot dequantise is served but never trained: each cycle
    is recorded as failed with the reason (so `npllm sleep --status` and psql say it), and
    nothing else happens."""
    from npllm.llm import untrainable_reason
    from npllm.weights import resolve

    reason = untrainable_reason(resolve(settings.models.base, "models.base"))
    if reason is None:
        return
    error = f"the base model cannot be trained: {reason}"
    with pool.connection() as conn:
        row = conn.execute(
            _UNTRAINABLE,
            {"trigger": trigger, "seed": seed or 0, "error": error, "pid": os.getpid()},
        ).fetchone()
    raise ConsolidationError(f"sleep cycle {row[0]} did not train: {error}")


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


def recent_cycles(pool: Any, limit: int = 5) -> list[dict[str, Any]]:
    """The latest npllm.sleep_cycles rows, newest first; timestamps as ISO text.

    Read-only (GET /v1/sleep calls it): a 'running' row whose worker is dead is reported
    as `mark_interrupted` will write it — status 'interrupted', finished now, the error
    saying why — without writing it."""
    with pool.connection() as conn:
        cur = conn.execute(_RECENT, {"limit": limit})
        names = [c.name for c in cur.description or []]
        cycles = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    for c in cycles:
        checked_at = c.pop("checked_at")
        if c["status"] == "running" and not _alive(c["pid"]):
            c.update(status="interrupted", finished_at=checked_at, error=WORKER_DIED)
        for key in ("started_at", "finished_at"):
            c[key] = c[key].isoformat() if c[key] else None
    return cycles


def mark_interrupted(pool: Any) -> list[int]:
    """Mark cycles whose worker died (kill -9, crash, power loss) as interrupted."""
    dead = [cycle for cycle, pid in _running(pool) if not _alive(pid)]
    with pool.connection() as conn:
        for cycle in dead:
            conn.execute(_INTERRUPTED, {"id": cycle, "error": WORKER_DIED})
    return dead
