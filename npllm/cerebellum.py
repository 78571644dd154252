"""The cerebellum: a small causal LM that learns the user's recurring, well-rated answers
while asleep and, while awake, drafts tokens for the base LLM (transformers assisted
generation). The base LLM verifies every drafted token, so the answer is the one it would
have given anyway; what the cerebellum has learned only comes out faster.

By default (``cerebellum.model = ""``) it is its own copy of the base LLM's weights: the
sleep cycle trains a LoRA on it (with the same MAS-regularised trainer as the adapters,
consolidation/cycle.py), and serving merges the active version into a private copy, so
the base LLM's weights are never touched. ``cerebellum.model`` may name another model
(100-500 M parameters) that shares the base's tokenizer.

Its versions live in the adapter tables under the reserved name ``cerebellum`` (kind
``cerebellum``): published, gated, rolled back and kept like an adapter's, never routed to.
Until a first version is published there is nothing to draft with, and generation runs
without a draft model.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from npllm.adapters import CEREBELLUM
from npllm.config import Settings
from npllm.engines.base import Draft
from npllm.errors import AdapterError, ModelError
from npllm.llm import BaseLLM, freeze, load_base_llm
from npllm.versions import BaseIdentity, Registry, Version


def load_model(settings: Settings, base: Any) -> Any:
    """The cerebellum's own model: the base LLM itself (its LoRA is the trainable part;
    `base` is the serving engine or a BaseLLM) when ``cerebellum.model`` is empty, else
    that model, which must share the base's tokenizer (drafted token ids go straight to
    the base LLM)."""
    ref = settings.cerebellum.model
    if not ref:
        return base
    models = settings.models.model_copy(update={"base": ref})
    try:
        own = load_base_llm(settings.model_copy(update={"models": models}))
    except ModelError as exc:
        raise ModelError(str(exc).replace("models.base", "cerebellum.model", 1)) from exc
    if own.tokenizer.get_vocab() != base.tokenizer.get_vocab():
        raise ModelError(
            f"cerebellum.model = {ref!r} has another tokenizer than the base LLM "
            f"({len(own.tokenizer)} vs {len(base.tokenizer)} tokens); the draft model must "
            "share the base's vocabulary"
        )
    return own


def registry_for(settings: Settings, pool: Any, model: Any) -> Registry:
    """The cerebellum's versions: kind 'cerebellum', keyed to its own model's weights."""
    base = BaseIdentity(model.model_id, model.fingerprint)
    return Registry.for_settings(pool, settings, base, kind=CEREBELLUM)


class Cerebellum:
    """The draft model the serving path uses; swapped between requests on the model thread."""

    def __init__(self, settings: Settings, model: Any, engine: Any) -> None:
        self.settings = settings
        self.source = model
        self.engine = engine  # the serving engine (npllm/engines): it says how to draft
        self.current: Draft | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.cerebellum.role == "draft"

    @property
    def draft(self) -> Draft | None:
        """What to draft with, or None (role off, or nothing trained yet)."""
        return self.current if self.enabled else None

    def build(self, version: Version) -> Draft:
        """`version` made ready to draft with by the serving engine. Safe off the model
        thread: it touches nothing being served."""
        return self.engine.build_draft(version, self)

    def merged(self, version: Version) -> tuple[Any, float]:
        """A private copy of the cerebellum's model with `version`'s LoRA merged in,
        smoke-tested (finite logits on a short chat), and the milliseconds it took."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        started = time.perf_counter()
        llm: BaseLLM = getattr(self.source, "llm", self.source)  # a torch engine's BaseLLM
        try:
            # A fresh copy from the weight files: the loaded model may carry adapter layers.
            own = AutoModelForCausalLM.from_pretrained(
                llm.meta["directory"], dtype=llm.model.dtype, local_files_only=True
            )
            merged = PeftModel.from_pretrained(own, str(version.path)).merge_and_unload()
        except Exception as exc:
            raise AdapterError(
                f"cannot load cerebellum v{version.version} from {version.path}: {exc}"
            ) from exc
        freeze(merged)
        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
        ids = torch.tensor([llm.encode_chat(chat)])  # (1, seq)
        with torch.inference_mode():
            logits = merged(input_ids=ids).logits  # (1, seq, vocab)
        if not bool(torch.isfinite(logits).all()):
            raise AdapterError(
                f"cerebellum v{version.version} produces NaN/inf logits; its weights seem broken"
            )
        return merged, round((time.perf_counter() - started) * 1000, 1)

    def activate(self, draft: Draft) -> Version | None:
        """Serve `draft` from the next request on; returns the version it replaced."""
        old = self.current
        if self.enabled:
            self.engine.use_draft(draft)
        self.current = draft
        return None if old is None else old.version

    def status(self) -> dict[str, Any]:
        return {
            "role": self.settings.cerebellum.role,
            "model": self.source.model_id,
            "version": None if self.current is None else self.current.version.version,
            "drafting": self.draft is not None,
        }
