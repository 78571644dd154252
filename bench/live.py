"""A real `npllm serve` in a temp data dir, for the benchmarks (not the tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Live:
    env: dict[str, str]  # what `python -m services.cli ...` needs to reach this daemon
    socket: Path
    http: Any  # an httpx.Client on the socket
    pid: int = 0


@contextmanager
def live_daemon(
    model_cache: Path, timeout: float = 240.0, keep: Path | None = None, **extra: str
) -> Iterator[Live]:
    """Start the daemon (`extra`: more NPLLM_* variables), wait until /v1/status answers,
    stop it (SIGTERM) on exit. `keep`: a directory to run in and leave behind (its data dir,
    the daemon's and the worker's logs), to look into afterwards; default a temp dir."""
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
        data = (keep or Path(tmp)) / "data"
        env = {
            "NPLLM_DATA_DIR": str(data),
            "NPLLM_MODELS__CACHE_DIR": str(model_cache),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **extra,
        }
        log = (keep or Path(tmp)) / "serve.log"
        with log.open("a") as out:  # a kept directory's log keeps its earlier runs
            out.write(f"---- npllm serve, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"],
            env=env,
            cwd=REPO,
            stdout=log.open("a"),
            stderr=subprocess.STDOUT,
        )
        sock = data / "run" / "npllm.sock"
        http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://npllm", timeout=300
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"npllm serve did not start:\n{log.read_text()}")
                try:
                    if http.get("/v1/status").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            yield Live(env, sock, http, proc.pid)
        finally:
            http.close()
            proc.terminate()
            proc.wait(60)


def stream(
    http: Any,
    prompt: str,
    tokens: int,
    adapters: list[str] | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One streamed answer over `http` (greedy; `extra`: more request fields): time to first
    token, the rates a client sees (request sent → last token) and decodes at, the npllm
    timings."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0.0,
        "stream": True,
        **(extra or {}),
    }
    if adapters is not None:
        body["npllm"] = {"adapters": adapters}
    started = time.perf_counter()
    first = last = None
    pieces = 0
    meta: dict[str, Any] = {}
    usage: dict[str, Any] = {}
    with http.stream("POST", "/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("npllm"):
                meta = event["npllm"]
            usage = event.get("usage") or usage
            delta = (event.get("choices") or [{}])[0].get("delta", {}).get("content")
            if delta:
                now = time.perf_counter()
                first = first or now
                last = now
                pieces += 1
    t = meta.get("timings", {})
    gen_s = t.get("generate_ms", 0) / 1000
    produced = int(usage.get("completion_tokens") or pieces)
    return {
        "client_tokens_per_s": round(produced / (last - started), 2) if last else 0.0,
        "ttft_ms": round(((first or started) - started) * 1000, 1),
        "tokens_per_s": t.get("tokens_per_s", 0.0),
        "decode_tokens_per_s": round((pieces - 1) / (last - first), 2)
        if first and last and last > first
        else 0.0,
        "memory_path_ms": t.get("embed_ms", 0) + t.get("retrieve_ms", 0) + t.get("prompt_ms", 0),
        "embed_ms": t.get("embed_ms", 0),
        "retrieve_ms": t.get("retrieve_ms", 0),
        "prompt_ms": t.get("prompt_ms", 0),
        "prompt_cached_tokens": t.get("prompt_cached_tokens", 0),
        "generate_s": gen_s,
        "draft_acceptance_rate": t.get("draft_acceptance_rate"),
        "total_ms": t.get("total_ms", 0),
    }


# ------------------------------------------------------------------------------ a night


class NightRefused(Exception):
    """The daemon refused `POST /v1/sleep` (a cycle already runs, ...)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status} {text[:200]}")
        self.status = status


@dataclass
class Night:
    """A night on the live daemon: its npllm.sleep_cycles row as `GET /v1/sleep` shows it,
    and the seconds from asking for it until it ended."""

    cycle: dict[str, Any]
    wall_s: float


def start_night(http: Any, seed: int) -> tuple[int | None, float]:
    """`POST /v1/sleep {"now": true}`: the daemon's real sleep worker runs the shipped cycle
    (train, gate, publish). (The latest cycle id before it, when it was asked.)"""
    latest = http.get("/v1/sleep").json()["latest_cycle"]
    started = time.perf_counter()
    r = http.post("/v1/sleep", json={"now": True, "seed": seed})
    if r.status_code >= 400:
        raise NightRefused(r.status_code, r.text)
    return latest, started


def until_night(
    http: Any, latest: int | None, *, ended: bool = True, poll_s: float = 0.5
) -> dict[str, Any]:
    """The cycle newer than `latest` once it has ended (or, ended=False, once it trains)."""
    while True:
        cycles = http.get("/v1/sleep").json()["cycles"]
        cycle = cycles[0] if cycles and cycles[0]["id"] != latest else None
        if cycle is not None:
            if ended and cycle["status"] != "running":
                return dict(cycle)
            if not ended and cycle["phase"].startswith("training"):
                return dict(cycle)
        time.sleep(poll_s)


def force_night(http: Any, seed: int = 1, poll_s: float = 0.5) -> Night:
    """One night, asked for now and waited for: what every benchmark's night is."""
    latest, started = start_night(http, seed)
    cycle = until_night(http, latest, poll_s=poll_s)
    return Night(cycle, time.perf_counter() - started)
