"""One answer streamed to the terminal (`npllm ask`, `npllm chat`), and what it used.

Ctrl-C while an answer streams stops it through the daemon's cancel route
(POST /v1/chat/completions/{id}/cancel) and keeps reading the stream to its end: the
last chunk (finish_reason "cancelled") still carries the interaction id, so the stopped
answer can be rated. A second Ctrl-C gives up waiting.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import typer

from npllm.errors import NpllmError
from services.client import Client


@dataclass
class Streamed:
    """What one streamed answer brought: its text and its final chunk's metadata."""

    text: str = ""
    completion_id: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False  # the user pressed Ctrl-C

    @property
    def interaction_id(self) -> int | None:
        return self.meta.get("interaction_id")


def stream_answer(client: Client, body: dict[str, Any]) -> Streamed:
    """Stream the answer to `body` (a chat completion request with stream=true) to stdout."""
    got = Streamed()

    def stop(completion_id: str) -> None:
        # A connection of its own: the streaming one is busy, and its pool's locks may be
        # held by the very code this signal interrupted.
        try:
            Client(client.socket_path, timeout=30.0).cancel(completion_id)
        except NpllmError as exc:
            typer.echo(f"\n[could not stop the answer: {exc}]", err=True)

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        if got.stopped:  # a second Ctrl-C: stop waiting for the end of the stream
            raise KeyboardInterrupt
        got.stopped = True
        if got.completion_id is not None:
            stop(got.completion_id)
        # else: the id comes with the first chunk, and the answer is stopped then

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        for event in client.stream_chat(body):
            if got.completion_id is None:
                got.completion_id = str(event["id"])
                if got.stopped:
                    stop(got.completion_id)
            choice = event["choices"][0]
            piece = choice["delta"].get("content")
            if piece:
                got.text += piece
                typer.echo(piece, nl=False)
            got.finish_reason = choice.get("finish_reason") or got.finish_reason
            got.usage = event.get("usage", got.usage)
            got.meta = event.get("npllm", got.meta)
    finally:
        signal.signal(signal.SIGINT, previous)
    return got


def adapters_used(meta: dict[str, Any]) -> str:
    """ "name vN" for each adapter the answer used, or "none"."""
    used = meta.get("adapters") or []
    return ", ".join(f"{a['name']} v{a['version']}" for a in used) or "none"


def memories_used(meta: dict[str, Any]) -> str:
    """ "#id (score)" for each memory put in the prompt, or "none"."""
    used = meta.get("memories") or []
    return ", ".join(f"#{m['id']} ({m['score']:.2f})" for m in used) or "none"


def notices(got: Streamed, rate_hint: str) -> list[str]:
    """What a person should know about how the answer ended (for stderr)."""
    lines = []
    if got.finish_reason == "length":
        cut = got.usage.get("completion_tokens", "?")
        lines.append(f"[cut at {cut} tokens: raise --max-tokens]")
    if got.finish_reason == "cancelled" or (got.stopped and got.finish_reason is None):
        lines.append("[stopped]")
    if got.stopped and got.interaction_id is not None:
        lines.append(f"[rate it: {rate_hint}]")
    return lines


def info_lines(got: Streamed, memory_on: bool = True) -> list[str]:
    """Everything the last answer used, one aspect a line (`/info` in `npllm chat`)."""
    meta = got.meta
    if not meta:
        return ["the answer ended before the daemon said what it used"]
    memories = memories_used(meta)
    if not memory_on:
        memories = "off (/memory on to recall them again)"
    adapters = ", ".join(
        f"{a['name']} v{a['version']} (weight {a.get('weight', 1.0):.2f})"
        for a in meta.get("adapters") or []
    )
    routing = meta.get("routing") or {}
    odds = routing.get("probabilities") or {}
    top = sorted(odds.items(), key=lambda kv: -kv[1])[:3]
    chances = ", ".join(f"{name} {p:.2f}" for name, p in top)
    timings = meta.get("timings") or {}
    usage = got.usage
    return [
        f"interaction  {got.interaction_id}",
        f"memories     {memories}",
        f"adapters     {adapters or 'none'}",
        f"routing      {routing.get('mode', '-')}" + (f" ({chances})" if chances else ""),
        f"tokens       {usage.get('prompt_tokens', '?')} in the prompt, "
        f"{usage.get('completion_tokens', '?')} answered",
        f"time         {timings.get('total_ms', 0):.0f} ms"
        + (f" ({timings['tokens_per_s']:.1f} tokens/s)" if timings.get("tokens_per_s") else ""),
        f"finished     {got.finish_reason or '-'}",
    ]
