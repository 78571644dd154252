"""Memory chunking and the short-term cache."""

from __future__ import annotations

from npllm.cache import ShortTermCache, cache_key
from npllm.memory import chunk_text


def test_short_text_is_one_chunk() -> None:
    assert chunk_text("  hello world  ", 100) == ["hello world"]
    assert chunk_text("   ", 100) == []


def test_long_text_splits_on_paragraphs_and_sentences_within_the_limit() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "Sentence here. " * 20 for i in range(5))
    chunks = chunk_text(text, 200)
    assert len(chunks) > 5
    assert all(len(c) <= 200 for c in chunks)
    assert "".join(chunks).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(
        " ", ""
    )


def test_a_single_huge_word_is_still_cut() -> None:
    chunks = chunk_text("x" * 450, 200)
    assert [len(c) for c in chunks] == [200, 200, 50]


def test_cache_is_a_bounded_lru() -> None:
    cache: ShortTermCache[str] = ShortTermCache(2)
    cache.put("a", "1")
    cache.put("b", "2")
    assert cache.get("a") == "1"  # a is now the most recent
    cache.put("c", "3")
    assert cache.get("b") is None
    assert cache.get("a") == "1" and cache.get("c") == "3"
    cache.clear()
    assert len(cache) == 0


def test_cache_key_depends_on_messages_and_params() -> None:
    m = [{"role": "user", "content": "hi"}]
    assert cache_key(m, {"t": 0}) == cache_key(list(m), {"t": 0})
    assert cache_key(m, {"t": 0}) != cache_key(m, {"t": 1})
