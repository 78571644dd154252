"""What a sleep cycle hands its trained versions to: the publisher.

The cycle trains and gates; publishing (and retiring an idle adapter) is someone else's:
the daemon's hot swap when the cycle runs in the daemon's sleep worker (services/worker.py,
over the socket), or the database directly when it runs with no daemon (`npllm sleep --now
--here`). Both
implement this protocol; the cycle never knows which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

Kind = Literal["adapter", "cerebellum", "modulator"]


@dataclass(frozen=True)
class Trained:
    """A version a sleep cycle trained and its gate passed.

    adapter, cerebellum: `path` is the trained peft directory (the store copies it);
    modulator: the version is already stored (`version`), only its switch is asked for."""

    kind: Kind
    name: str
    sleep_cycle: int
    path: Path | None = None
    version: int | None = None
    centroid: np.ndarray | None = None  # adapters: where the modulator routes from now on
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    canary: bool | None = None  # adapters: on trial first (None: the daemon's default)


class Publisher(Protocol):
    def publish(self, trained: Trained) -> int:
        """Make `trained` the version in use; returns its version number. Raises an
        NpllmError when it is refused (its gate passed but the daemon's checks did not:
        the cap, the smoke test, conversion parity) and CycleStopped when the daemon that
        started the cycle is gone (nothing is published then)."""
        ...

    def retire(self, name: str, reason: str, sleep_cycle: int, details: dict[str, Any]) -> None:
        """Stop serving adapter `name` (unused for sleep.retire_idle_days: see
        consolidation/forgetting.py): its active version retires, every version is kept, a
        `retired` row says `reason`. Raises an NpllmError when it is refused (it is not
        served, a canary trial runs) and CycleStopped when the daemon is gone."""
        ...
