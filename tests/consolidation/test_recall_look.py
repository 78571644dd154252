"""The trainer's recall look fails fast (consolidation/trainer.py `_Criterion.recalled`):
the answers that missed last go first, and the look ends at the first batch with a miss —
with the same verdict as a look at every taught answer. Margins come from a table (what
the look decides does not depend on the model; `margins` itself is tested with the real
base in test_trainer.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from consolidation import trainer


class _Table:
    """`margins` from a table: example i's margin is `values[i]`; counts what is looked at."""

    def __init__(self, values: list[float]) -> None:
        self.values, self.looked = values, 0

    def __call__(
        self, model: Any, encoded: list[Any], pad_id: int, batch: int, sampler: Any
    ) -> list[float]:
        assert len(encoded) <= batch
        self.looked += len(encoded)
        return [self.values[ids[0]] for ids, _ in encoded]


def _criterion(n: int, wait: list[bool]) -> trainer._Criterion:
    encoded = [([i], [i]) for i in range(n)]
    config = SimpleNamespace(batch_size=2)  # looks go 4 answers at a time
    result = trainer.TrainResult(steps=10, examples=n)
    return trainer._Criterion(encoded, [], list(range(n)), 0, config, None, result, None, None,  # type: ignore[arg-type]
                              None, [0.0] * n, wait, lambda: None)  # type: ignore[arg-type]  # fmt: skip


def test_a_look_ends_at_the_first_batch_with_a_miss_and_starts_with_the_last_misses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = [1.0] * 12
    values[9] = -1.0  # one required answer still misses
    table = _Table(values)
    monkeypatch.setattr(trainer, "margins", table)
    c = _criterion(12, [True] * 12)
    assert c.recalled(model=None) is False
    assert table.looked == 12  # the first look goes through until the batch with the miss
    assert c.result.recalled is None  # no count from a look that stopped early
    table.looked = 0
    assert c.recalled(model=None) is False
    assert table.looked == 4  # the miss went first: one batch
    values[9] = 1.0
    table.looked = 0
    assert c.recalled(model=None) is True
    assert table.looked == 12 and c.result.recalled == 12


def test_a_look_decides_as_a_full_look_and_counts_the_others_only_when_it_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wait = [True, False] * 5
    values = [1.0, -1.0] * 5  # every required answer wins; the others all miss
    table = _Table(values)
    monkeypatch.setattr(trainer, "margins", table)
    c = _criterion(10, wait)
    assert c.recalled(model=None) is True  # the others do not hold the run
    assert c.result.recalled == 5 and table.looked == 10
    values[4] = -1.0  # a required answer misses
    table.looked = 0
    assert c.recalled(model=None) is False
    assert table.looked == 4  # the required ones only, and not all of them
    table.looked = 0
    assert c.recalled(model=None, full=True) is False  # the budget's last step: everything
    assert table.looked == 10 and c.result.recalled == 4
