"""The modulator's logged, rated routing decisions and their inverse-propensity estimate:
what both ways of training the modulator (consolidation/modulator_training.py, supervised;
consolidation/modulator_ppo.py, PPO) read and are gated by."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from npllm.modulator import NONE, Modulator

MIN_PROPENSITY = 0.01

_LOGGED = """
SELECT d.interaction_id, i.question_embedding, d.probabilities, d.chosen, r.reward
FROM npllm.routing_decisions d
JOIN npllm.interactions i ON i.id = d.interaction_id
JOIN npllm.replay_buffer r ON r.interaction_id = d.interaction_id
WHERE d.mode = 'modulator' AND i.question_embedding IS NOT NULL
  AND r.implicit_n + r.emotional_n > 0
ORDER BY d.interaction_id DESC
LIMIT %(limit)s
"""


@dataclass
class Logged:
    """One rated routing decision."""

    interaction_id: int
    embedding: np.ndarray  # (384,)
    action: str  # the adapter used (the top one of a blend), or NONE
    propensity: float  # the logging modulator's probability of `action`
    reward: float  # -1..1


def logged(pool: Any, limit: int = 20000) -> list[Logged]:
    """The most recent rated decisions the modulator made (pinned ones say nothing
    about it)."""
    with pool.connection() as conn:
        rows = conn.execute(_LOGGED, {"limit": limit}).fetchall()
    out = []
    for iid, embedding, probabilities, chosen, reward in rows:
        action = chosen[0]["name"] if chosen else NONE
        out.append(
            Logged(
                int(iid),
                np.asarray(embedding.to_list(), np.float32),
                action,
                max(float(probabilities.get(action, 0.0)), MIN_PROPENSITY),
                float(reward),
            )
        )
    return out


def targets(mod: Modulator, data: list[Logged]) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings (n, dim), output index of each logged action or -1 when not routable)."""
    index = {name: slot + 1 for slot, name in enumerate(mod.names) if name is not None}
    index[NONE] = 0
    x = torch.as_tensor(np.stack([d.embedding for d in data]))  # (n, dim)
    a = torch.tensor([index.get(d.action, -1) for d in data])  # (n,)
    a = torch.where(a > 0, torch.where(mod.present[(a - 1).clamp_min(0)], a, -1), a)
    return x, a


def action_probs(mod: Modulator, data: list[Logged]) -> torch.Tensor:
    """π(logged action | question) under `mod`, (n,); 0 for options it cannot route to."""
    x, a = targets(mod, data)
    probs = mod(x)  # (n, slots + 1)
    return torch.where(a >= 0, probs.gather(1, a.clamp_min(0)[:, None])[:, 0], 0.0)


def ips(mod: Modulator, data: list[Logged]) -> dict[str, float]:
    """Inverse-propensity estimate of `mod`'s mean reward on logged decisions (the mass it
    puts on options the log has no reward for counts as 0: unknown), and the effective
    sample size of the weights."""
    pi = action_probs(mod, data).double()
    mu = torch.tensor([d.propensity for d in data], dtype=torch.float64)
    r = torch.tensor([d.reward for d in data], dtype=torch.float64)
    w = pi / mu
    square = float((w * w).sum())
    return {
        "value": round(float((w * r).mean()), 4),
        "ess": round(float(w.sum()) ** 2 / square, 2) if square > 0 else 0.0,
    }


def fit_network(
    mod: Modulator, loss_of: Callable[[], torch.Tensor], steps: int, lr: float
) -> float:
    """Train `mod`'s network (its centroid prior stays) for `steps` full-batch Adam steps on
    `loss_of()`, then freeze it again; the last loss (0.0 with no step)."""
    params = [p for name, p in mod.named_parameters() if name.startswith(("net.", "head."))]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    loss = torch.tensor(0.0)
    mod.train()
    for _ in range(steps):
        loss = loss_of()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    mod.eval()
    for p in params:
        p.requires_grad_(False)
    return float(loss.detach())
