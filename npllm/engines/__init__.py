"""Engines: what runs the base LLM for the awake path (npllm/engines/base.py: the protocol).

One module per member, each with a ``load(settings)`` that returns its engine:

- ``llamacpp``: the quantised GGUF, served in-process by llama.cpp (the default for a GGUF);
- ``transformers``: torch/peft, the reference engine and the one for non-GGUF bases.

``models.engine`` picks the member; ``auto`` means llama.cpp for a GGUF base, transformers
otherwise. Nothing outside this package knows which member runs.
"""

from __future__ import annotations

import importlib
from typing import cast

from npllm.config import Settings
from npllm.engines.base import Engine
from npllm.weights import resolve

MEMBERS = {"llama.cpp": "npllm.engines.llamacpp", "transformers": "npllm.engines.transformers"}


def engine_name(settings: Settings) -> str:
    """The engine `models.engine` means for the configured base."""
    if settings.models.engine != "auto":
        return settings.models.engine
    source = resolve(settings.models.base, "models.base")
    return "llama.cpp" if source.kind == "gguf" else "transformers"


def load_engine(settings: Settings) -> Engine:
    """The configured engine, loaded."""
    module = importlib.import_module(MEMBERS[engine_name(settings)])
    return cast(Engine, module.load(settings))
