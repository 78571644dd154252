"""The modulator learns from rewards with PPO (``modulator.method = "ppo"``): the
dopaminergic system of the design, only during sleep.

Routing a question is a one-step decision (a contextual bandit): the question's embedding
is the context, the options are "none" and the adapters the modulator routes to now, and
the answer's integrated reward (``npllm.replay_buffer.reward``, −1..1) is the payoff. On
the training share of the logged decisions (consolidation/modulator_training.py splits
them) a night:

1. fits a **reward model**: per option, the logged rewards of the decisions that used it,
   weighted by how alike their question is to the one asked (cosine above
   ``modulator.none_similarity``, the topic radius, rescaled to 0..1) and shrunk towards 0
   by one pseudo-decision (:data:`PRIOR`): where an option was never used on a question of
   the same topic it predicts 0, unknown — what inverse propensity scoring counts for a
   reward the log does not have. Its skill on the held-out decisions (1 − its squared
   error over that of predicting the training mean) is reported;
2. trains a **PPO policy** (stable-baselines3, a 64-unit MlpPolicy, seeded, on the CPU with
   one torch thread, ``modulator.ppo_timesteps`` steps in rollouts of
   ``modulator.ppo_rollout``) in :class:`RoutingBandit`: an episode is one logged training
   question, the action one option, the reward the reward model's prediction — and
   :data:`UNAVAILABLE` (−1) for an adapter whose scope does not hold the question: the
   modulator routes only inside a scope, and a disliked adapter's questions go back to
   the bare base, not to another adapter nobody tried on them;
3. **distils** it into a copy of the current modulator: per training question the target is
   the PPO policy's distribution where the reward model says it earns at least
   ``modulator.min_improvement`` more than the current modulator's, else the current
   modulator's own (what the log gives no reason to change stays as it is); the copy's
   network is fitted to the targets by cross-entropy (``modulator.train_steps`` full-batch
   Adam steps). So the served object stays a Modulator — centroid prior + the same
   1–5 M-parameter network, its parameter count unchanged — and the PPO policy, a
   throwaway of ~50 k parameters, never serves;
4. **gates** it off-policy on the held-out decisions, current against trained, with plain
   IPS (routing_log.ips) and doubly robust (:func:`doubly_robust`: the reward
   model's value of the policy plus the IPS correction of its error on the option
   logged). The doubly robust estimate decides: the trained modulator is used only when
   the one-sided ``modulator.confidence`` (95 %) lower bound of its paired per-decision
   gain reaches ``modulator.min_improvement``, the reward model has skill (> 0) on the
   held-out decisions, and IPS does not say it is worse (DR leans on the reward model
   where the log has few samples; IPS does not). Otherwise it is kept as ``candidate``
   with every reason that failed.

Why distil rather than train the modulator itself with PPO: the centroid prior makes the
modulator nearly deterministic (logit gaps of cos/0.05), so a PPO policy started from it
would almost never try another option and could not learn; the distilled network learns
exactly the correction to the prior that the PPO policy found worth making.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from consolidation.routing_log import Logged, fit_network, ips
from npllm.config import ModulatorConfig
from npllm.errors import ConsolidationError
from npllm.modulator import NONE, Modulator

PRIOR = 1.0  # the reward model's pseudo-decision at reward 0 (unknown), per question
UNAVAILABLE = -1.0  # the bandit's reward for an adapter outside its scope, never tried there
POLICY_WIDTH = 64  # hidden units of the PPO policy and of its value function
ENVS = 8  # bandits stepped together (stable-baselines3's DummyVecEnv, one process)


def options(mod: Modulator) -> tuple[list[str], list[int]]:
    """What `mod` can route to now: "none" and its routable adapters, with the column of
    each in its output."""
    names, columns = [NONE], [0]
    for slot, name in enumerate(mod.names):
        if name is not None and bool(mod.present[slot]):
            names.append(name)
            columns.append(slot + 1)
    return names, columns


@dataclass
class RewardModel:
    """Predicted reward of each option for a question: per option, the logged rewards of
    the decisions that used it on questions of the same topic, weighted by how alike the
    questions are and shrunk towards 0 (unknown) by one pseudo-decision."""

    options: list[str]
    used: list[np.ndarray]  # per option: (n_a, dim) the questions it was used on
    rewards: list[np.ndarray]  # per option: (n_a,) their rewards
    floor: float  # questions less alike than this (cosine) say nothing about each other

    def _kernel(self, questions: np.ndarray, k: int) -> np.ndarray:
        """(n, n_a) weights 0..1 of option k's logged questions for each question."""
        sims = questions.astype(np.float64) @ self.used[k].T.astype(np.float64)  # (n, n_a)
        return np.clip((sims - self.floor) / (1.0 - self.floor), 0.0, None)

    def predict(self, questions: np.ndarray) -> np.ndarray:
        """(n, options) predicted rewards of (n, dim) question embeddings, within -1..1."""
        out = np.zeros((len(questions), len(self.options)))
        for k in range(len(self.options)):
            if len(self.rewards[k]):
                weight = self._kernel(questions, k)  # (n, n_a)
                out[:, k] = weight @ self.rewards[k] / (PRIOR + weight.sum(axis=1))
        return out


def fit_rewards(data: list[Logged], names: list[str], floor: float) -> RewardModel:
    """The reward model of the logged decisions `data` for the options `names`; `floor`:
    modulator.none_similarity, how alike a question must be to be of the same topic."""
    dim = len(data[0].embedding)
    used, rewards = [], []
    for name in names:
        rows = [d for d in data if d.action == name]
        used.append(np.stack([d.embedding for d in rows]) if rows else np.zeros((0, dim)))
        rewards.append(np.array([d.reward for d in rows], dtype=np.float64))
    return RewardModel(names, used, rewards, floor)


def _option_index(data: list[Logged], names: list[str]) -> np.ndarray:
    """(n,) the option each logged decision used, -1 when it is not routable now."""
    index = {name: k for k, name in enumerate(names)}
    return np.array([index.get(d.action, -1) for d in data])


def skill(model: RewardModel, held: list[Logged], train_mean: float) -> dict[str, float]:
    """How well the reward model predicts held-out rewards of the option used: its mean
    squared error, that of predicting the training mean, and skill = 1 − their ratio (0
    when there is nothing to predict)."""
    a = _option_index(held, model.options)
    rows = [d for d, k in zip(held, a, strict=True) if k >= 0]
    if not rows:
        return {"mse": 0.0, "mse_of_mean": 0.0, "skill": 0.0}
    x = np.stack([d.embedding for d in rows])  # (n, dim)
    r = np.array([d.reward for d in rows])  # (n,)
    predicted = model.predict(x)[np.arange(len(rows)), a[a >= 0]]  # (n,)
    mse = float(np.mean((predicted - r) ** 2))
    baseline = float(np.mean((train_mean - r) ** 2))
    score = 1.0 - mse / baseline if baseline > 1e-12 else 0.0
    return {"mse": round(mse, 4), "mse_of_mean": round(baseline, 4), "skill": round(score, 4)}


class RoutingBandit(gym.Env[np.ndarray, np.int64]):
    """One episode = one routing decision: observe a logged training question (its
    embedding, scaled to unit variance per component), choose an option, receive the
    reward model's prediction for it, done."""

    def __init__(self, questions: np.ndarray, rewards: np.ndarray) -> None:
        super().__init__()
        n, dim = questions.shape
        self.questions = (questions * math.sqrt(dim)).astype(np.float32)  # (n, dim)
        self.rewards = rewards.astype(np.float32)  # (n, options)
        self.observation_space = spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.action_space = spaces.Discrete(rewards.shape[1])
        self._question = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._question = int(self.np_random.integers(len(self.questions)))
        return self.questions[self._question], {}

    def step(self, action: np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        reward = float(self.rewards[self._question, int(action)])
        return self.questions[self._question], reward, True, False, {}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """A 64-unit policy on batches of 64: one torch thread is fastest, and the night's
    other thread stays free."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_policy(
    questions: np.ndarray, rewards: np.ndarray, config: ModulatorConfig, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train PPO in a RoutingBandit over `questions` (n, dim) with `rewards` (n, options);
    the trained policy's probabilities (n, options) on the same questions, and a report."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    started = time.monotonic()
    with _one_thread():
        env = RoutingBandit(questions, rewards)
        # ENVS copies in one process: the policy routes ENVS questions per forward pass
        envs = make_vec_env(lambda: RoutingBandit(questions, rewards), n_envs=ENVS, seed=seed)
        model = PPO(
            "MlpPolicy",
            envs,
            learning_rate=config.ppo_learning_rate,
            n_steps=max(2, config.ppo_rollout // ENVS),
            batch_size=min(64, config.ppo_rollout),
            n_epochs=10,
            gamma=0.0,  # one step per episode: nothing to discount
            policy_kwargs={"net_arch": {"pi": [POLICY_WIDTH], "vf": [POLICY_WIDTH]}},
            seed=seed,
            device="cpu",
            verbose=0,
        )
        model.learn(total_timesteps=config.ppo_timesteps)
        with torch.no_grad():
            obs = torch.as_tensor(env.questions)
            dist = model.policy.get_distribution(obs).distribution
            if not isinstance(dist, torch.distributions.Categorical):  # Discrete actions: one
                raise ConsolidationError(f"PPO's policy is not categorical: {type(dist)}")
            probs = dist.probs.numpy().astype(np.float64)  # (n, options)
    value = float(np.mean((probs * rewards).sum(axis=1)))
    report = {
        "timesteps": int(model.num_timesteps),
        "parameters": sum(p.numel() for p in model.policy.parameters()),
        "reward_model_value": round(value, 4),  # its mean predicted reward on the questions
        "seconds": round(time.monotonic() - started, 1),
    }
    if not np.isfinite(probs).all():
        raise ConsolidationError(
            "the PPO policy's probabilities are not finite; try a lower modulator.ppo_learning_rate"
        )
    return probs, report


def _probabilities(mod: Modulator, questions: np.ndarray, columns: list[int]) -> np.ndarray:
    """(n, options) `mod`'s probabilities over its options (the others have 0)."""
    return mod(torch.as_tensor(questions, dtype=torch.float32))[:, columns].double().numpy()


def distil(
    current: Modulator,
    questions: np.ndarray,
    policy: np.ndarray,
    rewards: np.ndarray,
    config: ModulatorConfig,
    seed: int,
) -> tuple[Modulator, dict[str, Any]]:
    """A copy of `current` whose network makes it route like `policy` (n, options) on the
    (n, dim) `questions` where the reward model's predictions `rewards` (n, options) say the
    policy earns at least modulator.min_improvement more, and like `current` elsewhere."""
    _, columns = options(current)
    now = _probabilities(current, questions, columns)  # (n, options)
    gain = ((policy - now) * rewards).sum(axis=1)  # (n,)
    moved = gain >= config.min_improvement
    target = torch.as_tensor(np.where(moved[:, None], policy, now), dtype=torch.float32)
    torch.manual_seed(seed)
    mod = copy.deepcopy(current)
    x = torch.as_tensor(questions, dtype=torch.float32)  # (n, dim)

    def loss_of() -> torch.Tensor:
        logp = torch.log_softmax(mod.logits(x), dim=1)[:, columns]  # (n, options)
        return -(target * logp).sum(dim=1).mean()  # cross-entropy to the targets

    loss = fit_network(mod, loss_of, config.train_steps, config.learning_rate)
    entropy = float(-(target * target.clamp_min(1e-12).log()).sum(dim=1).mean())
    return mod, {
        "moved": int(moved.sum()),  # training questions whose target is the PPO policy's
        "kl": round(loss - entropy, 5),  # to the targets, after distilling
    }


def doubly_robust(mod: Modulator, data: list[Logged], model: RewardModel) -> np.ndarray:
    """(n,) per logged decision, `mod`'s doubly robust reward estimate: the reward model's
    value of its choice, plus its probability of the option logged over the logging
    probability times the reward model's error on it (0 for an option not routable now)."""
    names, columns = options(mod)
    if names != model.options:
        raise ConsolidationError(
            f"the reward model was fitted for options {model.options}, the modulator routes "
            f"to {names}"
        )
    x = np.stack([d.embedding for d in data])  # (n, dim)
    pi = _probabilities(mod, x, columns)  # (n, options)
    predicted = model.predict(x)  # (n, options)
    a = _option_index(data, names)
    mu = np.array([d.propensity for d in data])
    r = np.array([d.reward for d in data])
    rows = np.arange(len(data))
    logged = np.where(a >= 0, pi[rows, a.clip(0)] / mu, 0.0)  # (n,) importance weights
    error = r - predicted[rows, a.clip(0)]  # (n,)
    return (pi * predicted).sum(axis=1) + logged * error


def gate(
    current: Modulator,
    trained: Modulator,
    held: list[Logged],
    model: RewardModel,
    fitted: dict[str, float],
    config: ModulatorConfig,
) -> tuple[dict[str, Any], str | None]:
    """Current against trained on the held-out decisions (module doc, step 4): the figures,
    and why the trained one is not used (None: it is)."""
    before, after = ips(current, held), ips(trained, held)
    dr_before, dr_after = doubly_robust(current, held, model), doubly_robust(trained, held, model)
    before["dr"], after["dr"] = round(float(dr_before.mean()), 4), round(float(dr_after.mean()), 4)
    gain = dr_after - dr_before  # (n,) paired per decision
    se = float(gain.std(ddof=1)) / math.sqrt(len(gain)) if len(gain) > 1 else math.inf
    low = float(gain.mean()) - NormalDist().inv_cdf(config.confidence) * se
    figures = {
        "current": before,
        "trained": after,
        "dr_gain": {
            "mean": round(float(gain.mean()), 4),
            "se": round(se, 4),
            "low": round(low, 4),
            "confidence": config.confidence,
        },
    }
    reasons = []
    if fitted["skill"] <= 0:
        reasons.append(
            f"the reward model predicts held-out rewards no better than their mean "
            f"(skill {fitted['skill']:+.3f}): the rewards say nothing about the route"
        )
    if low < config.min_improvement:
        reasons.append(
            f"doubly robust mean reward {after['dr']:+.3f} vs {before['dr']:+.3f} now: the "
            f"gain's {config.confidence:.0%} lower bound {low:+.3f} is below "
            f"modulator.min_improvement = {config.min_improvement}"
        )
    if after["value"] < before["value"]:
        reasons.append(
            f"inverse propensity scoring says it routes worse ({after['value']:+.3f} vs "
            f"{before['value']:+.3f} now)"
        )
    return figures, "; ".join(reasons) or None


def bandit_rewards(current: Modulator, questions: np.ndarray, model: RewardModel) -> np.ndarray:
    """(n, options) what the bandit pays for each option of each (n, dim) question: the
    reward model's prediction, and UNAVAILABLE for an adapter whose scope does not hold
    the question (the modulator routes only inside a scope; a disliked adapter's questions
    go back to the bare base, not to another adapter never tried on them)."""
    _, columns = options(current)
    with torch.no_grad():
        inside = current.inside(torch.as_tensor(questions, dtype=torch.float32))  # (n, slots)
    slots = [c - 1 for c in columns[1:]]
    available = np.ones((len(questions), len(columns)), dtype=bool)
    available[:, 1:] = (inside[:, slots] > 0).numpy()
    return np.where(available, model.predict(questions), UNAVAILABLE)


def fit(
    current: Modulator, train: list[Logged], held: list[Logged], config: ModulatorConfig, seed: int
) -> tuple[Modulator, dict[str, Any], str | None]:
    """Steps 1-4 of the module doc: the trained modulator, the report's figures, and why it
    is not to be used (None: it is)."""
    names, _ = options(current)
    model = fit_rewards(train, names, config.none_similarity)
    fitted = skill(model, held, float(np.mean([d.reward for d in train])))
    questions = np.stack([d.embedding for d in train]).astype(np.float64)  # (n, dim)
    paid = bandit_rewards(current, questions, model)  # (n, options)
    policy, ppo = train_policy(questions, paid, config, seed)
    trained, distilled = distil(current, questions, policy, paid, config, seed)
    figures, reason = gate(current, trained, held, model, fitted, config)
    report = {
        "options": names,
        "reward_model": {**fitted, "prior": PRIOR, "floor": config.none_similarity},
        "ppo": ppo,
        "distilled": distilled,
        **figures,
    }
    return trained, report, reason
