"""Training the modulator while asleep (``modulator.train``; off by default).

The awake path logs every routing decision the modulator makes
(``npllm.routing_decisions``: the probability of every option and what was used) and the
feedback integrates into a reward per answer (``npllm.replay_buffer.reward``). Once
``modulator.min_decisions`` decisions have a rated answer, a cycle:

1. splits them (seeded) into training (75 %) and evaluation (25 %) decisions;
2. trains a copy of the current modulator — with ``modulator.method = "ppo"`` (the
   default) by PPO against a reward model, gated by a doubly robust estimate
   (consolidation/modulator_ppo.py, instead of steps 2-4 here); with "supervised" —
   supervised on the logged rewards: a decision
   that used option a (the top adapter, or "none") with reward r > 0 adds −r·log π(a|q)
   (choose it again); with r < 0 it adds −|r|·log π(none|q) when a was an adapter (a
   disliked adapter's questions go back to the bare base, the safe choice — not to another
   adapter that was never tried on them) and −|r|·log(1 − π(none|q)) when a was none;
   the centroid prior stays, the network learns the correction;
3. evaluates the current and the trained modulator off-policy on the held-out decisions
   with inverse propensity scoring (IPS): V(π) = mean(r·π(a|q) / μ(a|q)), μ being the
   probability the logging modulator gave the option it used (clipped at 0.01);
4. uses the trained modulator only when V(trained) ≥ V(current) +
   ``modulator.min_improvement``; otherwise the version is kept as ``candidate`` with the
   reason.

Routing is greedy (top-1), so μ is the logging modulator's probability for what it chose,
not a sampling probability, and the options it did not choose have no reward in the log.
Plain (not self-normalised) IPS counts the probability a policy moves onto such options as
reward 0 — unknown, between liked (+1) and disliked (−1) — so moving away from disliked
answers is a gain, moving away from liked ones a loss, and nothing is credited with
rewards it was never given. The effective sample size of the weights is reported beside
each estimate.

Versions are kept in the one version store (npllm/versions.py, kind ``modulator``;
``npllm.modulator_versions`` is a view of them); every training, and every night skipped
for too few decisions, is a ``npllm.modulator_trainings`` row with the estimates and the
reason (sql/017_modulator_trainings.sql).
"""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import torch
from psycopg.types.json import Jsonb

from consolidation.routing_log import Logged, fit_network, ips, logged, targets
from npllm.config import ModulatorConfig, Settings
from npllm.modulator import Modulator, store_for, store_version

EVAL_SHARE = 0.25


def fit(
    current: Modulator, data: list[Logged], steps: int, lr: float, seed: int
) -> tuple[Modulator, float]:
    """A copy of `current` trained on the logged rewards (see the module doc); its final
    training loss."""
    torch.manual_seed(seed)
    mod = copy.deepcopy(current)
    x, a = targets(mod, data)
    r = torch.tensor([d.reward for d in data])
    usable = (a >= 0) & (r != 0)
    x, a, r = x[usable], a[usable], r[usable]
    bad = r < 0

    def loss_of() -> torch.Tensor:
        logp = torch.log_softmax(mod.logits(x), dim=1)  # (n, slots + 1)
        chosen = logp.gather(1, a[:, None])[:, 0]  # (n,)
        # Liked: choose it again. A disliked adapter: answer without adapters. Disliked
        # with no adapter: anything else.
        target = torch.where(a > 0, logp[:, 0], torch.log1p(-chosen.exp().clamp(max=1 - 1e-6)))
        return torch.where(bad, r * target, -r * chosen).mean()

    loss = fit_network(mod, loss_of, steps if len(a) else 0, lr)
    return mod, round(loss, 5)


def _supervised(
    current: Modulator, train: list[Logged], held: list[Logged], cfg: ModulatorConfig, seed: int
) -> tuple[Modulator, dict[str, Any], str | None]:
    """Steps 2-4 of the module doc: the trained modulator, its figures, and why it is not
    to be used (None: it is)."""
    trained, loss = fit(current, train, cfg.train_steps, cfg.learning_rate, seed)
    before, after = ips(current, held), ips(trained, held)
    figures = {"train_loss": loss, "current": before, "trained": after}
    if after["value"] - before["value"] >= cfg.min_improvement:
        return trained, figures, None
    return (
        trained,
        figures,
        f"estimated mean reward {after['value']:+.3f} vs {before['value']:+.3f} now: "
        f"below modulator.min_improvement = {cfg.min_improvement}",
    )


def consolidate(
    settings: Settings, pool: Any, current: Modulator, cycle: int | None, seed: int
) -> dict[str, Any]:
    """Train and evaluate a modulator on the logged decisions (module doc, steps 1-4; with
    ``modulator.method = "ppo"``, consolidation/modulator_ppo.py). Stores the trained
    version; the report's "verdict" is "passes" when it should be used (the caller
    publishes report["version"]), else why not. Every call is a
    ``npllm.modulator_trainings`` row."""
    cfg = settings.modulator
    data = logged(pool)
    report: dict[str, Any] = {"decisions": len(data)}
    if len(data) < cfg.min_decisions:
        report["verdict"] = (
            f"skipped: {len(data)} rated routing decisions, fewer than "
            f"modulator.min_decisions = {cfg.min_decisions}"
        )
        _record(pool, cfg, cycle, report, None)
        return report
    rng = random.Random(seed)
    shuffled = data[:]
    rng.shuffle(shuffled)
    held = max(2, round(len(shuffled) * EVAL_SHARE))
    evaluate, train = shuffled[:held], shuffled[held:]
    if cfg.method == "ppo":
        from consolidation import modulator_ppo  # stable-baselines3: only when it trains

        trained, figures, reason = modulator_ppo.fit(current, train, evaluate, cfg, seed)
    else:
        trained, figures, reason = _supervised(current, train, evaluate, cfg, seed)
    report.update(
        method=cfg.method,
        train=len(train),
        evaluate=len(evaluate),
        logged_mean_reward=round(float(np.mean([d.reward for d in evaluate])), 4),
        parameters=trained.parameter_count,
        **figures,
    )
    report["verdict"] = "passes" if reason is None else f"kept as candidate: {reason}"
    # Kept as a candidate (refused with the reason, older ones pruned) in the version store.
    store = store_for(settings, pool)
    report["version"] = store_version(store, trained, report, cycle, reason).version
    _record(pool, cfg, cycle, report, reason)
    return report


_RECORD = """
INSERT INTO npllm.modulator_trainings (
    sleep_cycle, method, decisions, n_train, n_eval, current_ips, trained_ips, current_dr,
    trained_dr, dr_gain_low, ess, reward_model_skill, margin, served, version, parameters,
    reason, metrics)
VALUES (
    %(cycle)s, %(method)s, %(decisions)s, %(train)s, %(evaluate)s, %(current_ips)s,
    %(trained_ips)s, %(current_dr)s, %(trained_dr)s, %(dr_gain_low)s, %(ess)s, %(skill)s,
    %(margin)s, %(served)s, %(version)s, %(parameters)s, %(reason)s, %(metrics)s)
"""


def _record(
    pool: Any, cfg: ModulatorConfig, cycle: int | None, report: dict[str, Any], reason: str | None
) -> None:
    """The training as a npllm.modulator_trainings row, its reason in words."""
    current, trained = report.get("current", {}), report.get("trained", {})
    gain = report.get("dr_gain")
    served = "version" in report and reason is None
    if not served:
        why = report["verdict"]
    elif gain is not None:
        why = (
            f"used: doubly robust mean reward {trained['dr']:+.3f} vs {current['dr']:+.3f} now, "
            f"the gain's {gain['confidence']:.0%} lower bound {gain['low']:+.3f} at least "
            f"modulator.min_improvement = {cfg.min_improvement}"
        )
    else:
        why = (
            f"used: estimated mean reward {trained['value']:+.3f} vs {current['value']:+.3f} "
            f"now, at least modulator.min_improvement = {cfg.min_improvement} better"
        )
    row = {
        "cycle": cycle,
        "method": cfg.method,
        "decisions": report["decisions"],
        "train": report.get("train"),
        "evaluate": report.get("evaluate"),
        "current_ips": current.get("value"),
        "trained_ips": trained.get("value"),
        "current_dr": current.get("dr"),
        "trained_dr": trained.get("dr"),
        "dr_gain_low": gain["low"] if gain else None,
        "ess": trained.get("ess"),
        "skill": report.get("reward_model", {}).get("skill"),
        "margin": cfg.min_improvement,
        "served": served,
        "version": report.get("version"),
        "parameters": report.get("parameters"),
        "reason": why,
        "metrics": Jsonb({k: v for k, v in report.items() if k != "version"}),
    }
    with pool.connection() as conn:
        conn.execute(_RECORD, row)
