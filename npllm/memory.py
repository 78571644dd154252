"""Long-term memories in the hippocampus (``npllm.memories``), searched by meaning.

Texts are chunked, embedded and stored; a chunk nearly identical to an existing
memory (cosine similarity >= ``memory.dedup_similarity``) is merged into it
instead of being stored twice. Search is a pgvector HNSW cosine top-k with a
similarity floor.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from npllm.config import MemoryConfig
from npllm.embeddings import Embedder

MemoryKind = Literal["note", "fact", "document", "exchange"]

_INSERT = """
INSERT INTO npllm.memories (text, kind, source, embedding, document_id, chunk_index)
VALUES (%(text)s, %(kind)s, %(source)s, %(embedding)s, %(document_id)s, %(chunk_index)s)
RETURNING id
"""
_NEAREST = """
SELECT id, 1 - (embedding <=> %(embedding)s) AS score
FROM npllm.memories ORDER BY embedding <=> %(embedding)s LIMIT 1
"""
_MERGE = "UPDATE npllm.memories SET merged_count = merged_count + 1 WHERE id = %(id)s"
_SEARCH = """
SELECT id, text, kind, source, created_at, use_count, score FROM (
    SELECT id, text, kind, source, created_at, use_count,
           1 - (embedding <=> %(embedding)s) AS score
    FROM npllm.memories ORDER BY embedding <=> %(embedding)s LIMIT %(k)s
) nearest WHERE score >= %(min_score)s ORDER BY score DESC
"""
_MARK_USED = """
UPDATE npllm.memories SET use_count = use_count + 1, last_used_at = now()
WHERE id = ANY(%(ids)s)
"""
_DELETE = "DELETE FROM npllm.memories WHERE id = %(id)s RETURNING id"
_COUNT = "SELECT count(*) FROM npllm.memories"


@dataclass(frozen=True)
class StoredChunk:
    id: int
    chunk_index: int
    merged: bool  # True: a near-duplicate already existed and absorbed this chunk


@dataclass(frozen=True)
class Recalled:
    id: int
    text: str
    kind: str
    source: str
    score: float
    created_at: datetime
    use_count: int


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


class MemoryStore:
    """Add, search and forget memories."""

    def __init__(self, pool: ConnectionPool, embedder: Embedder, config: MemoryConfig) -> None:
        self.pool = pool
        self.embedder = embedder
        self.config = config

    def add(
        self, text: str, source: str = "user", kind: MemoryKind = "note"
    ) -> tuple[uuid.UUID | None, list[StoredChunk]]:
        """Store `text` (chunked if long); returns the document id (None for one chunk)."""
        chunks = chunk_text(text, self.config.chunk_chars)
        if not chunks:
            raise ValueError("a memory needs some text")
        vectors = self.embedder.embed(chunks)
        document_id = uuid.uuid4() if len(chunks) > 1 else None
        kind = "document" if document_id and kind == "note" else kind
        stored = []
        with self.pool.connection() as conn, conn.transaction():
            for index, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True)):
                nearest = conn.execute(_NEAREST, {"embedding": vector}).fetchone()
                if nearest is not None and nearest[1] >= self.config.dedup_similarity:
                    conn.execute(_MERGE, {"id": nearest[0]})
                    stored.append(StoredChunk(int(nearest[0]), index, merged=True))
                    continue
                row = conn.execute(
                    _INSERT,
                    {
                        "text": chunk,
                        "kind": kind,
                        "source": source,
                        "embedding": vector,
                        "document_id": document_id,
                        "chunk_index": index,
                    },
                ).fetchone()
                assert row is not None  # INSERT ... RETURNING always returns the row
                stored.append(StoredChunk(int(row[0]), index, merged=False))
        return document_id, stored

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
