"""The adapter population over time: every decision about which adapters exist and serve,
as a row a person reads in psql (``npllm.adapter_population``, sql/016_adapter_population.sql).

    merged    adapters consolidated into another (consolidation/: the night's merge step)
    retired   an adapter no served answer was routed to for ``sleep.retire_idle_days``:
              no longer served or routed to, every version kept (`idle`, Registry.retire)
    restored  a retired (or merged-away) adapter served again: a version of it was
              published — by a night, by hand, or `npllm adapter rollback NAME`
              (Registry.activate writes it)
    centroid  where an adapter routes from moved when a version was published: the cosine
              between the old and the new centroid (only when below CENTROID_MOVED)

`record` writes one row (inside the caller's transaction when given a connection);
`listing` reads them back, newest first. "Used" means chosen for a served answer: an entry
of ``npllm.routing_decisions.chosen`` (routed by the modulator or pinned by the request).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from npllm.config import check_days
from npllm.errors import RequestError, StorageError

Decision = Literal["merged", "retired", "restored", "centroid"]
DECISIONS: tuple[str, ...] = ("merged", "retired", "restored", "centroid")

# Below this cosine between an adapter's old and new centroid, it moved: a `centroid` row.
CENTROID_MOVED = 0.999

_RECORD = """
INSERT INTO npllm.adapter_population (decision, adapters, merged_into, sleep_cycle, reason,
                                      details)
VALUES (%(decision)s, %(adapters)s, %(merged_into)s, %(sleep_cycle)s, %(reason)s, %(details)s)
RETURNING id
"""
_LIST = """
SELECT id, decision, adapters, merged_into, sleep_cycle, reason, details, at
FROM npllm.adapter_population
WHERE (%(adapter)s::text IS NULL OR %(adapter)s = ANY(adapters) OR merged_into = %(adapter)s)
  AND (%(decision)s::text IS NULL OR decision = %(decision)s)
ORDER BY at DESC, id DESC
LIMIT %(limit)s
"""
# The decision that left `name` out of serving, if the latest about it did: 'retired', or
# 'merged' into another adapter (a later 'restored' row undoes either).
_OUT = """
SELECT decision, at FROM npllm.adapter_population
WHERE %(name)s = ANY(adapters) AND decision IN ('retired', 'merged', 'restored')
  AND (decision <> 'merged' OR merged_into IS DISTINCT FROM %(name)s)
ORDER BY at DESC, id DESC LIMIT 1
"""
# Served adapters (an active version for this base) with when each was last chosen for a
# served answer and when its active version was published; idle since the later of the two.
_IDLE = """
WITH served AS (
    SELECT v.adapter, v.version, coalesce(v.activated_at, v.created_at) AS published
    FROM npllm.model_versions v JOIN npllm.adapters a ON a.name = v.adapter
    WHERE v.status = 'active' AND a.status = 'active' AND a.kind = 'adapter'
      AND v.base_fingerprint = %(fingerprint)s
), used AS (
    SELECT c ->> 'name' AS adapter, max(d.created_at) AS last_used
    FROM npllm.routing_decisions d CROSS JOIN LATERAL jsonb_array_elements(d.chosen) c
    WHERE c ->> 'name' IN (SELECT adapter FROM served)
    GROUP BY 1
)
SELECT s.adapter, s.version, s.published, u.last_used,
       greatest(s.published, coalesce(u.last_used, s.published)) AS idle_since
FROM served s LEFT JOIN used u ON u.adapter = s.adapter
WHERE greatest(s.published, coalesce(u.last_used, s.published)) < %(cutoff)s
ORDER BY s.adapter
"""


def record(
    pool: Any,
    decision: Decision,
    adapters: list[str],
    reason: str,
    sleep_cycle: int | None = None,
    merged_into: str | None = None,
    details: dict[str, Any] | None = None,
) -> int:
    """Write one decision row; its id. `pool`: a connection pool, or an open connection
    (the row is then part of the caller's transaction: it commits with the change it
    explains). `adapters`: the adapters the decision is about (one, except for merged);
    `reason`: a sentence a person reads; `sleep_cycle`: the cycle that took it (None: the
    daemon or a user); `merged_into`: for merged; `details`: figures, as JSON."""
    if decision not in DECISIONS:
        raise RequestError(
            f"unknown population decision {decision!r}: one of {', '.join(DECISIONS)}",
            param="decision",
        )
    if not adapters or not reason.strip():
        raise RequestError("a population decision names its adapters and says why")
    if (decision == "merged") != (merged_into is not None):
        raise RequestError("merged_into is given for a merged decision, and only for one")
    params = {
        "decision": decision,
        "adapters": list(adapters),
        "merged_into": merged_into,
        "sleep_cycle": sleep_cycle,
        "reason": reason,
        "details": Jsonb(details or {}),
    }
    if isinstance(pool, psycopg.Connection):
        row = pool.execute(_RECORD, params).fetchone()
    else:
        with pool.connection() as conn:
            row = conn.execute(_RECORD, params).fetchone()
    if row is None:  # INSERT ... RETURNING returns its row unless the server failed
        raise StorageError("the database did not return the new decision's id")
    return int(row[0])


def listing(
    pool: Any, adapter: str | None = None, decision: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Decision rows, newest first: about `adapter` (in `adapters` or `merged_into`) and of
    `decision`, when given; timestamps as ISO text."""
    if decision is not None and decision not in DECISIONS:
        raise RequestError(
            f"unknown population decision {decision!r}: one of {', '.join(DECISIONS)}",
            param="decision",
        )
    params = {"adapter": adapter, "decision": decision, "limit": limit}
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_LIST, params).fetchall()
    return [{**r, "at": r["at"].isoformat()} for r in rows]


def left_serving(conn: Any, name: str) -> tuple[str, datetime] | None:
    """(decision, when) if the latest population decision about `name` took it out of
    serving (retired, or merged into another adapter) and none restored it since."""
    row = conn.execute(_OUT, {"name": name}).fetchone()
    if row is None or row[0] == "restored":
        return None
    return row[0], row[1]


@dataclass(frozen=True)
class Idle:
    """A served adapter no answer was routed to for at least the configured days."""

    name: str
    version: int  # its active version
    published: datetime  # when that version was published
    last_used: datetime | None  # the last served answer it was chosen for (None: never)
    days: float  # idle that long at `now`

    @property
    def reason(self) -> str:
        used = (
            f"last chosen for an answer {self.last_used:%Y-%m-%d %H:%M}"
            if self.last_used is not None
            else "never chosen for an answer"
        )
        return (
            f"unused for {self.days:.0f} days ({used}; v{self.version} published "
            f"{self.published:%Y-%m-%d %H:%M}); its versions are kept — publishing one, or "
            f"`npllm adapter rollback {self.name}`, serves it again"
        )

    def details(self, limit_days: int) -> dict[str, Any]:
        return {
            "version": self.version,
            "published": self.published.isoformat(),
            "last_used": None if self.last_used is None else self.last_used.isoformat(),
            "idle_days": round(self.days, 2),
            "retire_idle_days": limit_days,
        }


def idle(pool: Any, fingerprint: str, days: int, now: datetime) -> list[Idle]:
    """Served adapters (an active version for the base `fingerprint`) that no served
    answer was routed to for at least `days` days at `now`, counted from the later of their
    last use and their active version's publish time (0 days: none, never retired)."""
    if check_days(days, "sleep.retire_idle_days") == 0:
        return []
    cutoff = now - timedelta(days=days)
    with pool.connection() as conn:
        rows = conn.execute(_IDLE, {"fingerprint": fingerprint, "cutoff": cutoff}).fetchall()
    return [Idle(r[0], int(r[1]), r[2], r[3], (now - r[4]).total_seconds() / 86400) for r in rows]
