"""The engine seam: what the awake path needs from whatever runs the base LLM.

An engine takes prompt token ids (npllm assembles the prompt itself, with the base's chat
template, so every engine sees the same tokens), streams text out, honours stop strings,
the token limit, sampling settings and cancellation, applies a request's adapters
(a list of ``(name, weight)``: one adapter, or the exact weighted sum of two or three) and,
when the cerebellum is trained, drafts with it. Every member of the family has the same
shape (one module each, like peft's ``tuners/<method>/``): an :class:`Engine` with its
:class:`AdapterServing` and its draft builder. Nothing outside ``npllm/engines/`` knows
which member runs (:func:`npllm.engines.load_engine` picks it from ``models.engine``).

Training never goes through an engine: the trainer, MAS, the gate and the weights hash
use torch on the dequantised base (npllm/llm.py). The request and result types
(GenerationParams, Generation) live in the light npllm/generation.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from npllm.generation import Generation, GenerationParams
from npllm.versions import Version

__all__ = ["AdapterServing", "Draft", "Engine"]


@dataclass
class Draft:
    """A cerebellum version made ready to draft with, by one engine."""

    version: Version
    handle: Any  # the engine's own: a merged model, a GGUF file, ...
    load_ms: float
    extra: dict[str, Any] = field(default_factory=dict)


class AdapterServing(Protocol):
    """The adapters an engine serves, and which version each name means.

    Every method changes or reads what is served, so the daemon calls them on its
    generation thread, between requests: a request never sees a half-done swap."""

    alias: dict[str, Version]  # adapter name → the version served under it
    # Versions kept loaded beside them, by key (name@vN): a canary trial's control arm
    # (npllm/canary.py). A request reaches one by naming its key instead of the adapter.
    held: dict[str, Version]
    changes: int  # bumped on every swap: answers cached before are stale

    def serve(self, versions: Sequence[Version], held: Sequence[Version] = ()) -> list[Version]:
        """Serve these versions (at start-up), each under its adapter's name, and keep the
        `held` ones loaded beside them; one that cannot be loaded is logged and left out.
        Returns the served ones (of `versions`)."""

    def hold(self, version: Version) -> None:
        """Keep `version` loaded beside the served ones from the next swap on (it is
        served now, under its adapter's name, and is about to be replaced)."""

    def release(self, key: str) -> None:
        """Stop holding version `key` (unloaded unless an adapter's name serves it)."""

    def stage(self, version: Version) -> None:
        """Prepare `version` as far as possible without touching what is served (safe off
        the generation thread, while requests run), so that the swap between requests is
        short; `load` raises what went wrong here."""

    def load(self, version: Version) -> None:
        """Make `version` ready beside the served ones (not yet routed to)."""

    def smoke(self, version: Version) -> dict[str, Any]:
        """Refuse (AdapterError) a loaded version whose output is not finite; report the
        first token it answers a short chat with."""

    def activate(self, version: Version) -> Version | None:
        """Route its name to the loaded `version`; the version it replaces, unloaded."""

    def unload(self, version: Version) -> None:  # also a key (name@vN) for transformers
        """Drop a version that was loaded but will not be activated."""

    def remove(self, name: str) -> int | None:
        """Stop serving adapter `name` (deleted); the version it served, if any."""


class Engine(Protocol):
    """One way of running the base LLM (see the module docstring)."""

    name: str  # "llama.cpp", "transformers", ...
    model_id: str
    fingerprint: str  # identifies the base weights (adapters trained on another are stale)
    context_length: int
    tokenizer: Any
    adapters: AdapterServing

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the chat, ending with the assistant's generation prompt."""

    def generate(
        self,
        prompt_ids: list[int],
        params: GenerationParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        adapters: Sequence[tuple[str, float]] = (),
        draft: Draft | None = None,
    ) -> Generation:
        """Generate from token ids on the calling thread, calling `on_text` with each new
        piece of text; `cancel` stops it at the next token. `adapters` are served names
        with their weights (validated by the caller: every name is in `adapters.alias`)."""

    def build_draft(self, version: Version, base_weights: Path) -> Draft:
        """The cerebellum `version` (a LoRA of the shared shape on the base's weights)
        made ready to draft with; AdapterError when it cannot be (and why)."""

    def use_draft(self, draft: Draft | None) -> None:
        """Draft with `draft` (None: no drafting) from the next request on; called on the
        generation thread, between requests."""

    def info(self) -> dict[str, Any]:
        """What `npllm status` and `npllm doctor` show: engine, version, threads, ..."""

    def close(self) -> None:
        """Free what the engine holds (threads, servers)."""
