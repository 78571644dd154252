"""Canary trials: a new adapter version serves part of its adapter's traffic beside the
version it replaces until the users' rewards say whether to keep it.

A version a sleep cycle publishes for an adapter that already serves one (for this base)
becomes the adapter's active version, and the previous one stays loaded as the **control**.
For every request routed to the adapter the trial picks an arm:

- ``taught``: the question is about what the new version was taught (inside the ball of one
  of its routing keys that the control does not have: a newly corrected question, or a
  paraphrase of one). It always gets the new version: the control cannot answer it, and a
  correction must stick overnight for everyone. These answers are not compared.
- otherwise, by a stable hash of (trial, the conversation's first user message), a share
  ``canary.share`` of the conversations get the new version (``candidate``) and the rest the
  control (``control``). A conversation keeps its arm at every turn. This is the adapter's
  earlier knowledge: where a night can break what it did not teach.

After ``canary.min_rated`` rated answers in each of the two compared arms, a one-sided
Welch test on the mean integrated reward decides: roll back when the candidate's mean is
below the control's by more than ``canary.max_drop`` at significance ``canary.alpha``,
promote otherwise. A trial still short of ratings at ``canary.max_hours`` takes
``canary.undecided`` (promote by default: the version passed the night's gate, nothing
showed harm, and rolling back would drop what it learned until the next night).
Every trial and decision is a row of ``npllm.canaries``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from psycopg.types.json import Jsonb

from npllm.config import CanaryConfig
from npllm.versions import Keys, Version

ARMS = ("candidate", "control")  # the compared arms; "taught" answers are not compared
_TAUGHT_KINDS = ("question", "paraphrase", "topic")


def conversation_key(messages: list[dict[str, str]]) -> str:
    """What identifies a conversation across its turns: its first user message."""
    return next((m["content"] for m in messages if m["role"] == "user"), "")


def bucket(trial: int, conversation: str) -> float:
    """A stable number in [0, 1) for (trial, conversation): the arm's coin."""
    digest = hashlib.sha256(f"{trial}\x00{conversation}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def new_keys(candidate: Keys, control: Keys, radius: float) -> np.ndarray:
    """The candidate's routing keys the control lacks, (k, dim): question keys from
    interactions the control was not taught from, other keys whose text it lacks, and the
    candidate's paraphrase keys within `radius` of a new question (a changed fact keeps its
    paraphrases' texts, but they now mean the new answer)."""
    seen_ids = {i for i in control.interactions if i is not None}
    seen_texts = {(k, t) for k, t in zip(control.kinds, control.texts, strict=True)}
    new = []
    for j, (kind, text, source) in enumerate(
        zip(candidate.kinds, candidate.texts, candidate.interactions, strict=True)
    ):
        if kind not in _TAUGHT_KINDS:
            continue
        if (source is not None and source not in seen_ids) or (
            source is None and (kind, text) not in seen_texts
        ):
            new.append(j)
    if not new:
        return np.zeros((0, candidate.embeddings.shape[1] if candidate.embeddings.ndim == 2 else 0),
                        np.float32)  # fmt: skip
    fresh = candidate.embeddings[new]
    questions = fresh[[candidate.kinds[j] == "question" for j in new]]
    if len(questions):
        near = [
            j
            for j, kind in enumerate(candidate.kinds)
            if kind == "paraphrase"
            and j not in new
            and float((questions @ candidate.embeddings[j]).max()) >= radius
        ]
        if near:
            fresh = np.concatenate([fresh, candidate.embeddings[near]])
    return np.asarray(fresh, np.float32)


@dataclass(frozen=True)
class Trial:
    """A running trial as served: which version each arm gets."""

    id: int
    adapter: str
    candidate: Version
    control: Version
    share: float
    taught: np.ndarray  # (k, dim) unit vectors of what only the candidate was taught
    radius: float  # modulator.scope_similarity: inside a taught key's ball

    def arm(self, conversation: str, embedding: np.ndarray) -> str:
        """taught | candidate | control (see the module docstring)."""
        if len(self.taught) and float((self.taught @ embedding).max()) >= self.radius:
            return "taught"
        return "candidate" if bucket(self.id, conversation) < self.share else "control"

    def version(self, arm: str) -> Version:
        return self.control if arm == "control" else self.candidate


# ---- the test --------------------------------------------------------------------------


def _t_cdf(t: float, df: float) -> float:
    """Student's t distribution's CDF."""
    from scipy.stats import t as student_t

    return float(student_t.cdf(t, df))


@dataclass(frozen=True)
class Verdict:
    outcome: str  # promoted | rolled_back | running
    decided_by: str | None  # test | deadline
    reason: str
    stats: dict[str, Any]


def arm_stats(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n if n else 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": round(mean, 4), "sd": round(sd, 4)}


def welch(candidate: list[float], control: list[float], max_drop: float) -> dict[str, float]:
    """One-sided Welch test of H0: mean(candidate) - mean(control) >= -max_drop against
    H1: the candidate is worse by more than max_drop. Returns the difference, t, the
    Welch–Satterthwaite df and the p-value (small: the candidate is worse)."""
    a, b = np.asarray(candidate, float), np.asarray(control, float)
    diff = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:  # every rating in each arm the same: the difference is exact
        p = 0.0 if diff < -max_drop else 1.0
        return {"diff": round(diff, 4), "t": 0.0, "df": 0.0, "p": p}
    t = (diff + max_drop) / se
    df = (va + vb) ** 2 / (
        (va**2 / (len(a) - 1) if va else 0.0) + (vb**2 / (len(b) - 1) if vb else 0.0)
    )
    p = _t_cdf(t, df) if df > 0 else (0.0 if t < 0 else 1.0)
    return {"diff": round(diff, 4), "t": round(t, 4), "df": round(df, 2), "p": round(p, 6)}


def decide(
    rewards: dict[str, list[float]], config: CanaryConfig, now: datetime, deadline: datetime
) -> Verdict:
    """What to do with a trial given each compared arm's rewards (see the module docstring)."""
    stats: dict[str, Any] = {arm: arm_stats(rewards.get(arm, [])) for arm in ARMS}
    cand, ctrl = rewards.get("candidate", []), rewards.get("control", [])
    if min(len(cand), len(ctrl)) >= config.min_rated:
        test = welch(cand, ctrl, config.max_drop)
        stats["welch"] = test
        figures = (
            f"candidate {stats['candidate']['mean']:+.3f} (n={len(cand)}) vs control "
            f"{stats['control']['mean']:+.3f} (n={len(ctrl)}), one-sided Welch p={test['p']:.4f}"
        )
        if test["p"] < config.alpha:
            return Verdict(
                "rolled_back", "test",
                f"satisfaction dropped by more than {config.max_drop}: {figures}", stats,
            )  # fmt: skip
        return Verdict("promoted", "test", f"no drop beyond {config.max_drop}: {figures}", stats)
    if now >= deadline:
        short = f"{len(cand)} and {len(ctrl)} rated answers, {config.min_rated} needed per arm"
        outcome = "promoted" if config.undecided == "promote" else "rolled_back"
        return Verdict(
            outcome, "deadline",
            f"canary.max_hours passed with too few ratings ({short}); canary.undecided is "
            f"{config.undecided!r}", stats,
        )  # fmt: skip
    return Verdict("running", None, "", stats)


# ---- the rows --------------------------------------------------------------------------

_START = """
INSERT INTO npllm.canaries (adapter, candidate, control, share, sleep_cycle, deadline)
VALUES (%(adapter)s, %(candidate)s, %(control)s, %(share)s, %(cycle)s,
        now() + make_interval(secs => %(seconds)s))
RETURNING id, started_at, deadline
"""
_SUPERSEDE = """
UPDATE npllm.canaries SET status = 'superseded', decided_by = 'superseded', decided_at = now(),
       reason = %(reason)s
WHERE adapter = %(adapter)s AND status = 'running'
RETURNING id
"""
_RUNNING = """
SELECT id, adapter, candidate, control, share, sleep_cycle, started_at, deadline
FROM npllm.canaries WHERE status = 'running' ORDER BY id
"""
# The compared arms' rewards: answers of this trial that were rated (have feedback).
_REWARDS = """
SELECT a->>'arm', r.reward::float8
FROM npllm.interactions i
JOIN npllm.replay_buffer r ON r.interaction_id = i.id
CROSS JOIN LATERAL jsonb_array_elements(i.adapters_used) a
WHERE a->>'canary' = %(id)s::text AND a->>'arm' IN ('candidate', 'control')
  AND EXISTS (SELECT 1 FROM npllm.feedback_events f WHERE f.interaction_id = i.id)
"""
_FINISH = """
UPDATE npllm.canaries SET status = %(status)s, decided_by = %(by)s, reason = %(reason)s,
       stats = %(stats)s, decided_at = now()
WHERE id = %(id)s AND status = 'running'
"""
# What a rolled-back candidate was taught is new again: the next night learns it anew.
_RELEARN = """
UPDATE npllm.replay_buffer SET trained_at = NULL
WHERE interaction_id IN (
    SELECT interaction_id FROM npllm.routing_keys
    WHERE adapter = %(adapter)s AND version = %(candidate)s AND interaction_id IS NOT NULL
    EXCEPT
    SELECT interaction_id FROM npllm.routing_keys
    WHERE adapter = %(adapter)s AND version = %(control)s AND interaction_id IS NOT NULL)
"""
_LIST = """
SELECT id, adapter, candidate, control, share, sleep_cycle, status, decided_by, reason, stats,
       started_at, deadline, decided_at
FROM npllm.canaries WHERE (%(adapter)s::text IS NULL OR adapter = %(adapter)s)
ORDER BY id DESC LIMIT %(limit)s
"""


@dataclass(frozen=True)
class Row:
    id: int
    adapter: str
    candidate: int
    control: int
    share: float
    sleep_cycle: int | None
    started_at: datetime
    deadline: datetime


class Canaries:
    """The trials' rows (npllm.canaries)."""

    def __init__(self, pool: Any, config: CanaryConfig) -> None:
        self.pool = pool
        self.config = config

    def start(
        self, adapter: str, candidate: int, control: int, share: float, cycle: int | None
    ) -> Row:
        """A new running trial (one running before it for the adapter is superseded)."""
        with self.pool.connection() as conn, conn.transaction():
            self.supersede(adapter, f"v{candidate} was published", conn)
            row = conn.execute(
                _START,
                {"adapter": adapter, "candidate": candidate, "control": control,
                 "share": share, "cycle": cycle, "seconds": self.config.max_hours * 3600},
            ).fetchone()  # fmt: skip
        assert row is not None
        return Row(int(row[0]), adapter, candidate, control, share, cycle, row[1], row[2])

    def supersede(self, adapter: str, reason: str, conn: Any = None) -> list[int]:
        if conn is None:
            with self.pool.connection() as own:
                return self.supersede(adapter, reason, own)
        rows = conn.execute(_SUPERSEDE, {"adapter": adapter, "reason": reason}).fetchall()
        return [int(r[0]) for r in rows]

    def running(self) -> list[Row]:
        with self.pool.connection() as conn:
            rows = conn.execute(_RUNNING).fetchall()
        return [Row(int(r[0]), r[1], int(r[2]), int(r[3]), float(r[4]), r[5], r[6], r[7])
                for r in rows]  # fmt: skip

    def rewards(self, trial: int) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {arm: [] for arm in ARMS}
        with self.pool.connection() as conn:
            for arm, reward in conn.execute(_REWARDS, {"id": trial}).fetchall():
                out[arm].append(float(reward))
        return out

    def judge(self, row: Row, now: datetime) -> Verdict:
        return decide(self.rewards(row.id), self.config, now, row.deadline)

    def finish(self, row: Row, status: str, by: str, reason: str, stats: dict[str, Any]) -> bool:
        """Record the decision (False: it was decided meanwhile). A rollback also marks
        what the candidate was taught as new, so the next night learns it again."""
        with self.pool.connection() as conn, conn.transaction():
            done = conn.execute(
                _FINISH,
                {"id": row.id, "status": status, "by": by, "reason": reason,
                 "stats": Jsonb(stats)},
            ).rowcount  # fmt: skip
            if done and status == "rolled_back":
                conn.execute(_RELEARN, {"adapter": row.adapter, "candidate": row.candidate,
                                        "control": row.control})  # fmt: skip
        return bool(done)

    def listing(self, adapter: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            rows = conn.execute(_LIST, {"adapter": adapter, "limit": limit}).fetchall()
        keys = (
            "id",
            "adapter",
            "candidate",
            "control",
            "share",
            "sleep_cycle",
            "status",
            "decided_by",
            "reason",
            "stats",
            "started_at",
            "deadline",
            "decided_at",
        )
        return [dict(zip(keys, r, strict=True)) for r in rows]
