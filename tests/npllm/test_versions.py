"""The version store (npllm/versions.py): where versions route, and versions per base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from npllm.adapters import AdapterShape
from npllm.config import ModulatorConfig, Settings
from npllm.errors import AdapterError
from npllm.versions import SCOPE_FILE, BaseIdentity, Keys, Registry

from ..conftest import lora_artifact

E = np.eye(384, dtype=np.float32)
SHAPE = AdapterShape.from_config(Settings().training)
FIRST = BaseIdentity("first base", "a" * 32)
SECOND = BaseIdentity("second base", "b" * 32)
ROUTING = ModulatorConfig()


def _keys(*rows: int) -> Keys:
    return Keys(
        ["question"] * len(rows), [f"q{r}" for r in rows], E[list(rows)], [None] * len(rows)
    )


def test_a_refused_version_moves_nothing_that_routes(fresh_database: Any, tmp_path: Path) -> None:
    """Regression (g): adding a version used to upsert the adapter's centroid and dataset
    before the gate, the parity and cap checks: a rejected candidate moved the live
    adapter's routing. Only activation does now."""
    store = Registry(fresh_database.pool, tmp_path / "adapters", SHAPE, FIRST)
    artifact = lora_artifact(tmp_path / "art")
    store.activate(store.add_version("coding", artifact, centroid=E[0], keys=_keys(1, 2)))
    before = store.scopes(ROUTING)["coding"]
    refused = store.add_version("coding", artifact, centroid=E[3], dataset="other",
                                keys=_keys(4))  # fmt: skip
    store.refuse(refused, "rejected: it changed its neighbours", {})
    after = store.scopes(ROUTING)["coding"]
    assert np.array_equal(after.keys, before.keys) and np.array_equal(E[[1, 2]], after.keys)
    listed = store.listing()[0]
    assert listed["dataset"] is None and listed["status"] == "active"
    assert [v for v, _ in store.active()][0].version == 1
    assert np.allclose(store.active()[0][1], E[0])  # the active version's centroid
    # Activated, it routes by its own keys and the adapter row shows its centroid.
    store.activate(refused)
    assert np.array_equal(store.scopes(ROUTING)["coding"].keys, E[[4]])
    assert store.listing()[0]["dataset"] == "other"


def test_keys_travel_in_the_version_directory_and_a_bad_file_is_refused(
    fresh_database: Any, tmp_path: Path
) -> None:
    store = Registry(fresh_database.pool, tmp_path / "adapters", SHAPE, FIRST)
    artifact = lora_artifact(tmp_path / "art")
    _keys(5, 6).save(artifact)
    version = store.add_version("coding", artifact)
    store.activate(version)
    assert (version.path / SCOPE_FILE).exists()
    assert store.keys(version).texts == ["q5", "q6"]
    scope = store.scopes(ROUTING)["coding"]
    assert np.array_equal(scope.keys, E[[5, 6]])
    assert scope.radii.tolist() == pytest.approx([ROUTING.scope_similarity] * 2)
    (artifact / SCOPE_FILE).write_bytes(b"garbage")
    with pytest.raises(AdapterError, match="is not a readable scope file"):
        store.add_version("coding", artifact)
    assert [v["version"] for v in store.listing()[0]["versions"]] == [1]


def test_each_base_keeps_its_active_version_and_a_swap_back_serves_it_again(
    fresh_database: Any, tmp_path: Path
) -> None:
    """Regression (i): publishing the version rebuilt for a new base retired the one
    trained for the first base, so swapping back found no active version ("has no active
    version" while the list showed it)."""
    pool, root = fresh_database.pool, tmp_path / "adapters"
    artifact = lora_artifact(tmp_path / "art")
    first = Registry(pool, root, SHAPE, FIRST)
    first.activate(first.add_version("coding", artifact, keys=_keys(1)))
    second = Registry(pool, root, SHAPE, SECOND)
    assert second.sync_staleness() == {"coding": "stale"}
    assert [v.version for v in second.stale_versions()] == [1]
    assert second.keys(second.stale_versions()[0]).texts == ["q1"]
    second.activate(second.add_version("coding", artifact, keys=_keys(2)))  # the rebuild
    assert second.current("coding").version == 2  # type: ignore[union-attr]
    assert first.sync_staleness() == {}  # both bases have an active version: not stale
    assert first.current("coding").version == 1  # type: ignore[union-attr]
    assert np.array_equal(first.scopes(ROUTING)["coding"].keys, E[[1]])
    assert np.array_equal(second.scopes(ROUTING)["coding"].keys, E[[2]])
    # A rollback under the first base stays among its own versions.
    first.activate(first.add_version("coding", artifact, keys=_keys(3)))
    assert first.previous("coding").version == 1
