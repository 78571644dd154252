"""Which publishes go on trial (services/canaries.py: CanaryKeeper.control_for)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from npllm.config import Settings
from npllm.versions import Version
from services.canaries import CanaryKeeper


def _keeper(share: float) -> CanaryKeeper:
    settings = Settings(canary={"share": share})  # type: ignore[arg-type]
    served = Version("zorblax", 2, Path("/x/zorblax/v2"), "active")
    awake: Any = SimpleNamespace(adapters=SimpleNamespace(alias={"zorblax": served}), trials={})
    return CanaryKeeper(settings, None, None, awake, None, lambda: None)  # type: ignore[arg-type]


def test_a_sleep_cycles_version_is_tried_and_a_hand_publish_only_when_asked() -> None:
    keeper = _keeper(0.2)
    assert keeper.control_for("zorblax", None, sleep_cycle=7).version == 2  # type: ignore[union-attr]
    assert keeper.control_for("zorblax", None, sleep_cycle=None) is None
    assert keeper.control_for("zorblax", True, sleep_cycle=None).version == 2  # type: ignore[union-attr]
    assert keeper.control_for("zorblax", False, sleep_cycle=7) is None
    # the first version of an adapter has nothing to be tried against
    assert keeper.control_for("sqlbot", None, sleep_cycle=7) is None


def test_share_zero_turns_trials_off() -> None:
    assert _keeper(0.0).control_for("zorblax", True, sleep_cycle=7) is None
