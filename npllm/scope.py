"""An adapter's scope: where it answers (the modulator routes a question to an adapter only
inside it; npllm/modulator.py has the rule, npllm/versions.py keeps each version's keys).

A scope is a union of balls on the sphere of query embeddings: one around each question
the adapter was taught (and each paraphrase the night made of one), with radius
``modulator.scope_similarity``, and one around the centroid of each topic it was trained
on (an imported dataset), with radius ``modulator.none_similarity`` — minus the questions
nearer a known neighbour than any of those keys. Neighbours are questions the adapter must
leave to the base: the same subject with another relation, the public default behind a
team's own setting (npllm/variants.py), and the user's own questions near a taught
one that were answered and never corrected. A question is inside when it is within a
ball *and* its nearest key is one the adapter was taught, not a neighbour (measured on the
tune split of bench/data/editing.json: at the same share of neighbours routed, the
neighbours let the balls be wider, so more paraphrases get in).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Scope:
    """Where an adapter answers: unit key vectors (n, dim) and each one's radius (n,), the
    similarity a question needs to one of them, and the neighbours it leaves to the base
    (`avoid`, (m, dim); see the module docstring)."""

    keys: np.ndarray
    radii: np.ndarray
    avoid: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    @classmethod
    def topic(cls, centroid: np.ndarray, radius: float) -> Scope:
        """A whole topic, around its centroid (the routing before scopes)."""
        return cls(np.asarray(centroid, np.float32)[None], np.asarray([radius], np.float32))
