"""The same day: which questions a correction in the hippocampus answers.

A correction is stored as a fact, "Q: <the question> / A: <the user's answer>"
(npllm/memory.py). Retrieval alone brings it to questions that merely share words with it,
and a small base LLM copies what it is given: a correction of "What port does our
PostgreSQL listen on?" turned the answer to "What is PostgreSQL's default port?" into the
team's port. So a correction's own scope decides, the same way an adapter's does at night
(npllm/scope.py): its positive keys are the question and the ways of asking it
(npllm/variants.py: `paraphrases`), its negative keys the neighbouring questions
(`neighbours`: the same subject with another relation, the public default behind a
team's setting).

- a question nearer one of its neighbours than to any way of asking it does not get the
  correction in its context;
- a question at least ``memory.correction_similarity`` alike to a way of asking it, and
  nearer that than any neighbour, is answered with the correction itself, word for word
  (a small model given the correction in its context still answered from its prior, or
  looped, about half the time: bench/editing.py, same day);
- anything else is generated with the correction in its context, as any memory.

The keys of a correction are computed once and kept (an LRU of `CACHE` corrections).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from npllm import variants
from npllm.memory import Recalled

CACHE = 512  # corrections whose keys are kept in memory


@dataclass(frozen=True)
class Verdict:
    """What a correction is to this question."""

    alike: float  # to the nearest way of asking the corrected question
    neighbour: float  # to the nearest of its neighbouring questions
    direct: bool  # answer with the correction itself

    @property
    def about_a_neighbour(self) -> bool:
        return self.neighbour > self.alike


class Corrections:
    """Judges retrieved corrections against the question being answered."""

    def __init__(self, embedder: Any, similarity: float) -> None:
        self.embedder = embedder
        self.similarity = similarity
        self._keys: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def judge(self, memory: Recalled, query: np.ndarray) -> Verdict | None:
        """How `memory` (a retrieved memory) relates to the question with embedding `query`;
        None when it is not a correction."""
        if memory.correction is None:
            return None
        question = memory.text.split("\n", 1)[0].removeprefix("Q: ")
        ways, others = self._of(memory.id, question)
        alike = max(float(np.max(ways @ query)), memory.asked or -1.0)
        neighbour = float(np.max(others @ query)) if len(others) else -1.0
        direct = alike >= self.similarity and alike > neighbour
        return Verdict(alike, neighbour, direct)

    def _of(self, memory_id: int, question: str) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if memory_id in self._keys:
                self._keys.move_to_end(memory_id)
                return self._keys[memory_id]
        ways = [question, *variants.paraphrases(question)]
        others = variants.neighbours(question, len(variants.RELATIONS) + 2)
        vectors = np.asarray(self.embedder.embed(ways + others))
        found = (vectors[: len(ways)], vectors[len(ways) :])
        with self._lock:
            self._keys[memory_id] = found
            while len(self._keys) > CACHE:
                self._keys.popitem(last=False)
        return found
