"""Text PostgreSQL can store: the one rule for every string that reaches the database.

PostgreSQL's ``text`` and ``jsonb`` cannot hold the NUL character (U+0000): an insert or
a query parameter with one fails with "PostgreSQL text fields cannot contain NUL (0x00)
bytes" (or "unsupported Unicode escape sequence" in jsonb). Nor can a lone surrogate
(U+D800–U+DFFF, which JSON's ``\\ud800`` escape spells and Python's json module decodes)
be encoded as UTF-8 for the database or the tokenizer. npllm refuses such input before
anything is written, naming the field — the API (any string of a body, a query or
a path; services/api/middleware.py), dataset files (consolidation/datasets.py, per line)
the awake path's messages (AwakePath.answer) and the memory store (MemoryStore.add) for
every caller; the CLI, which goes through the API, gets the same message. The same rule
refuses numbers JSON has no spelling for (NaN, ±Infinity, which Python's json module lets
through): jsonb cannot store them either.

A NUL the model itself generates (its tokenizer can spell byte 0) is dropped from the
answer before it is returned or stored: see :func:`storable`.
"""

from __future__ import annotations

import math
from typing import Any

from npllm.errors import RequestError

NUL = "\x00"
NUL_MESSAGE = "contains the NUL character (U+0000), which PostgreSQL cannot store"
SURROGATE_MESSAGE = (
    "contains a lone surrogate (U+D800-U+DFFF), which is not a character UTF-8 can encode"
)


def text_problem(text: str) -> str | None:
    """Why the database cannot store `text` (NUL_MESSAGE or SURROGATE_MESSAGE), or None."""
    if NUL in text:
        return NUL_MESSAGE
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # only a lone surrogate fails to encode
            return SURROGATE_MESSAGE
    return None


def check_storable(text: str, field: str) -> str:
    """`text` unchanged, or a RequestError naming `field` when the database cannot store it."""
    problem = text_problem(text)
    if problem is not None:
        raise RequestError(f"{field} {problem}", param=field)
    return text


def shown(text: str) -> str:
    """`text` safe to echo in an error message: NUL and lone surrogates as escapes."""
    if text_problem(text) is None:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace(NUL, "\\u0000")


def storable(text: str) -> str:
    """Generated text as the database can hold it: NUL characters dropped."""
    return text.replace(NUL, "") if NUL in text else text


def unstorable(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first place in a decoded JSON value that the database cannot store, as
    (dotted path, problem), or None. Keys count as text too."""
    if isinstance(value, str):
        problem = text_problem(value)
        return (path or "body", problem) if problem else None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path or "body", "must be a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{shown(str(key))}" if path else shown(str(key))
            problem = text_problem(str(key))
            if problem:
                return (where, "has a key that " + problem)
            found = unstorable(item, where)
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = unstorable(item, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None
