"""The emotional scorer on a labelled set of developer messages in English and Portuguese."""

from __future__ import annotations

import json

import pytest

from npllm.tone import LexiconTone, NeutralTone, detect_language, load_tone_scorer

from ..conftest import DATA

LABELLED = json.loads((DATA / "tone_labelled.json").read_text())


@pytest.fixture(scope="module")
def scorer() -> LexiconTone:
    return LexiconTone()


@pytest.mark.parametrize("language", ["en", "pt"])
def test_pleased_messages_score_above_upset_ones(scorer: LexiconTone, language: str) -> None:
    items = LABELLED[language]
    assert len(items) >= 20
    scores = [(scorer.score(text), label) for text, label in items]
    correct = sum((s > 0) == (label > 0) and s != 0 for s, label in scores)
    accuracy = correct / len(scores)
    positives = [s for s, label in scores if label > 0]
    negatives = [s for s, label in scores if label < 0]
    # Ranking: the share of (pleased, upset) pairs the scorer orders correctly.
    ranked = sum(p > n for p in positives for n in negatives) / (len(positives) * len(negatives))
    print(f"\ntone {language}: accuracy {accuracy:.3f}, pair ranking {ranked:.3f} on {len(items)}")
    assert accuracy >= 0.9
    assert ranked >= 0.95
    assert all(-1.0 <= s <= 1.0 for s, _ in scores)


@pytest.mark.parametrize("language", ["en_heldout", "pt_heldout"])
def test_held_out_messages_never_tuned_on(scorer: LexiconTone, language: str) -> None:
    items = LABELLED[language]
    correct = sum((scorer.score(text) > 0) == (label > 0) for text, label in items)
    print(f"\ntone {language}: accuracy {correct / len(items):.3f} on {len(items)}")
    assert correct / len(items) >= 0.8


def test_language_is_told_by_its_words() -> None:
    assert detect_language("thanks, that worked") == "en"
    assert detect_language("não funcionou, está errado") == "pt"
    assert detect_language("ok") is None


def test_neutral_text_scores_near_zero(scorer: LexiconTone) -> None:
    assert scorer.score("") == 0.0
    assert abs(scorer.score("How do I open a file in Python")) < 0.05
    assert abs(scorer.score("Como abrir um arquivo em Python")) < 0.05


def test_scorers_are_chosen_by_name() -> None:
    assert isinstance(load_tone_scorer("lexicon"), LexiconTone)
    off = load_tone_scorer("off")
    assert isinstance(off, NeutralTone)
    assert off.score("thanks, that was perfect!") == 0.0
