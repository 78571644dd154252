"""The modulator: which adapters (if any) should answer this question.

A small network over the query embedding (384 → 1024 → 1024 → slots + 1, GELU; about
1.5 M parameters) whose logits are added to a fixed prior built from the adapters'
centroids:

    logit[none]    = none_similarity / temperature
    logit[adapter] = cos(query, centroid) / temperature
    p              = softmax(prior + net(query))

The network's last layer starts at zero, so an untrained modulator routes purely by
centroid similarity — a fresh install sends a question to the adapter whose training
questions it resembles, and to no adapter when none is at least ``none_similarity``
alike. Training (in the sleep cycle, later) only learns the correction. Top-1 by
default; with ``modulator.top_k`` > 1 the best k adapters above ``min_weight`` are
blended with renormalised weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from npllm.config import ModulatorConfig

NONE = "none"


@dataclass
class Decision:
    """A routing decision: every option's probability, and what is used."""

    mode: str  # modulator | pinned | disabled
    probabilities: dict[str, float] = field(default_factory=dict)
    chosen: list[tuple[str, float]] = field(default_factory=list)  # (adapter name, weight)


class Modulator(nn.Module):
    """Weights over the registered adapters plus "none" (see the module docstring)."""

    centroids: torch.Tensor
    present: torch.Tensor

    def __init__(self, config: ModulatorConfig, dim: int = 384) -> None:
        super().__init__()
        self.config = config
        slots = config.max_adapters
        self.net = nn.Sequential(
            nn.Linear(dim, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, config.hidden),
            nn.GELU(),
        )
        self.head = nn.Linear(config.hidden, slots + 1)
        nn.init.zeros_(self.head.weight)  # untrained: the centroid prior alone decides
        nn.init.zeros_(self.head.bias)
        self.register_buffer("centroids", torch.zeros(slots, dim))  # (slots, dim)
        self.register_buffer("present", torch.zeros(slots, dtype=torch.bool))  # (slots,)
        self.names: list[str | None] = [None] * slots
        self.eval()
        for param in self.parameters():
            param.requires_grad_(False)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_adapters(self, centroids: dict[str, np.ndarray | None]) -> None:
        """The routable adapters (those with a centroid), in name order."""
        routable = sorted(name for name, c in centroids.items() if c is not None)
        if len(routable) > len(self.names):
            raise ValueError(
                f"{len(routable)} routable adapters, more than modulator.max_adapters "
                f"({len(self.names)})"
            )
        self.centroids.zero_()
        self.present.zero_()
        self.names = [None] * len(self.names)
        for slot, name in enumerate(routable):
            vector = torch.as_tensor(centroids[name], dtype=torch.float32)
            self.centroids[slot] = vector / vector.norm().clamp_min(1e-8)
            self.present[slot] = True
            self.names[slot] = name

    @torch.inference_mode()
    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """Probabilities over [none, slot 0, slot 1, ...] for (batch, dim) queries."""
        t = self.config.temperature
        sims = query @ self.centroids.T  # (batch, slots)
        sims = sims.masked_fill(~self.present, float("-inf"))
        none = torch.full((query.shape[0], 1), self.config.none_similarity)  # (batch, 1)
        prior = torch.cat([none, sims], dim=1) / t  # (batch, slots + 1)
        return torch.softmax(prior + self.head(self.net(query)), dim=1)

    def decide(self, embedding: np.ndarray) -> Decision:
        """Route one query embedding."""
        probs = self(torch.as_tensor(embedding, dtype=torch.float32)[None])[0]  # (slots + 1,)
        options = {NONE: float(probs[0])}
        for slot, name in enumerate(self.names):
            if name is not None:
                options[name] = float(probs[slot + 1])
        ranked = sorted(options.items(), key=lambda kv: kv[1], reverse=True)
        decision = Decision("modulator", {k: round(v, 6) for k, v in options.items()})
        if ranked[0][0] == NONE:
            return decision
        top = [
            (name, p)
            for name, p in ranked[: self.config.top_k]
            if name != NONE and p >= self.config.min_weight
        ]
        total = sum(p for _, p in top)
        decision.chosen = [(name, round(p / total, 3)) for name, p in top]
        return decision
