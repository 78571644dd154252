"""Datasets in the chat "messages" JSONL format, the one common fine-tuning tools read.

One example per line::

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

Roles are system, user and assistant; an example has at least one non-empty user turn
and ends with a non-empty assistant turn (the text to learn). Imports are validated as
a whole first and stored all-or-nothing as a named dataset (``npllm.datasets`` and
``npllm.dataset_examples``); exports come from a named dataset or from the replay buffer
(the interaction's conversation followed by its training target: the user's corrected
answer when there is one, else the answer).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from npllm import adapters
from npllm.errors import NotFoundError, RequestError, StorageError
from npllm.replay import TIERS
from npllm.text import text_problem

ROLES = ("system", "user", "assistant")
MAX_REPORTED = 20

_EXISTS = "SELECT id FROM npllm.datasets WHERE name = %(name)s"
_CREATE = """
INSERT INTO npllm.datasets (name, origin, examples, sha256)
VALUES (%(name)s, %(origin)s, %(examples)s, %(sha256)s)
RETURNING id, created_at
"""
_ADD = """
INSERT INTO npllm.dataset_examples (dataset_id, line_no, messages)
VALUES (%(dataset_id)s, %(line_no)s, %(messages)s)
"""
_LIST = """
SELECT name, origin, examples, sha256, created_at FROM npllm.datasets ORDER BY name
"""
_EXAMPLES = """
SELECT e.messages FROM npllm.dataset_examples e
WHERE e.dataset_id = %(dataset_id)s ORDER BY e.line_no
"""
_DELETE = "DELETE FROM npllm.datasets WHERE name = %(name)s"
_REPLAY = """
SELECT i.messages, npllm.training_target(r.corrected_answer, i.answer) AS target
FROM npllm.replay_buffer r
JOIN npllm.interactions i ON i.id = r.interaction_id
WHERE r.tier = ANY(%(tiers)s) AND r.superseded_by IS NULL
  AND (%(tags)s::text[] IS NULL OR r.tags && %(tags)s::text[])
  AND btrim(npllm.training_target(r.corrected_answer, i.answer)) <> ''
ORDER BY r.interaction_id
"""


def check_name(name: str) -> str:
    """Dataset names follow the adapter name rule: `[a-z0-9][a-z0-9_-]{0,62}`."""
    return adapters.check_name(name, "dataset")


def example_problem(obj: Any) -> str | None:
    """Why `obj` is not a valid chat example, or None when it is."""
    if not isinstance(obj, dict):
        return 'expected a JSON object like {"messages": [...]}'
    extra = sorted(set(obj) - {"messages"})
    if extra:
        return f"unknown key {extra[0]!r} (only 'messages' is read)"
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages[{i}] must be an object with 'role' and 'content'"
        if set(m) != {"role", "content"}:
            keys = ", ".join(sorted(map(str, m))) or "none"
            return f"messages[{i}] must have exactly 'role' and 'content' (has {keys})"
        if m["role"] not in ROLES:
            return f"messages[{i}].role is {m['role']!r}; roles are {', '.join(ROLES)}"
        if not isinstance(m["content"], str):
            return f"messages[{i}].content must be a string"
        problem = text_problem(m["content"])
        if problem:
            return f"messages[{i}].content {problem}"
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        return "no non-empty user message"
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        return "the last message must be a non-empty assistant message (the text to learn)"
    return None


@dataclass(frozen=True)
class Parsed:
    examples: list[tuple[int, list[dict[str, str]]]]  # (line number, messages)
    sha256: str


def parse_jsonl(data: bytes) -> Parsed:
    """Validate every line; raise one RequestError listing the bad lines (and store nothing)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"the file is not UTF-8 (byte {exc.start})", param="body") from exc
    examples: list[tuple[int, list[dict[str, str]]]] = []
    problems: list[str] = []
    # Lines end at "\n" only: str.splitlines() also breaks at U+2028, U+0085 and other
    # characters that JSON strings may hold raw.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {line_no}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        problem = example_problem(obj)
        if problem:
            problems.append(f"line {line_no}: {problem}")
        else:
            examples.append((line_no, obj["messages"]))
    if problems:
        shown = problems[:MAX_REPORTED]
        more = len(problems) - len(shown)
        tail = f"; and {more} more bad line(s)" if more else ""
        raise RequestError(
            f"nothing imported: {len(problems)} bad line(s): " + "; ".join(shown) + tail,
            param="body",
        )
    if not examples:
        raise RequestError("nothing imported: the file has no examples", param="body")
    return Parsed(examples, hashlib.sha256(data).hexdigest())


def import_dataset(pool: ConnectionPool, name: str, data: bytes) -> dict[str, Any]:
    """Validate `data` (JSONL) and store it as dataset `name`, all or nothing."""
    check_name(name)
    parsed = parse_jsonl(data)
    with pool.connection() as conn, conn.transaction():
        if conn.execute(_EXISTS, {"name": name}).fetchone():
            raise RequestError(
                f"dataset {name!r} already exists; delete it first (`npllm dataset delete "
                f"{name}`) or import under another name",
                param="name",
            )
        row = conn.execute(
            _CREATE,
            {
                "name": name,
                "origin": "import",
                "examples": len(parsed.examples),
                "sha256": parsed.sha256,
            },
        ).fetchone()
        if row is None:
            raise StorageError("INSERT ... RETURNING gave no row")
        with conn.cursor() as cur:
            cur.executemany(
                _ADD,
                [
                    {"dataset_id": row[0], "line_no": line_no, "messages": Jsonb(messages)}
                    for line_no, messages in parsed.examples
                ],
            )
    return {
        "name": name,
        "examples": len(parsed.examples),
        "sha256": parsed.sha256,
        "created_at": row[1].isoformat(),
    }


def list_datasets(pool: ConnectionPool) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        rows = conn.execute(_LIST).fetchall()
    return [
        {
            "name": r[0],
            "origin": r[1],
            "examples": r[2],
            "sha256": r[3],
            "created_at": r[4].isoformat(),
        }
        for r in rows
    ]


def delete_dataset(pool: ConnectionPool, name: str) -> None:
    check_name(name)
    with pool.connection() as conn:
        if conn.execute(_DELETE, {"name": name}).rowcount == 0:
            raise NotFoundError(f"no dataset named {name!r}", param="name")


def dataset_examples(pool: ConnectionPool, name: str) -> list[dict[str, Any]]:
    """The examples of dataset `name`, in file order."""
    check_name(name)
    with pool.connection() as conn:
        row = conn.execute(_EXISTS, {"name": name}).fetchone()
        if row is None:
            raise NotFoundError(f"no dataset named {name!r}", param="name")
        rows = conn.execute(_EXAMPLES, {"dataset_id": row[0]}).fetchall()
    return [{"messages": messages} for (messages,) in rows]


def replay_examples(
    pool: ConnectionPool, tiers: Sequence[str] = ("premium", "standard"), tags: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The replay buffer as chat examples: conversation + training target."""
    unknown = sorted(set(tiers) - set(TIERS))
    if unknown:
        raise RequestError(
            f"unknown tier {unknown[0]!r}; tiers are {', '.join(TIERS)}", param="tier"
        )
    with pool.connection() as conn:
        rows = conn.execute(
            _REPLAY, {"tiers": list(tiers), "tags": list(tags) if tags else None}
        ).fetchall()
    return [
        {"messages": [*messages, {"role": "assistant", "content": target}]}
        for messages, target in rows
    ]


def to_jsonl(example: dict[str, Any]) -> str:
    """One JSONL line (UTF-8 kept as is, so the file reads naturally)."""
    return json.dumps(example, ensure_ascii=False) + "\n"


def dataset_centroid(pool: ConnectionPool, embedder: Any, name: str) -> Any:
    """The normalised mean embedding of a dataset's user questions (its last user turns)."""
    import numpy as np

    questions = [
        next(m["content"] for m in reversed(e["messages"]) if m["role"] == "user")
        for e in dataset_examples(pool, name)
    ]
    mean = np.asarray(embedder.embed(questions)).mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-8)
