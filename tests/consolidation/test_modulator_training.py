"""Training the modulator (consolidation/modulator_training.py): supervised training on
logged rewards, the off-policy gate, its versions in the store, and the cycle's step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from psycopg.types.json import Jsonb

from consolidation import modulator_training, routing_log
from consolidation.routing_log import Logged
from npllm import interactions, modulator
from npllm.adapters import MODULATOR
from npllm.config import ModulatorConfig
from npllm.modulator import NONE, Modulator

from ..conftest import make_settings

SMALL = ModulatorConfig(hidden=32, max_adapters=4)
E = np.eye(384, dtype=np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _logs(mod: Modulator, rewards: dict[int, float], n: int, seed: int) -> list[Logged]:
    """`n` greedy decisions of `mod` on questions near axes 0, 1, 2 (in turn), rewarded
    by axis, the way the awake path logs them."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        axis = i % 3
        q = _unit(E[axis] + 0.03 * rng.standard_normal(384))
        decision = mod.decide(q)
        action = decision.chosen[0][0] if decision.chosen else NONE
        out.append(Logged(i, q, action, decision.probabilities[action], rewards[axis]))
    return out


def _probs(mod: Modulator, q: np.ndarray) -> dict[str, float]:
    return mod.decide(q).probabilities


def test_training_on_logged_rewards_avoids_a_badly_rated_adapter() -> None:
    mod = Modulator(ModulatorConfig())
    mod.set_adapters({"x": E[0], "y": E[2]})
    # Axis 0 goes to x, which users dislike; axis 1 to no adapter, axis 2 to y: both liked.
    logs = _logs(mod, {0: -0.8, 1: 0.5, 2: 0.6}, 60, seed=0)
    assert [d.action for d in logs[:3]] == ["x", NONE, "y"]
    train, held = logs[:45], logs[45:]
    # On its own greedy log the logging policy's estimate is the mean logged reward.
    current = routing_log.ips(mod, held)
    assert current["value"] == pytest.approx(np.mean([d.reward for d in held]), abs=1e-3)
    trained, loss = modulator_training.fit(mod, train, steps=150, lr=1e-3, seed=0)
    better = routing_log.ips(trained, held)
    assert better["value"] > current["value"] + 0.2
    assert loss < 0.05
    q0 = _unit(E[0] + 0.03 * np.random.default_rng(9).standard_normal(384))
    assert trained.decide(q0).chosen == []  # no longer sent to x
    assert trained.decide(E[2]).chosen == [("y", 1.0)]  # what worked still does
    assert mod.decide(q0).chosen == [("x", 1.0)]  # the current one is untouched


def _insert(pool: Any, logs: list[Logged], mode: str = "modulator") -> None:
    with pool.connection() as conn:
        for d in logs:
            iid = interactions.record(
                conn,
                interactions.Interaction(
                    [{"role": "user", "content": "q"}], "q", "a", "test", d.embedding
                ),
            )
            chosen = [] if d.action == NONE else [{"name": d.action, "version": 1, "weight": 1}]
            conn.execute(
                "INSERT INTO npllm.routing_decisions (interaction_id, mode, probabilities, chosen)"
                " VALUES (%s, %s, %s, %s)",
                (iid, mode, Jsonb({NONE: 1e-3, d.action: d.propensity}), Jsonb(chosen)),
            )
            conn.execute(
                "INSERT INTO npllm.replay_buffer (interaction_id, implicit_sum, implicit_n, "
                "implicit, reward) VALUES (%s, %s, 1, %s, %s)",
                (iid, d.reward, d.reward, d.reward),
            )


def test_a_cycle_publishes_only_what_the_off_policy_estimate_prefers(
    fresh_database: Any, tmp_path: Path
) -> None:
    pool = fresh_database.pool
    settings = make_settings(
        tmp_path,
        NPLLM_MODULATOR__MIN_DECISIONS="40",
        NPLLM_MODULATOR__TRAIN_STEPS="150",
        NPLLM_MODULATOR__METHOD="supervised",
    )
    current = Modulator(settings.modulator)
    current.set_adapters({"x": E[0], "y": E[2]})

    _insert(pool, _logs(current, {0: -0.8, 1: 0.5, 2: 0.6}, 30, seed=1))
    _insert(pool, _logs(current, {0: 1.0, 1: 1.0, 2: 1.0}, 30, seed=2), mode="pinned")
    few = modulator_training.consolidate(settings, pool, current, None, seed=0)
    assert few == {
        "decisions": 30,
        "verdict": "skipped: 30 rated routing decisions, fewer than modulator.min_decisions = 40",
    }

    _insert(pool, _logs(current, {0: -0.8, 1: 0.5, 2: 0.6}, 30, seed=3))
    good = modulator_training.consolidate(settings, pool, current, None, seed=0)
    assert good["decisions"] == 60 and (good["train"], good["evaluate"]) == (45, 15)
    assert good["verdict"] == "passes", good
    assert good["trained"]["value"] > good["current"]["value"] + 0.2
    store = modulator.store_for(settings, pool)
    path = modulator.weights(store.version(MODULATOR, good["version"]))
    assert path == tmp_path / "modulator" / "v1" / "modulator.safetensors" and path.exists()
    assert modulator.active(store) is None  # stored, not yet used: publishing activates
    assert store.current(MODULATOR) is None
    store.activate(store.version(MODULATOR, good["version"]))
    active = modulator.active(store)
    assert active is not None and (active.version, modulator.weights(active)) == (1, path)
    loaded, version = modulator.routing(settings, pool, current.routable())
    assert version == 1 and loaded.decide(_unit(E[0] + E[0])).chosen == []

    # Rewards that do not depend on the route: the logging modulator cannot be beaten.
    with pool.connection() as conn:
        conn.execute("UPDATE npllm.replay_buffer SET reward = 0.3")
    flat = modulator_training.consolidate(settings, pool, current, None, seed=0)
    assert flat["verdict"].startswith("kept as candidate: estimated mean reward +0.3")
    assert flat["current"]["value"] == pytest.approx(0.3)
    assert "below modulator.min_improvement = 0.02" in flat["verdict"]
    rows = {r["version"]: (r["status"], r["reason"]) for r in modulator.listing(store)}
    assert rows[1] == ("active", None)
    assert rows[2][0] == "candidate" and "min_improvement" in rows[2][1]
    assert modulator.previous(store) is None  # rolling back means: untrained
    retired = store.deactivate(MODULATOR, "rolled back")
    assert retired is not None and retired.version == 1 and modulator.active(store) is None
    previous = modulator.previous(store)
    assert previous is not None and previous.version == 1


def test_the_cycle_step_publishes_a_better_modulator_and_reports_why_not_otherwise(
    fresh_database: Any, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from consolidation.cycle import CycleContext, train_modulator
    from consolidation.publisher import Trained

    pool = fresh_database.pool
    settings = make_settings(
        tmp_path, NPLLM_MODULATOR__TRAIN_STEPS="150", NPLLM_MODULATOR__METHOD="supervised"
    )
    registry = SimpleNamespace(scopes=lambda config: {"x": E[0], "y": E[2]})
    with pool.connection() as conn:
        row = conn.execute("INSERT INTO npllm.sleep_cycles (seed) VALUES (0) RETURNING id")
        cycle = int(row.fetchone()[0])  # type: ignore[index]
    published: list[tuple[int, int]] = []
    phases: list[str] = []

    class Publisher:
        def publish(self, trained: Trained) -> int:
            assert trained.kind == "modulator" and trained.path is None
            assert trained.version is not None
            published.append((trained.version, trained.sleep_cycle))
            return trained.version

    ctx = CycleContext(
        settings,
        pool,
        llm=None,  # type: ignore[arg-type]  # the modulator trains without the LLM
        embedder=None,
        registry=registry,  # type: ignore[arg-type]
        publisher=Publisher(),
        seed=0,
        on_phase=phases.append,
    )

    def step() -> dict[str, Any]:
        return train_modulator(ctx, cycle)

    assert step()["verdict"].startswith("skipped: 0 rated routing decisions")
    logger = Modulator(settings.modulator)
    logger.set_adapters({"x": E[0], "y": E[2]})
    _insert(pool, _logs(logger, {0: -0.8, 1: 0.5, 2: 0.6}, 60, seed=4))
    report = step()
    assert report["verdict"] == "published" and report["published"] == 1
    assert published == [(1, cycle)]
    assert phases[-2:] == ["training the modulator", "publishing the modulator"]
    store = modulator.store_for(settings, pool)
    store.activate(store.version(MODULATOR, 1))
    modulator.weights(store.version(MODULATOR, 1)).write_bytes(b"broken")
    broken = step()
    assert broken["verdict"].startswith("skipped: the active modulator v1 does not load:")
    assert published == [(1, cycle)]


def test_the_cycle_summary_says_what_happened_to_the_modulator(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.worker import print_summary

    trained = {
        "decisions": 60,
        "current": {"value": 0.1, "ess": 15.0},
        "trained": {"value": 0.37, "ess": 9.8},
        "verdict": "published",
    }
    print_summary({"cycle": 3, "adapters": {}, "modulator": trained, "base_unchanged": True})
    print_summary(
        {"cycle": 4, "adapters": {}, "modulator": {"verdict": "skipped: v1 does not load"}}
    )
    out = capsys.readouterr().out
    assert "modulator: 60 rated decisions, estimated mean reward +0.100 -> +0.370: published" in out
    assert "modulator: not trained: skipped: v1 does not load" in out
