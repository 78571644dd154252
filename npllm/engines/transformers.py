"""The transformers engine: the base LLM in torch (fp32 by default), adapters through peft.

The reference engine: the parity tests compare llama.cpp against it, and it serves bases
that are not GGUF files. Adapters are peft LoRAs loaded beside each other in one model
and chosen per call with peft's ``adapter_names`` (PeftAdapters, below); an
exact blend of 2-3 is peft's concatenated-rank weighted adapter. The cerebellum drafts
through transformers' assisted generation.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from npllm.config import Settings
from npllm.engines.base import Draft
from npllm.errors import AdapterError
from npllm.generation import Generation, GenerationParams
from npllm.llm import BaseLLM, load_base_llm
from npllm.versions import Version

log = logging.getLogger("npllm.engines.transformers")

BASE = "__base__"  # peft's name for "no adapter" in adapter_names


class TransformersEngine:
    name = "transformers"

    def __init__(self, settings: Settings, llm: BaseLLM) -> None:
        self.settings = settings
        self.llm = llm
        self.adapters = PeftAdapters(llm, settings.modulator.blend_cache)

    @property
    def model_id(self) -> str:
        return self.llm.model_id

    @property
    def fingerprint(self) -> str:
        return self.llm.fingerprint

    @property
    def context_length(self) -> int:
        return self.llm.context_length

    @property
    def tokenizer(self) -> Any:
        return self.llm.tokenizer

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.llm.encode_chat(messages)

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
        return self.llm.generate_ids(
            prompt_ids,
            params,
            on_text=on_text,
            cancel=cancel,
            adapter_names=self.adapters.adapter_names(list(adapters)),
            peft=self.adapters.peft,
            assistant=None if draft is None else draft.handle,
            draft_tokens=self.settings.cerebellum.draft_tokens,
        )

    def build_draft(self, version: Version, cerebellum: Any) -> Draft:
        """The version merged into a private torch copy of the cerebellum's model
        (npllm.cerebellum.Cerebellum.merged), which transformers drafts with."""
        merged, load_ms = cerebellum.merged(version)
        return Draft(version, merged, load_ms)

    def use_draft(self, draft: Draft | None) -> None:
        """Nothing to rebuild: the draft model is passed with each request."""

    def info(self) -> dict[str, Any]:
        import torch
        import transformers

        return {
            "engine": self.name,
            "version": transformers.__version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "dtype": self.settings.models.dtype,
            "device": self.llm.device,
        }

    def close(self) -> None:
        pass


class PeftAdapters:
    """The adapters loaded in the serving model, and which version each name means.

    Every method changes or reads the peft model, so all of them run on the generation
    thread, between requests: a request never sees a half-done swap, and routing goes
    through peft's per-call ``adapter_names`` rather than a global active adapter.
    Adapters are never merged into the base weights here."""

    def __init__(self, llm: Any, blend_cache: int = 8) -> None:
        self.llm = llm  # the frozen base (its .model, .tokenizer, .encode_chat)
        # peft's wrapper around llm.model once an adapter is loaded (None: none is); it
        # is this object's, and generation goes through it (TransformersEngine.generate).
        self.peft: Any = None
        self.alias: dict[str, Version] = {}
        self.held: dict[str, Version] = {}  # key → a canary's control, loaded beside
        self.blend_cache = blend_cache
        self._blends: OrderedDict[tuple[tuple[str, float], ...], str] = OrderedDict()
        self._blend_ids = 0
        self.changes = 0  # bumped on every swap: answers cached before are stale

    @property
    def loaded(self) -> list[str]:
        return [] if self.peft is None else list(self.peft.peft_config)

    def load(self, version: Version) -> None:
        """Load a version beside the others under its key, name@vN."""
        from peft import PeftModel

        if version.key in self.loaded:
            return
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(
                    self.llm.model, str(version.path), adapter_name=version.key
                )
            else:
                self.peft.load_adapter(str(version.path), adapter_name=version.key)
        except Exception as exc:
            raise AdapterError(
                f"cannot load adapter {version.key} from {version.path}: {exc}"
            ) from exc
        self.peft.eval()
        for param in self.peft.parameters():
            param.requires_grad_(False)

    def smoke(self, version: Version) -> dict[str, Any]:
        """One forward pass through the version on a short chat: refuse it unless every
        logit is finite; report the token it would answer with first."""
        import torch

        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
        ids = torch.tensor([self.llm.encode_chat(chat)])  # (1, seq)
        with torch.inference_mode():
            logits = self.peft(
                input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=[version.key]
            ).logits  # (1, seq, vocab)
        if not bool(torch.isfinite(logits).all()):
            raise AdapterError(
                f"adapter {version.key} produces NaN/inf logits; its weights seem to be broken"
            )
        first = int(logits[0, -1].argmax())
        return {
            "smoke_token": self.llm.tokenizer.decode([first]),
            "smoke_prompt_tokens": ids.shape[1],
        }

    def activate(self, version: Version) -> Version | None:
        """Point the name at `version`; unload the version it replaces. Returns that one."""
        old = self.alias.get(version.adapter)
        self.alias[version.adapter] = version
        if old is not None and old.key != version.key and old.key not in self.held:
            self.unload(old.key)
        self.changes += 1
        return old

    def remove(self, name: str) -> int | None:
        """Stop serving adapter `name` (deleted); the version it served, if any."""
        version = self.alias.pop(name, None)
        if version is None:
            return None
        for key in [k for k, v in self.held.items() if v.adapter == name]:
            self.release(key)
        self.unload(version.key)
        self.changes += 1
        return version.version

    def stage(self, version: Version) -> None:
        """Nothing to prepare off the generation thread: loading a peft adapter changes the
        served model, so it happens in `load`, between requests."""

    def hold(self, version: Version) -> None:
        self.held[version.key] = version
        self.load(version)  # loaded already when it is served; a no-op then

    def release(self, key: str) -> None:
        version = self.held.pop(key, None)
        if version is not None and key not in {v.key for v in self.alias.values()}:
            self.unload(key)
            self.changes += 1

    def _key(self, name: str) -> str:
        """The loaded adapter a request's name means: an adapter's served version, or a
        held version by its key."""
        version = self.alias.get(name) or self.held.get(name)
        if version is None:
            raise AdapterError(f"adapter {name!r} is not served")
        return version.key

    def serve(self, versions: list[Version], held: Sequence[Version] = ()) -> list[Version]:
        """At start-up: load and route to these versions (and hold `held` beside them); one
        that fails to load is logged and left out. Returns the served ones."""
        for version in held:
            try:
                self.hold(version)
            except AdapterError as exc:
                self.held.pop(version.key, None)
                log.error(json.dumps({"event": "adapter_not_served", "version": version.key,
                                      "error": str(exc)}))  # fmt: skip
        served = []
        for version in versions:
            try:
                self.load(version)
            except AdapterError as exc:
                log.error(json.dumps({"event": "adapter_not_served", "version": version.key,
                                      "error": str(exc)}))  # fmt: skip
                continue
            self.activate(version)
            served.append(version)
        return served

    def unload(self, version: Version | str) -> None:
        """Delete a loaded adapter (and every cached blend made from it)."""
        key = version if isinstance(version, str) else version.key
        for combo, blend in list(self._blends.items()):
            if any(k == key for k, _ in combo):
                self._drop(blend)
                del self._blends[combo]
        self._drop(key)

    def _drop(self, key: str) -> None:
        if self.peft is None or key not in self.peft.peft_config:
            return
        if len(self.peft.peft_config) == 1:
            self.peft.unload()  # the last adapter: take the LoRA layers out altogether
            self.peft = None
        else:
            self.peft.delete_adapter(key)

    def adapter_names(self, chosen: list[tuple[str, float]]) -> list[str] | None:
        """peft's adapter_names for one request: its adapter, a cached exact blend, or base."""
        if self.peft is None:
            return None
        if not chosen:
            return [BASE]
        if len(chosen) == 1:
            return [self._key(chosen[0][0])]
        combo = tuple((self._key(name), round(weight, 3)) for name, weight in chosen)
        blend = self._blends.get(combo)
        if blend is None:
            self._blend_ids += 1
            blend = f"blend-{self._blend_ids}"
            self.peft.add_weighted_adapter(
                adapters=[key for key, _ in combo],
                weights=[weight for _, weight in combo],
                adapter_name=blend,
                combination_type="cat",  # exact: concatenated ranks, no SVD approximation
            )
            self._blends[combo] = blend
            while len(self._blends) > self.blend_cache:
                _, evicted = self._blends.popitem(last=False)
                self._drop(evicted)
        else:
            self._blends.move_to_end(combo)
        return [blend]


def load(settings: Settings) -> TransformersEngine:
    """The configured base in torch (dequantised once when it is a GGUF)."""
    return TransformersEngine(settings, load_base_llm(settings))
