"""Fill-in-the-middle prompts and their cuts (a fake tokenizer: one token per character)."""

from __future__ import annotations

from typing import Any

import pytest

from npllm.completion import fim_tokens, prompt_ids
from npllm.errors import RequestError


class CharTokenizer:
    """One token per character; special tokens get ids from 1000 on."""

    def __init__(self, special: tuple[str, ...] = ()) -> None:
        self.special = {t: 1000 + i for i, t in enumerate(special)}

    def get_vocab(self) -> dict[str, int]:
        return {**{chr(c): c for c in range(32, 127)}, **self.special}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]


STARCODER = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
QWEN = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


def _text(ids: list[int], tok: Any) -> str:
    names = {v: k for k, v in tok.special.items()}
    return "".join(names.get(i, chr(i)) for i in ids)


@pytest.mark.parametrize("style", [STARCODER, QWEN])
def test_fim_prompt_in_prefix_suffix_middle_order(style: tuple[str, str, str]) -> None:
    tok = CharTokenizer(style)
    assert fim_tokens(tok) == (1000, 1001, 1002)
    ids, cut, fim = prompt_ids(tok, "def f(x):\n    ", "\n    return y", 100, "m")
    assert fim and cut == 0
    assert _text(ids, tok) == f"{style[0]}def f(x):\n    {style[1]}\n    return y{style[2]}"


def test_a_long_prefix_loses_its_start_and_a_long_suffix_its_end() -> None:
    tok = CharTokenizer(STARCODER)
    ids, cut, _ = prompt_ids(tok, "a" * 50 + "NEAR", "FAR" + "b" * 50, 23, "m")
    text = _text(ids, tok)
    # 20 tokens of room besides the 3 FIM tokens: 10 on each side of the cursor.
    assert len(ids) == 23 and cut == (54 - 10) + (53 - 10)
    assert "NEAR<fim_suffix>FAR" in text  # the text at the cursor stays


def test_a_plain_prompt_is_cut_from_its_start() -> None:
    ids, cut, fim = prompt_ids(CharTokenizer(), "0123456789", None, 4, "m")
    assert ids == [ord(c) for c in "6789"] and cut == 6 and not fim


def test_a_suffix_without_fim_tokens_is_refused_with_the_reason() -> None:
    with pytest.raises(RequestError, match="SmolLM2 has none") as refused:
        prompt_ids(CharTokenizer(), "x = ", "\nprint(x)", 100, "SmolLM2")
    assert refused.value.param == "suffix"
    assert fim_tokens(CharTokenizer()) is None
