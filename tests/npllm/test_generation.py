"""npllm/generation.py: the types that cross the engine seam load without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["npllm.generation", "npllm.engines", "npllm.engines.base"])
def test_the_generation_types_and_the_engine_seam_import_without_torch(module: str) -> None:
    # A fresh interpreter: this one has torch loaded by other tests' fixtures.
    code = (
        f"import sys, {module}\nprint([m for m in sys.modules if m.split('.')[0] == 'torch'][:3])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"{module} imports torch: {proc.stdout}"


def test_a_tokenizer_without_a_chat_template_gets_the_fallback_one() -> None:
    from npllm.generation import FALLBACK_TEMPLATE, ensure_chat_template

    class Bare:
        chat_template = None

    class Own:
        chat_template = "{{ messages }}"

    assert ensure_chat_template(Bare()).chat_template == FALLBACK_TEMPLATE
    assert ensure_chat_template(Own()).chat_template == "{{ messages }}"
