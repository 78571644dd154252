"""The transformers engine: the base LLM in torch (fp32 by default), adapters through peft.

The reference engine: the parity tests compare llama.cpp against it, and it serves bases
that are not GGUF files. Adapters are peft LoRAs loaded beside each other in one model
and chosen per call with peft's ``adapter_names`` (npllm/adapters.py: AdapterServer); an
exact blend of 2-3 is peft's concatenated-rank weighted adapter. The cerebellum drafts
through transformers' assisted generation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from npllm.adapters import AdapterServer, Version
from npllm.config import Settings
from npllm.engines.base import Draft
from npllm.llm import BaseLLM, Generation, GenerationParams, load_base_llm


class TransformersEngine:
    name = "transformers"

    def __init__(self, settings: Settings, llm: BaseLLM) -> None:
        self.settings = settings
        self.llm = llm
        self.adapters = AdapterServer(llm, settings.modulator.blend_cache)

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

        return {
            "engine": self.name,
            "version": torch.__version__,
            "threads": torch.get_num_threads(),
            "dtype": self.settings.models.dtype,
            "device": self.llm.device,
        }

    def close(self) -> None:
        pass


def load(settings: Settings) -> TransformersEngine:
    """The configured base in torch (dequantised once when it is a GGUF)."""
    return TransformersEngine(settings, load_base_llm(settings))
