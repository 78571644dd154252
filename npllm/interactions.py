"""Every answered request, stored in ``npllm.interactions`` for feedback and replay."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from npllm.errors import StorageError

_INSERT = """
INSERT INTO npllm.interactions (
    messages, question, answer, base_model, adapters_used, memory_ids, memory_scores,
    timings, prompt_tokens, completion_tokens, finish_reason, params, question_embedding
) VALUES (
    %(messages)s, %(question)s, %(answer)s, %(base_model)s, %(adapters_used)s, %(memory_ids)s,
    %(memory_scores)s, %(timings)s, %(prompt_tokens)s, %(completion_tokens)s,
    %(finish_reason)s, %(params)s, %(question_embedding)s
) RETURNING id
"""
_COUNT = "SELECT count(*) FROM npllm.interactions"


@dataclass
class Interaction:
    messages: list[dict[str, str]]
    question: str
    answer: str
    base_model: str
    question_embedding: np.ndarray
    memory_ids: list[int] = field(default_factory=list)
    memory_scores: list[float] = field(default_factory=list)
    adapters_used: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    params: dict[str, Any] = field(default_factory=dict)


def record(conn: Any, item: Interaction) -> int:
    """Store one interaction on `conn` (the caller owns the transaction); returns its id."""
    row = conn.execute(
        _INSERT,
        {
            "messages": Jsonb(item.messages),
            "question": item.question,
            "answer": item.answer,
            "base_model": item.base_model,
            "adapters_used": Jsonb(item.adapters_used),
            "memory_ids": item.memory_ids,
            "memory_scores": item.memory_scores,
            "timings": Jsonb(item.timings),
            "prompt_tokens": item.prompt_tokens,
            "completion_tokens": item.completion_tokens,
            "finish_reason": item.finish_reason,
            "params": Jsonb(item.params),
            "question_embedding": item.question_embedding,
        },
    ).fetchone()
    if row is None:
        raise StorageError("INSERT ... RETURNING gave no row (the interaction was not stored)")
    return int(row[0])


def count(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        row = conn.execute(_COUNT).fetchone()
    return int(row[0]) if row else 0


_SINCE_LAST_CYCLE = """
SELECT count(*) FROM npllm.interactions
WHERE created_at > coalesce(
    (SELECT max(started_at) FROM npllm.sleep_cycles WHERE status = 'succeeded'), '-infinity')
"""


def since_last_cycle(pool: ConnectionPool) -> int:
    """Answers stored since the last successful sleep cycle began (what it could not have
    sampled): what ``sleep.min_new_interactions`` counts. From the database, so it survives
    a restart and counts answers, not refused requests."""
    with pool.connection() as conn:
        row = conn.execute(_SINCE_LAST_CYCLE).fetchone()
    return int(row[0]) if row else 0
