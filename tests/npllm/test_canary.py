"""Canary trials' rule (npllm/canary.py): the stable split, the arms, what counts as taught,
and the one-sided Welch test that promotes or rolls back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from npllm.canary import Trial, bucket, conversation_key, decide, new_keys, welch
from npllm.config import CanaryConfig
from npllm.versions import Keys, Version

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def _unit(*values: float, dim: int = 8) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def _trial(share: float, taught: np.ndarray | None = None, trial_id: int = 7) -> Trial:
    cand = Version("zorblax", 3, Path("/x/v3"), "active")
    ctrl = Version("zorblax", 2, Path("/x/v2"), "retired")
    taught = np.zeros((0, 8), np.float32) if taught is None else taught
    return Trial(trial_id, "zorblax", cand, ctrl, share, taught, 0.7)


def test_the_split_follows_the_share_over_many_conversations_and_is_stable() -> None:
    trial = _trial(0.2)
    far = _unit(0, 0, 0, 1)
    arms = [trial.arm(f"conversation {i}: how do I …?", far) for i in range(4000)]
    share = arms.count("candidate") / len(arms)
    assert abs(share - 0.2) < 0.02, share
    assert set(arms) == {"candidate", "control"}
    # the same conversation, asked again (any turn), keeps its arm
    again = [trial.arm(f"conversation {i}: how do I …?", far) for i in range(4000)]
    assert again == arms
    # another trial splits independently (not the same 20 % every time)
    eight = _trial(0.2, trial_id=8)
    other = [eight.arm(f"conversation {i}: how do I …?", far) for i in range(4000)]
    both = sum(a == b == "candidate" for a, b in zip(arms, other, strict=True))
    assert both < 0.3 * arms.count("candidate")
    assert _trial(0.0).arm("x", far) == "control" and _trial(1.0).arm("x", far) == "candidate"


def test_a_conversation_is_named_by_its_first_user_message() -> None:
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"}]
    later = [*first, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    assert conversation_key(first) == conversation_key(later) == "Q1"
    assert 0.0 <= bucket(1, "Q1") < 1.0 and bucket(1, "Q1") == bucket(1, "Q1")


def test_questions_about_what_only_the_candidate_was_taught_always_get_it() -> None:
    taught_q = _unit(1, 0.1)
    trial = _trial(0.0, taught=taught_q[None])  # share 0: every other question → control
    assert trial.arm("anything", _unit(1, 0.12)) == "taught"
    assert trial.arm("anything", _unit(0, 1)) == "control"


def test_new_keys_are_the_new_interactions_and_their_paraphrases() -> None:
    old_q, new_q, para_new = _unit(1), _unit(0, 1), _unit(0.1, 1)
    topic = _unit(0, 0, 1)
    control = Keys(["question", "paraphrase", "topic"], ["old?", "old, said otherwise?", "t"],
                   np.stack([old_q, _unit(1, 0.1), topic]), [11, None, None])  # fmt: skip
    # the candidate keeps the old keys, adds a new question, and a changed fact: same text
    # as before but taught from a newer interaction, with the paraphrase it had before
    candidate = Keys(
        ["question", "paraphrase", "topic", "question", "paraphrase"],
        ["old?", "old, said otherwise?", "t", "new?", "new, said otherwise?"],
        np.stack([old_q, _unit(1, 0.1), topic, new_q, para_new]),
        [11, None, None, 12, None],
    )
    fresh = new_keys(candidate, control, radius=0.7)
    assert len(fresh) == 2 and np.allclose(fresh[0], new_q) and np.allclose(fresh[1], para_new)
    changed = Keys(["question", "paraphrase"], ["old?", "old, said otherwise?"],
                   np.stack([old_q, _unit(1, 0.1)]), [13, None])  # fmt: skip
    fresh = new_keys(changed, control, radius=0.7)
    # the newer correction of the same question, and its paraphrase (same text as before)
    assert len(fresh) == 2 and np.allclose(fresh[0], old_q)
    assert len(new_keys(control, control, radius=0.7)) == 0


def _config(**kw: object) -> CanaryConfig:
    return CanaryConfig(min_rated=10, max_drop=0.1, alpha=0.05, **kw)  # type: ignore[arg-type]


def test_a_candidate_rated_as_well_as_the_control_is_promoted() -> None:
    rng = np.random.default_rng(0)
    cand = list(np.clip(rng.normal(0.6, 0.3, 30), -1, 1))
    ctrl = list(np.clip(rng.normal(0.6, 0.3, 60), -1, 1))
    verdict = decide({"candidate": cand, "control": ctrl}, _config(), NOW, NOW + timedelta(1))
    assert verdict.outcome == "promoted" and verdict.decided_by == "test"
    assert verdict.stats["welch"]["p"] > 0.05 and verdict.stats["candidate"]["n"] == 30


def test_a_candidate_whose_answers_are_rejected_is_rolled_back() -> None:
    rng = np.random.default_rng(1)
    cand = list(np.clip(rng.normal(-0.4, 0.3, 12), -1, 1))
    ctrl = list(np.clip(rng.normal(0.5, 0.3, 40), -1, 1))
    verdict = decide({"candidate": cand, "control": ctrl}, _config(), NOW, NOW + timedelta(1))
    assert verdict.outcome == "rolled_back" and verdict.decided_by == "test"
    assert "satisfaction dropped by more than 0.1" in verdict.reason
    assert verdict.stats["welch"]["p"] < 0.001


def test_a_drop_within_max_drop_or_not_significant_is_not_a_rollback() -> None:
    # 0.05 worse on average: inside max_drop 0.1
    small = welch([0.55] * 5 + [0.45] * 5, [0.6] * 5 + [0.5] * 5, max_drop=0.1)
    assert small["p"] > 0.5
    # 0.3 worse but on noisy, few ratings: not significant at 0.05
    noisy = decide({"candidate": [1, -1, 1, -1, 0.8, -0.6, 1, -1, 0.9, -0.9],
                    "control": [1, -1, 1, 1, 0.8, -0.6, 1, -1, 0.9, 0.9]},
                   _config(), NOW, NOW + timedelta(1))  # fmt: skip
    assert noisy.outcome == "promoted", noisy.stats
    # identical ratings in each arm: the difference is exact
    assert welch([-1.0] * 4, [1.0] * 4, 0.1)["p"] == 0.0
    assert welch([0.95] * 4, [1.0] * 4, 0.1)["p"] == 1.0


def test_too_few_ratings_wait_until_the_deadline_then_take_the_default() -> None:
    rewards = {"candidate": [1.0] * 3, "control": [-1.0] * 50}
    waiting = decide(rewards, _config(), NOW, NOW + timedelta(hours=1))
    assert waiting.outcome == "running" and waiting.stats["candidate"]["n"] == 3
    late = decide(rewards, _config(), NOW, NOW - timedelta(seconds=1))
    assert late.outcome == "promoted" and late.decided_by == "deadline"
    assert "3 and 50 rated answers, 10 needed per arm" in late.reason
    strict = decide(rewards, _config(undecided="rollback"), NOW, NOW - timedelta(seconds=1))
    assert strict.outcome == "rolled_back" and strict.decided_by == "deadline"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("share", 1.5, "less than or equal to 1"), ("min_rated", 1, "greater than or equal to 2"),
     ("undecided", "maybe", "'promote' or 'rollback'"), ("alpha", 0, "greater than 0")],
)  # fmt: skip
def test_bad_canary_settings_are_refused(key: str, value: object, message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        CanaryConfig(**{key: value})  # type: ignore[arg-type]
