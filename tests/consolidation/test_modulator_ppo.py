"""The modulator learns from rewards with PPO (consolidation/modulator_ppo.py): a reward
model of the logged decisions, a stable-baselines3 PPO policy trained against it and
distilled into the modulator, served only when the doubly robust estimate says so."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from psycopg.types.json import Jsonb

from consolidation import modulator_ppo, modulator_training
from consolidation.routing_log import Logged
from npllm import interactions, modulator
from npllm.adapters import MODULATOR
from npllm.config import ModulatorConfig
from npllm.errors import ConfigError
from npllm.modulator import NONE, Modulator

from ..conftest import make_settings

E = np.eye(384, dtype=np.float32)
# Tiny PPO and distillation (the modulator itself keeps its real size: hidden = 1024).
FAST = {"NPLLM_MODULATOR__PPO_TIMESTEPS": "2048", "NPLLM_MODULATOR__TRAIN_STEPS": "25"}


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


# Adapter x's topic centroid is axis 0, y's axis 1. Topic A's questions lie inside both
# scopes but nearer y, so centroid routing sends them to y; topic B's go to y as well.
TOPIC = {"A": _unit(E[0] + 1.3 * E[1]), "B": _unit(E[1] - 0.5 * E[0])}
LIKES = {"A": {"x": 1.0, "y": -1.0, NONE: 0.0}, "B": {"x": -1.0, "y": 1.0, NONE: 0.0}}


def _question(topic: str, rng: np.random.Generator) -> np.ndarray:
    return _unit(TOPIC[topic] + 0.02 * rng.standard_normal(384))


def _explored(
    mod: Modulator, n: int, informative: bool, seed: int, explore: float = 0.4
) -> list[tuple[Logged, dict[str, float]]]:
    """`n` decisions, topics A and B in turn, of a logging policy that routes like `mod`
    and with probability `explore` picks an option at random instead (so every option is
    logged for each topic), with the probabilities it used; rewarded as LIKES says (plus
    noise), or, not `informative`, ±1 at random whatever the option."""
    rng = np.random.default_rng(seed)
    names = [NONE, "x", "y"]
    out = []
    for i in range(n):
        topic = "AB"[i % 2]
        q = _question(topic, rng)
        decision = mod.decide(q)
        greedy = decision.chosen[0][0] if decision.chosen else NONE
        action = greedy if rng.random() > explore else names[int(rng.integers(3))]
        probabilities = {o: (1 - explore) * (o == greedy) + explore / 3 for o in names}
        if informative:
            reward = float(np.clip(LIKES[topic][action] + 0.2 * rng.standard_normal(), -1, 1))
        else:
            reward = float(rng.choice([-1.0, 1.0]))
        logged = Logged(i, q, action, probabilities[action], reward)
        out.append((logged, probabilities))
    return out


def _insert(pool: Any, logs: list[tuple[Logged, dict[str, float]]]) -> None:
    """The decisions as the awake path and the feedback leave them in the database."""
    with pool.connection() as conn:
        for d, probabilities in logs:
            iid = interactions.record(
                conn,
                interactions.Interaction(
                    [{"role": "user", "content": "q"}], "q", "a", "test", d.embedding
                ),
            )
            chosen = [] if d.action == NONE else [{"name": d.action, "version": 1, "weight": 1}]
            conn.execute(
                "INSERT INTO npllm.routing_decisions (interaction_id, mode, probabilities, chosen)"
                " VALUES (%s, 'modulator', %s, %s)",
                (iid, Jsonb(probabilities), Jsonb(chosen)),
            )
            conn.execute(
                "INSERT INTO npllm.replay_buffer (interaction_id, implicit_sum, implicit_n, "
                "implicit, reward) VALUES (%s, %s, 1, %s, %s)",
                (iid, d.reward, d.reward, d.reward),
            )


def _trainings(pool: Any) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        cur = conn.execute("SELECT * FROM npllm.modulator_trainings ORDER BY id")
        columns = [c.name for c in cur.description or []]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


def _centroids(settings: Any) -> Modulator:
    mod = Modulator(settings.modulator)
    mod.set_adapters({"x": E[0], "y": E[1]})
    return mod


def test_rewards_favouring_an_adapter_for_a_topic_train_a_served_ppo_modulator(
    fresh_database: Any, tmp_path: Path
) -> None:
    pool = fresh_database.pool
    settings = make_settings(tmp_path, NPLLM_MODULATOR__METHOD="ppo", **FAST)
    current = _centroids(settings)
    a = _question("A", np.random.default_rng(99))
    assert current.decide(a).chosen == [("y", 1.0)]  # centroid routing: the disliked one
    _insert(pool, _explored(current, 160, informative=True, seed=0))

    report = modulator_training.consolidate(settings, pool, current, None, seed=0)
    assert report["verdict"] == "passes", report
    assert report["method"] == "ppo" and (report["train"], report["evaluate"]) == (120, 40)
    assert report["reward_model"]["skill"] > 0.5
    assert report["dr_gain"]["low"] >= settings.modulator.min_improvement
    assert report["trained"]["dr"] > report["current"]["dr"] + 0.3
    assert report["trained"]["value"] > report["current"]["value"]  # IPS agrees
    assert 1_000_000 <= report["parameters"] <= 5_000_000
    assert report["ppo"]["timesteps"] == 2048

    store = modulator.store_for(settings, pool)
    trained = Modulator(settings.modulator)
    trained.load(modulator.weights(store.version(MODULATOR, report["version"])))
    trained.set_adapters(current.routable())
    assert trained.parameter_count == current.parameter_count == report["parameters"]
    rng = np.random.default_rng(7)  # questions of either topic it never saw
    assert [trained.decide(_question("A", rng)).chosen for _ in range(5)] == [[("x", 1.0)]] * 5
    assert [trained.decide(_question("B", rng)).chosen for _ in range(5)] == [[("y", 1.0)]] * 5
    assert current.decide(a).chosen == [("y", 1.0)]  # the current one is untouched

    [row] = _trainings(pool)
    assert (row["method"], row["decisions"], row["n_train"], row["n_eval"]) == ("ppo", 160, 120, 40)
    assert row["served"] is True and row["version"] == report["version"]
    assert row["reason"].startswith("used: doubly robust mean reward")
    assert row["trained_dr"] == pytest.approx(report["trained"]["dr"], abs=1e-4)
    assert row["current_ips"] == pytest.approx(report["current"]["value"], abs=1e-4)
    assert row["margin"] == pytest.approx(0.02) and row["parameters"] == report["parameters"]
    [listed] = modulator.listing(store)
    assert listed["status"] == "candidate" and listed["reason"] is None  # the cycle publishes
    assert listed["metrics"]["method"] == "ppo" and "dr_gain" in listed["metrics"]


def test_uninformative_rewards_keep_the_ppo_modulator_as_a_candidate(
    fresh_database: Any, tmp_path: Path
) -> None:
    pool = fresh_database.pool
    settings = make_settings(tmp_path, NPLLM_MODULATOR__METHOD="ppo", **FAST)
    current = _centroids(settings)
    _insert(pool, _explored(current, 160, informative=False, seed=1))

    report = modulator_training.consolidate(settings, pool, current, 7, seed=0)
    assert report["verdict"].startswith("kept as candidate: "), report
    assert "below modulator.min_improvement = 0.02" in report["verdict"]
    assert report["dr_gain"]["low"] < settings.modulator.min_improvement
    store = modulator.store_for(settings, pool)
    [listed] = modulator.listing(store)
    assert listed["status"] == "candidate" and "min_improvement" in listed["reason"]
    assert modulator.active(store) is None
    [row] = _trainings(pool)
    assert row["served"] is False and row["sleep_cycle"] == 7
    assert row["reason"] == report["verdict"] and row["version"] == listed["version"]


def test_a_disliked_adapter_goes_back_to_the_bare_base_not_to_an_untried_one() -> None:
    """Greedy logs, as the awake path makes them: questions near axis 0 go to x and are
    disliked, those near axis 2 go to y and are liked. Nothing says how y would answer
    axis 0's questions (outside its scope): the trained modulator answers them with no
    adapter."""
    config = ModulatorConfig(ppo_timesteps=2048, train_steps=25)
    current = Modulator(config)
    current.set_adapters({"x": E[0], "y": E[2]})
    rng = np.random.default_rng(3)
    logs = []
    for i in range(80):
        q = _unit(E[2 * (i % 2)] + 0.02 * rng.standard_normal(384))
        decision = current.decide(q)
        action = decision.chosen[0][0]
        logs.append(Logged(i, q, action, decision.probabilities[action], 0.6 if i % 2 else -0.8))
    random.Random(0).shuffle(logs)
    trained, report, reason = modulator_ppo.fit(current, logs[20:], logs[:20], config, seed=0)
    assert reason is None, report
    q0 = _unit(E[0] + 0.02 * rng.standard_normal(384))
    assert current.decide(q0).chosen == [("x", 1.0)]
    assert trained.decide(q0).chosen == []  # not y, never tried there
    # What the bandit paid PPO there: none unknown (0), x disliked, y outside its scope.
    model = modulator_ppo.fit_rewards(logs[20:], [NONE, "x", "y"], config.none_similarity)
    paid = modulator_ppo.bandit_rewards(current, q0[None].astype(np.float64), model)[0]
    assert paid[0] == 0.0 and -0.8 < paid[1] < -0.5 and paid[2] == modulator_ppo.UNAVAILABLE
    assert trained.decide(_unit(E[2] + 0.02 * rng.standard_normal(384))).chosen == [("y", 1.0)]


def test_the_served_modulator_stays_between_one_and_five_million_parameters() -> None:
    assert 1_000_000 <= Modulator(ModulatorConfig()).parameter_count <= 5_000_000


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NPLLM_MODULATOR__PPO_TIMESTEPS": "-5"}, "modulator.ppo_timesteps"),
        ({"NPLLM_MODULATOR__METHOD": "dqn"}, "modulator.method"),
        (
            {"NPLLM_MODULATOR__PPO_TIMESTEPS": "512", "NPLLM_MODULATOR__PPO_ROLLOUT": "1024"},
            "modulator.ppo_rollout = 1024 is more than modulator.ppo_timesteps = 512",
        ),
        ({"NPLLM_MODULATOR__CONFIDENCE": "1.0"}, "modulator.confidence"),
    ],
)
def test_a_bad_ppo_setting_is_refused_at_load_naming_the_key(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        make_settings(tmp_path, **env)


def test_the_cycle_summary_gives_the_doubly_robust_estimate_that_decided(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.worker import print_summary

    trained = {
        "decisions": 160,
        "current": {"value": 0.05, "ess": 30.0, "dr": 0.04},
        "trained": {"value": 0.93, "ess": 10.7, "dr": 0.91},
        "verdict": "published",
    }
    print_summary({"cycle": 5, "adapters": {}, "modulator": trained, "base_unchanged": True})
    out = capsys.readouterr().out
    assert "modulator: 160 rated decisions, doubly robust mean reward +0.040 -> +0.910: " in out
