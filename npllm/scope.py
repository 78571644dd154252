"""An adapter's scope: where it answers (the modulator routes a question to an adapter only
inside it; npllm/modulator.py has the rule, npllm/versions.py keeps each version's keys).

A scope is a union of balls on the sphere of query embeddings: one around each question
the adapter was taught (and each paraphrase the night made of one), with radius
``modulator.scope_similarity``, and one around the centroid of each topic it was trained
on (an imported dataset), with radius ``modulator.none_similarity``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scope:
    """Where an adapter answers: unit key vectors (n, dim) and each one's radius (n,), the
    similarity a question needs to one of them (see the module docstring)."""

    keys: np.ndarray
    radii: np.ndarray

    @classmethod
    def topic(cls, centroid: np.ndarray, radius: float) -> Scope:
        """A whole topic, around its centroid (the routing before scopes)."""
        return cls(np.asarray(centroid, np.float32)[None], np.asarray([radius], np.float32))
