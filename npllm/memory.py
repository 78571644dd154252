"""Long-term memories in the hippocampus (``npllm.memories``), searched by meaning.

Texts are chunked, embedded and stored; a chunk nearly identical to an existing
memory (cosine similarity >= ``memory.dedup_similarity``) is merged into it
instead of being stored twice. Search is a pgvector HNSW cosine top-k with a
similarity floor; what the awake path retrieves (:meth:`MemoryStore.relevant`) must also
be within ``memory.relevance_margin`` of the best hit, so that a weakly related note
does not ride along with the memory the question is really about.

Exchange memories never recalled again decay out of retrieval (`decay`, run by the night:
``memory.decay_days``); their rows stay, with ``decayed_at`` saying when.

The fast learner: a user's correction of an answer corrects the hippocampus at once
(:meth:`MemoryStore.correct`): the wrong answer's exchange memory goes, and the corrected
answer is stored as a fact (replacing an earlier correction of the same question), so the
same question asked a minute later is answered from it. Negative feedback on an answer
removes its exchange (:meth:`MemoryStore.forget_exchanges`). Both run inside the
feedback's own transaction; the answer itself stays in ``npllm.interactions``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from npllm.config import MemoryConfig, check_days
from npllm.embeddings import Embedder
from npllm.errors import RequestError, StorageError
from npllm.text import check_storable

MemoryKind = Literal["note", "fact", "document", "exchange"]

_INSERT = """
INSERT INTO npllm.memories (text, kind, source, embedding, document_id, chunk_index,
                            interaction_id)
VALUES (%(text)s, %(kind)s, %(source)s, %(embedding)s, %(document_id)s, %(chunk_index)s,
        %(interaction_id)s)
RETURNING id
"""
# The nearest memory of the same kind (a note is never merged into an exchange).
_NEAREST = """
SELECT id, text, 1 - (embedding <=> %(embedding)s) AS score
FROM npllm.memories WHERE kind = %(kind)s ORDER BY embedding <=> %(embedding)s LIMIT 1
"""
_MERGE = "UPDATE npllm.memories SET merged_count = merged_count + 1 WHERE id = %(id)s"
# A note or fact restated with another value replaces the one it updates.
_REPLACE = "DELETE FROM npllm.memories WHERE id = %(id)s"
# `asked`: for an exchange, how alike the question it answered is to this one.
_SEARCH = """
SELECT nearest.id, text, kind, source, nearest.created_at, use_count, score,
       1 - (i.question_embedding <=> %(embedding)s) AS asked
FROM (
    SELECT id, text, kind, source, created_at, use_count, interaction_id,
           1 - (embedding <=> %(embedding)s) AS score
    FROM npllm.memories WHERE decayed_at IS NULL
    ORDER BY embedding <=> %(embedding)s LIMIT %(k)s
) nearest
LEFT JOIN npllm.interactions i ON i.id = nearest.interaction_id AND nearest.kind = 'exchange'
WHERE score >= %(min_score)s ORDER BY score DESC
"""
# What may go into a prompt, filtered *before* the top-k cut (pgvector's iterative index
# scan keeps reading the index until k rows pass): taught memories (notes, facts,
# documents), and a past exchange only when its answer was liked, not superseded by a
# correction, and answered the same question. An unrated answer is the model's own
# unverified guess: it never comes back (it was copied over a taught fact in testing).
_RELEVANT = """
SELECT nearest.id, text, kind, source, nearest.created_at, use_count, score,
       1 - (i.question_embedding <=> %(embedding)s) AS asked
FROM (
    SELECT m.id, m.text, m.kind, m.source, m.created_at, m.use_count, m.interaction_id,
           1 - (m.embedding <=> %(embedding)s) AS score
    FROM npllm.memories m
    WHERE m.decayed_at IS NULL AND (m.kind <> 'exchange' OR EXISTS (
        SELECT 1 FROM npllm.replay_buffer r JOIN npllm.interactions i ON i.id = r.interaction_id
        WHERE r.interaction_id = m.interaction_id AND r.reward > 0 AND r.superseded_by IS NULL
          AND 1 - (i.question_embedding <=> %(embedding)s) >= %(exchange)s))
    ORDER BY m.embedding <=> %(embedding)s LIMIT %(k)s
) nearest
LEFT JOIN npllm.interactions i ON i.id = nearest.interaction_id
    AND (nearest.kind = 'exchange' OR nearest.source LIKE 'correction:%%')
WHERE score >= %(min_score)s ORDER BY score DESC
"""
_MARK_USED = """
UPDATE npllm.memories SET use_count = use_count + 1, last_used_at = now()
WHERE id = ANY(%(ids)s)
"""
# The exchanges of these interactions: their own, and identical ones merged into an earlier
# exchange (same question, same answer); each half uses its index.
_FORGET_EXCHANGES = """
WITH target AS (
    SELECT i.id AS interaction_id, m.id AS memory_id
    FROM npllm.interactions i
    JOIN npllm.memories m ON m.interaction_id = i.id AND m.kind = 'exchange'
    WHERE i.id = ANY(%(ids)s)
    UNION
    SELECT i.id, m.id
    FROM npllm.interactions i
    JOIN npllm.memories m ON m.kind = 'exchange' AND md5(m.text) = md5(
        'Q: ' || i.question || E'\\nA: ' || regexp_replace(i.answer, '^\\s+|\\s+$', '', 'g'))
    WHERE i.id = ANY(%(ids)s)
), gone AS (
    DELETE FROM npllm.memories WHERE id IN (SELECT memory_id FROM target) RETURNING id
)
SELECT target.interaction_id, target.memory_id FROM target JOIN gone ON gone.id = target.memory_id
"""
# Earlier corrections of the same question (a second correction replaces the first).
_EARLIER_CORRECTIONS = """
DELETE FROM npllm.memories
WHERE kind = 'fact' AND source LIKE 'correction:%%'
  AND 1 - (embedding <=> %(embedding)s) >= %(similarity)s
RETURNING id
"""
# What superseded answers left in memory: their correction's fact, or their exchange.
_FORGET_SUPERSEDED = """
DELETE FROM npllm.memories
WHERE interaction_id = ANY(%(ids)s) AND kind IN ('fact', 'exchange')
RETURNING id
"""
# Exchanges not recalled for memory.decay_days leave retrieval (the row stays; see `decay`).
_DECAY = """
UPDATE npllm.memories SET decayed_at = %(now)s
WHERE kind = 'exchange' AND decayed_at IS NULL
  AND coalesce(last_used_at, created_at) < %(cutoff)s
RETURNING id
"""
_DELETE = "DELETE FROM npllm.memories WHERE id = %(id)s RETURNING id"
_COUNT = "SELECT count(*) FROM npllm.memories"


@dataclass(frozen=True)
class StoredChunk:
    id: int
    chunk_index: int
    merged: bool  # True: a near-duplicate already existed and absorbed this chunk
    replaced: int | None = None  # the memory this one updates (same words, another value)


_TOKEN = re.compile(r"[\w.:/@#$%+-]+")


# A note restated with other values is still this alike to the one it updates (MiniLM puts
# "... listens on port 5433." and "... port 6543." at 0.9, below memory.dedup_similarity).
UPDATE_SIMILARITY = 0.8


def content(text: str) -> list[str]:
    """What a memory says, for telling a duplicate from an update: its tokens, lower case,
    punctuation at their ends dropped ("port 6123." and "Port 6123" say the same)."""
    return [t.strip(".:,;-").lower() for t in _TOKEN.findall(text) if t.strip(".:,;-")]


def restates(old: str, new: str) -> bool:
    """Does `new` say what `old` says with other values? The same words in the same order
    except value-like ones (numbers, names with digits, dashes, dots or slashes)."""
    a, b = content(old), content(new)
    if len(a) != len(b) or a == b:
        return False
    return all(x == y or (_value(x) and _value(y)) for x, y in zip(a, b, strict=True))


def _value(token: str) -> bool:
    return any(not c.isalpha() for c in token)


@dataclass(frozen=True)
class Recalled:
    id: int
    text: str
    kind: str
    source: str
    score: float
    created_at: datetime
    use_count: int
    # An exchange, or a fact from a correction: how alike the question it answered is to
    # this one.
    asked: float | None = None

    @property
    def correction(self) -> str | None:
        """The corrected answer, for a fact the user taught by correcting an answer."""
        if self.kind != "fact" or not self.source.startswith("correction:"):
            return None
        return self.text.split("\nA: ", 1)[1] if "\nA: " in self.text else None


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split on paragraph, then sentence, then word boundaries into pieces <= max_chars."""
    text = text.strip()
    if len(text) <= max_chars:
        return [text] if text else []
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        units = re.split(r"(?<=[.!?])\s+", para.strip()) if len(para) > max_chars else [para]
        for unit in units:
            while len(unit) > max_chars:  # one very long sentence: cut at a space
                cut = unit.rfind(" ", 0, max_chars)
                cut = cut if cut > 0 else max_chars
                pieces.append(unit[:cut].strip())
                unit = unit[cut:]
            if unit.strip():
                pieces.append(unit.strip())
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 1 + len(piece) <= max_chars:
            chunks[-1] = f"{chunks[-1]}\n{piece}"
        else:
            chunks.append(piece)
    return chunks


def decay(pool: ConnectionPool, days: int, now: datetime) -> list[int]:
    """The decay rule: an exchange memory (an earlier answer, kind 'exchange') last recalled
    — or, never recalled, stored — more than `days` days before `now` (timezone-aware)
    leaves retrieval: its ``decayed_at`` is set to `now` and no search or recall reads it
    again. Its row stays (``UPDATE npllm.memories SET decayed_at = NULL WHERE id = …``
    brings it back), the interaction it came from is never touched, and notes, facts and
    documents never decay. `days` 0: nothing decays. Returns the ids that decayed."""
    if check_days(days, "memory.decay_days") == 0:
        return []
    with pool.connection() as conn:
        rows = conn.execute(_DECAY, {"now": now, "cutoff": now - timedelta(days=days)})
        return [int(r[0]) for r in rows.fetchall()]


class MemoryStore:
    """Add, search and forget memories."""

    def __init__(self, pool: ConnectionPool, embedder: Embedder, config: MemoryConfig) -> None:
        self.pool = pool
        self.embedder = embedder
        self.config = config

    def add(
        self,
        text: str,
        source: str = "user",
        kind: MemoryKind = "note",
        interaction_id: int | None = None,
    ) -> tuple[uuid.UUID | None, list[StoredChunk]]:
        """Store `text` (chunked if long); returns the document id (None for one chunk)."""
        check_storable(text, "text")
        check_storable(source, "source")
        chunks = chunk_text(text, self.config.chunk_chars)
        if not chunks:
            raise RequestError("a memory needs some text", param="text")
        vectors = self.embedder.embed(chunks)
        document_id = uuid.uuid4() if len(chunks) > 1 else None
        kind = "document" if document_id and kind == "note" else kind
        with self.pool.connection() as conn, conn.transaction():
            stored = [
                self._store(conn, chunk, vector, kind, source, document_id, index, interaction_id)
                for index, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True))
            ]
        return document_id, stored

    def _store(
        self,
        conn: Any,
        text: str,
        vector: np.ndarray,
        kind: str,
        source: str,
        document_id: uuid.UUID | None,
        index: int,
        interaction_id: int | None,
        merge: bool = True,
    ) -> StoredChunk:
        """One chunk, stored beside the nearest memory of its kind (when `merge`): merged
        into it when it is at least ``memory.dedup_similarity`` alike and says the same words
        (a duplicate), or replacing it when a note or fact says the same with other values
        ("... port 6123" then "... port 7000": an update, the latest wins; `restates`).
        Exchanges are never merged: each is the answer of its own interaction, and a
        correction or bad rating of that interaction must find it."""
        replaced = None
        if merge and kind != "exchange":
            nearest = conn.execute(_NEAREST, {"embedding": vector, "kind": kind}).fetchone()
            alike = -1.0 if nearest is None else float(nearest[2])
            if alike >= self.config.dedup_similarity and content(nearest[1]) == content(text):
                conn.execute(_MERGE, {"id": nearest[0]})
                return StoredChunk(int(nearest[0]), index, merged=True)
            if (
                kind in ("note", "fact")
                and alike >= UPDATE_SIMILARITY
                and restates(nearest[1], text)
            ):
                conn.execute(_REPLACE, {"id": nearest[0]})
                replaced = int(nearest[0])
        row = conn.execute(
            _INSERT,
            {
                "text": text,
                "kind": kind,
                "source": source,
                "embedding": vector,
                "document_id": document_id,
                "chunk_index": index,
                "interaction_id": interaction_id,
            },
        ).fetchone()
        if row is None:  # INSERT ... RETURNING returns its row unless the server failed
            raise StorageError("the database did not return the new memory's id")
        return StoredChunk(int(row[0]), index, merged=False, replaced=replaced)

    def correct(
        self, conn: Any, interaction_id: int, question: str, corrected: str
    ) -> dict[str, list[int]]:
        """The user corrected the answer of `interaction_id` (inside the caller's
        transaction): its exchange memory goes, earlier corrections of the same question go,
        and "Q: question / A: corrected" is stored as a fact. Ids removed and added."""
        text = f"Q: {question.strip()}\nA: {corrected.strip()}"
        vector = self.embedder.embed([text])[0]
        removed = self.forget_exchanges(conn, [interaction_id]).get(interaction_id, [])
        rows = conn.execute(
            _EARLIER_CORRECTIONS,
            {"embedding": vector, "similarity": self.config.dedup_similarity},
        ).fetchall()
        removed += [int(r[0]) for r in rows]
        fact = self._store(
            conn, text, vector, "fact", f"correction:{interaction_id}", None, 0,
            interaction_id, merge=False,
        )  # fmt: skip
        return {"removed": removed, "added": [fact.id]}

    @staticmethod
    def forget_superseded(conn: Any, interaction_ids: list[int]) -> list[int]:
        """Remove what answers superseded by a later correction left in memory (inside the
        caller's transaction): the latest correction of a question wins here too."""
        if not interaction_ids:
            return []
        return [int(r[0]) for r in conn.execute(_FORGET_SUPERSEDED, {"ids": interaction_ids})]

    @staticmethod
    def forget_exchanges(conn: Any, interaction_ids: list[int]) -> dict[int, list[int]]:
        """Remove the exchange memories of these answers (inside the caller's transaction):
        they are not retrieved any more. interaction id → memory ids removed (only those
        that had one)."""
        if not interaction_ids:
            return {}
        removed: dict[int, list[int]] = {}
        for interaction_id, memory_id in conn.execute(
            _FORGET_EXCHANGES, {"ids": interaction_ids}
        ).fetchall():
            removed.setdefault(int(interaction_id), []).append(int(memory_id))
        return removed

    def search(
        self, embedding: np.ndarray, k: int | None = None, min_score: float | None = None
    ) -> list[Recalled]:
        """The k memories most similar to `embedding`, above the similarity floor."""
        params: dict[str, Any] = {
            "embedding": embedding,
            "k": self.config.top_k if k is None else k,
            "min_score": self.config.min_similarity if min_score is None else min_score,
        }
        if params["k"] == 0:
            return []
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(_SEARCH, params).fetchall()
        return [Recalled(**row) for row in rows]

    def relevant(self, embedding: np.ndarray) -> list[Recalled]:
        """What the awake path puts into working memory: the top-k at or above
        ``memory.min_similarity`` and within ``memory.relevance_margin`` of the best hit;
        a past exchange only when its answer was liked and it answered the same question (its
        question at least ``memory.exchange_similarity`` alike): a past answer to another
        question is no help, and a small model copies it (a recalled "owned by the Tidepool
        team" became the answer to "who maintains it?" in testing). Filtered before the
        top-k cut, so exchanges never push a taught fact out."""
        params: dict[str, Any] = {
            "embedding": embedding,
            "k": self.config.top_k,
            "min_score": self.config.min_similarity,
            "exchange": self.config.exchange_similarity,
        }
        if params["k"] == 0:
            return []
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            found = [Recalled(**row) for row in cur.execute(_RELEVANT, params).fetchall()]
        if not found:
            return []
        floor = found[0].score - self.config.relevance_margin
        return [m for m in found if m.score >= floor]

    def mark_used(self, ids: list[int]) -> None:
        if ids:
            with self.pool.connection() as conn:
                conn.execute(_MARK_USED, {"ids": ids})

    def delete(self, memory_id: int) -> bool:
        with self.pool.connection() as conn:
            return conn.execute(_DELETE, {"id": memory_id}).fetchone() is not None

    def count(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute(_COUNT).fetchone()
        return int(row[0]) if row else 0
