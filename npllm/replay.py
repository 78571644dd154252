"""The replay buffer: what the sleep cycle learns from, in ``npllm.replay_buffer``.

Every interaction joins the buffer when it is answered (:func:`admit`), with its
novelty and topic tags; feedback (npllm/feedback.py) then moves its reward, tier and
priority. The sleep cycle draws from it with :func:`sample` and marks what it used
with :func:`mark_sampled`.

Priority (a generated column, so psql shows the same number the sampler uses; defined
once, as the SQL function ``npllm.replay_priority`` of sql/018_one_priority_one_target.sql)::

    priority = 0                                          if tier = 'discard'
             = (0.1 + 0.9 * ((quality + 1) / 2) ** 2)     satisfaction, 0.1 .. 1
               * (0.75 + 0.25 * novelty)                  novelty, 0.75 .. 1
               / (1 + times_sampled)                      each replay lowers it

Satisfaction dominates: an unrated answer (quality 0) weighs 0.325, a corrected or
well-rated one (quality 1) 1.0; novelty (1 - similarity to the nearest earlier
question) breaks ties among equally satisfying ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psycopg_pool import ConnectionPool

from npllm.config import FeedbackConfig
from npllm.embeddings import Embedder
from npllm.errors import RequestError

TIERS = ("premium", "standard", "discard")

_NOVELTY = """
SELECT 1 - (question_embedding <=> %(embedding)s) AS similarity
FROM npllm.interactions
WHERE id < %(id)s AND question_embedding IS NOT NULL
ORDER BY question_embedding <=> %(embedding)s
LIMIT 1
"""
_ADMIT = """
INSERT INTO npllm.replay_buffer (interaction_id, novelty, tags)
VALUES (%(id)s, %(novelty)s, %(tags)s)
ON CONFLICT (interaction_id) DO NOTHING
"""
_CANDIDATES = """
SELECT r.interaction_id, r.priority
FROM npllm.replay_buffer r
WHERE r.tier = ANY(%(tiers)s) AND r.priority > 0 AND r.superseded_by IS NULL
  AND (%(tags)s::text[] IS NULL OR r.tags && %(tags)s::text[])
  AND (%(min_quality)s::real IS NULL OR r.quality >= %(min_quality)s::real)
  AND (NOT %(new_only)s OR r.trained_at IS NULL OR r.updated_at > r.trained_at)
  AND (%(liked_tries)s = 0 OR r.corrected_answer IS NOT NULL
       OR r.missed_nights < %(liked_tries)s)
  AND (%(adapter)s::text IS NULL OR (r.adapter = %(adapter)s::text
                                     AND r.trained_at IS NOT NULL
                                     AND r.updated_at <= r.trained_at))
  AND NOT r.interaction_id = ANY(%(exclude)s::bigint[])
ORDER BY r.interaction_id
"""
_DETAILS = """
SELECT r.interaction_id, i.messages, i.question, i.answer, r.corrected_answer, r.reward,
       r.quality, r.tier, r.tags, r.priority, r.times_sampled, i.question_embedding
FROM npllm.replay_buffer r
JOIN npllm.interactions i ON i.id = r.interaction_id
WHERE r.interaction_id = ANY(%(ids)s)
"""
_MARK = """
UPDATE npllm.replay_buffer r
SET times_sampled = times_sampled + 1, last_sleep_cycle = %(cycle)s,
    adapter = coalesce(m.adapter, r.adapter), trained_at = now(), updated_at = now()
FROM unnest(%(ids)s::bigint[], %(adapters)s::text[]) AS m(id, adapter)
WHERE r.interaction_id = m.id
"""


class TopicTagger:
    """Tags a question with the configured topics nearest its meaning."""

    def __init__(self, embedder: Embedder, config: FeedbackConfig) -> None:
        self.names = list(config.tags)
        phrases = [
            (i, phrase.strip())
            for i, text in enumerate(config.tags.values())
            for phrase in text.split(";")
            if phrase.strip()
        ]
        self._owner = np.array([i for i, _ in phrases])
        self._phrases = embedder.embed([p for _, p in phrases])  # (phrases, dim), normalised
        self.min_similarity = config.tag_min_similarity
        self.margin = config.tag_margin

    def similarities(self, embedding: np.ndarray) -> np.ndarray:
        """Best similarity to each tag's phrases, shape (tags,)."""
        per_phrase = self._phrases @ embedding  # (phrases,)
        best = np.full(len(self.names), -1.0)
        np.maximum.at(best, self._owner, per_phrase)
        return best

    def tags(self, embedding: np.ndarray) -> list[str]:
        """The best tag, plus a second one within `tag_margin` of it (none if all are far)."""
        sims = self.similarities(embedding)
        order = np.argsort(-sims)
        top = float(sims[order[0]])
        if top < self.min_similarity:
            return []
        chosen = [self.names[order[0]]]
        if len(order) > 1 and top - float(sims[order[1]]) <= self.margin:
            chosen.append(self.names[order[1]])
        return chosen


def admit(conn: Any, interaction_id: int, embedding: np.ndarray, tags: list[str]) -> float:
    """Add a just-recorded interaction to the buffer, unrated; returns its novelty."""
    row = conn.execute(_NOVELTY, {"id": interaction_id, "embedding": embedding}).fetchone()
    novelty = 1.0 if row is None else min(1.0, max(0.0, 1.0 - float(row[0])))
    conn.execute(_ADMIT, {"id": interaction_id, "novelty": novelty, "tags": tags})
    return novelty


@dataclass(frozen=True)
class ReplayItem:
    """One sampled interaction, ready to become a training example."""

    interaction_id: int
    messages: list[dict[str, str]]  # the request's conversation, ending with the user turn
    question: str
    answer: str
    corrected_answer: str | None
    reward: float
    quality: float
    tier: str
    tags: list[str]
    priority: float
    times_sampled: int
    # Interactions it stands for: drawn after it and skipped as its duplicates (the same
    # question and target, or questions as alike as dedup_similarity).
    duplicates: list[int] = field(default_factory=list)

    @property
    def target(self) -> str:
        """What to learn: the user's correction when there is one, else the answer (the rule
        of the SQL function npllm.training_target, which every query uses;
        tests/npllm/test_replay.py checks they agree)."""
        return self.corrected_answer if self.corrected_answer is not None else self.answer

    def chat(self) -> dict[str, list[dict[str, str]]]:
        """The example in the chat "messages" format."""
        return {"messages": [*self.messages, {"role": "assistant", "content": self.target}]}


def sample(
    pool: ConnectionPool,
    n: int,
    *,
    seed: int,
    tiers: Sequence[str] = ("premium", "standard"),
    tags: Sequence[str] | None = None,
    min_quality: float | None = None,
    dedup_similarity: float = 0.97,
    new_only: bool = False,
    adapter: str | None = None,
    exclude: Sequence[int] = (),
    liked_tries: int = 0,
) -> list[ReplayItem]:
    """Draw up to `n` interactions without replacement, with probability ∝ priority.

    Reproducible: the same buffer and seed give the same sample. Duplicates are skipped
    (same question and target text, or question embeddings at or above
    `dedup_similarity`), keeping the higher-priority draw. Uses weighted random keys
    (Efraimidis & Spirakis 2006): key = log(u) / priority, largest first.
    `new_only`: rows no night has trained on yet, or changed since (a later correction):
    what a sleep cycle learns. `adapter`: rows that adapter learned before and that have
    not changed since: what it rehearses. `exclude`: interaction ids left out.
    `liked_tries` (0: no limit): rows without a correction that this many published nights
    tried and did not serve as taught (`missed_nights`, see `mark_missed`) are left out."""
    unknown = set(tiers) - set(TIERS)
    if unknown:
        raise RequestError(
            f"unknown tier(s) {sorted(unknown)}; tiers are {', '.join(TIERS)}", param="tier"
        )
    if n <= 0:
        return []
    with pool.connection() as conn:
        rows = conn.execute(
            _CANDIDATES,
            {
                "tiers": list(tiers),
                "tags": list(tags) if tags else None,
                "min_quality": min_quality,
                "new_only": new_only,
                "adapter": adapter,
                "exclude": list(exclude),
                "liked_tries": liked_tries,
            },
        ).fetchall()
        if not rows:
            return []
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        priority = np.array([r[1] for r in rows], dtype=np.float64)
        keys = np.log(np.random.default_rng(seed).random(len(ids))) / priority
        order = ids[np.argsort(-keys, kind="stable")]
        return _distinct(conn, order, n, dedup_similarity)


def fetch(pool: ConnectionPool, interaction_ids: Sequence[int]) -> list[ReplayItem]:
    """These interactions as replay items, in the given order (deleted ones left out):
    how a resumed sleep cycle gets back the sample of the cycle it continues."""
    with pool.connection() as conn:
        rows = conn.execute(_DETAILS, {"ids": list(interaction_ids)}).fetchall()
    by_id = {row[0]: _item(row) for row in rows}
    return [by_id[i] for i in interaction_ids if i in by_id]


def _distinct(conn: Any, order: np.ndarray, n: int, dedup_similarity: float) -> list[ReplayItem]:
    chosen: list[ReplayItem] = []
    seen_text: dict[str, int] = {}  # fingerprint → index in chosen
    kept: list[np.ndarray] = []  # embeddings of chosen items (those that have one)
    owners: list[int] = []  # index in chosen of each kept embedding
    batch = max(2 * n, 64)
    for start in range(0, len(order), batch):
        ids = [int(i) for i in order[start : start + batch]]
        by_id = {row[0]: row for row in conn.execute(_DETAILS, {"ids": ids}).fetchall()}
        for interaction_id in ids:
            row = by_id.get(interaction_id)
            if row is None:  # deleted meanwhile
                continue
            item = _item(row)
            fingerprint = _fingerprint(item.question, item.target)
            embedding = None if row[11] is None else np.asarray(row[11].to_list())
            twin = seen_text.get(fingerprint)
            if twin is None and embedding is not None and kept:
                scores = np.stack(kept) @ embedding
                if float(scores.max()) >= dedup_similarity:
                    twin = owners[int(scores.argmax())]
            if twin is not None:  # the draw it duplicates stands for it
                chosen[twin].duplicates.append(interaction_id)
                continue
            if len(chosen) == n:
                return chosen
            seen_text[fingerprint] = len(chosen)
            if embedding is not None:
                kept.append(embedding)
                owners.append(len(chosen))
            chosen.append(item)
    return chosen


def _item(row: Sequence[Any]) -> ReplayItem:
    return ReplayItem(
        interaction_id=row[0],
        messages=list(row[1]),
        question=row[2],
        answer=row[3],
        corrected_answer=row[4],
        reward=float(row[5]),
        quality=float(row[6]),
        tier=row[7],
        tags=list(row[8]),
        priority=float(row[9]),
        times_sampled=row[10],
    )


def _fingerprint(question: str, target: str) -> str:
    normal = " ".join(question.lower().split()) + "\x00" + " ".join(target.lower().split())
    return hashlib.sha256(normal.encode()).hexdigest()


_ASKED = """
SELECT i.id, (
    SELECT count(*) FROM (
        SELECT j.question_embedding <=> i.question_embedding AS distance
        FROM npllm.interactions j WHERE j.question_embedding IS NOT NULL
        ORDER BY j.question_embedding <=> i.question_embedding LIMIT 64
    ) near WHERE near.distance <= %(distance)s
)
FROM npllm.interactions i
WHERE i.id = ANY(%(ids)s) AND i.question_embedding IS NOT NULL
"""


def times_asked(
    pool: ConnectionPool, interaction_ids: Sequence[int], similarity: float
) -> dict[int, int]:
    """How often each interaction's question was asked: interactions whose questions are at
    least `similarity` alike, itself included (counted up to 64). What makes an answer a
    routine the cerebellum learns."""
    if not interaction_ids:
        return {}
    with pool.connection() as conn:
        rows = conn.execute(
            _ASKED, {"ids": list(interaction_ids), "distance": 1.0 - similarity}
        ).fetchall()
    return {int(r[0]): int(r[1]) for r in rows}


def learned_count(pool: ConnectionPool, adapter: str) -> int:
    """How many replay rows `adapter` has learned (npllm.replay_buffer.adapter)."""
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM npllm.replay_buffer WHERE adapter = %(adapter)s",
            {"adapter": adapter},
        ).fetchone()
    return int(row[0]) if row else 0


def tier_counts(pool: ConnectionPool) -> dict[str, int]:
    """How many interactions each tier holds (every tier present, zeros included)."""
    with pool.connection() as conn:
        rows = conn.execute("SELECT tier, count(*) FROM npllm.replay_buffer GROUP BY tier")
        found: dict[str, int] = dict(rows.fetchall())
    return {tier: int(found.get(tier, 0)) for tier in TIERS}


def overview(pool: ConnectionPool) -> list[dict[str, Any]]:
    """The npllm.replay_overview view's rows (per tier, and per tier and tag), means as floats."""
    with pool.connection() as conn:
        cur = conn.execute("SELECT * FROM npllm.replay_overview")
        names = [c.name for c in cur.description or []]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    for row in rows:
        for key in ("mean_reward", "mean_quality"):
            row[key] = None if row[key] is None else float(row[key])
    return rows


def superseded(pool: ConnectionPool, interaction_ids: Sequence[int]) -> set[int]:
    """Which of these interactions a later correction of the same question superseded."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT interaction_id FROM npllm.replay_buffer "
            "WHERE interaction_id = ANY(%(ids)s) AND superseded_by IS NOT NULL",
            {"ids": list(interaction_ids)},
        ).fetchall()
    return {int(r[0]) for r in rows}


def mark_new(pool: ConnectionPool, interaction_ids: Sequence[int]) -> int:
    """These rows are to be learned again (a night's version no longer reproduces them):
    the next night samples them as new; they keep the adapter that learned them."""
    with pool.connection() as conn:
        return conn.execute(
            "UPDATE npllm.replay_buffer SET trained_at = NULL WHERE interaction_id = ANY(%(ids)s)",
            {"ids": list(interaction_ids)},
        ).rowcount


def mark_missed(pool: ConnectionPool, interaction_ids: Sequence[int]) -> int:
    """A published night trained on these rows as new and did not serve them as taught:
    one more missed night each (a liked answer is let go at `sleep.liked_tries`)."""
    with pool.connection() as conn:
        return conn.execute(
            "UPDATE npllm.replay_buffer SET missed_nights = missed_nights + 1 "
            "WHERE interaction_id = ANY(%(ids)s)",
            {"ids": list(interaction_ids)},
        ).rowcount


def mark_sampled(
    pool: ConnectionPool,
    interaction_ids: Iterable[int],
    cycle: int | None,
    adapters: Mapping[int, str] | None = None,
) -> int:
    """Record that sleep cycle `cycle` trained on these rows (lowers their priority; they
    are no longer new), and which adapter learned each (`adapters`: interaction id → name;
    rows not in it keep the adapter they had)."""
    ids = list(interaction_ids)
    names = [(adapters or {}).get(i) for i in ids]
    with pool.connection() as conn:
        return conn.execute(_MARK, {"ids": ids, "adapters": names, "cycle": cycle}).rowcount
