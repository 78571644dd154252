"""Schemathesis hooks for the API fuzzer (SCHEMATHESIS_HOOKS=tests.e2e.fuzz_hooks): how to
send a JSON Lines body, which /openapi.json describes as the array of its lines."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def json_lines(ctx: Any, value: Any) -> dict[str, Any]:
    if isinstance(value, bytes):
        return {"data": value}
    lines = value if isinstance(value, list) else [value]
    # ensure_ascii: a generated lone surrogate goes out as its \\ud800 escape, as a client's
    # JSON encoder would write it (raw, it is not UTF-8 at all).
    return {"data": "".join(json.dumps(line) + "\n" for line in lines).encode()}
