"""consolidation/publisher.py: the publishers with a fake daemon client and a fake version
store. (Whole cycles through both publishers run in tests/e2e/test_sleep_cycle.py, against
the real daemon and the real models.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from consolidation.publisher import DaemonPublisher, OfflinePublisher, Trained
from npllm.errors import CycleStopped, DaemonNotRunning

SWAP = {"name": "cooking", "version": 3, "replaced": 2, "swap_ms": 12.4}


class FakeClient:
    """Records what would be posted to the daemon; answers `answer`, or raises it."""

    def __init__(self, answer: dict[str, Any] | Exception) -> None:
        self.answer = answer
        self.posted: list[tuple[str, str, dict[str, Any]]] = []

    def request(self, method: str, path: str, *, json: dict[str, Any]) -> Any:
        self.posted.append((method, path, json))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


ADAPTER = Trained(
    kind="adapter",
    name="cooking",
    sleep_cycle=7,
    path=Path("/data/staging/cooking"),
    centroid=np.array([0.25, -1.0], dtype=np.float32),
    metrics={"samples": 3, "verdict": "passes"},
    dataset="recipes",
)
CEREBELLUM = Trained(
    kind="cerebellum", name="cerebellum", sleep_cycle=7, path=Path("/data/staging/cb")
)
MODULATOR = Trained(kind="modulator", name="modulator", sleep_cycle=7, version=4)


def test_an_adapter_is_posted_to_its_versions_with_the_body_the_daemon_takes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = FakeClient(SWAP)
    assert DaemonPublisher(client).publish(ADAPTER) == 3
    assert client.posted == [
        (
            "POST",
            "/v1/adapters/cooking/versions",
            {
                "description": "learned while asleep",
                "sleep_cycle": 7,
                "dataset": "recipes",
                "centroid": [0.25, -1.0],
                "path": "/data/staging/cooking",
                "metrics": {"samples": 3, "verdict": "passes"},
            },
        )
    ]
    assert capsys.readouterr().err == "  cooking v3 is now served, replacing v2 (swap 12 ms)\n"


def test_the_cerebellum_and_the_modulator_have_their_own_routes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = FakeClient({**SWAP, "name": "cerebellum", "replaced": None})
    assert DaemonPublisher(client).publish(CEREBELLUM) == 3
    client.answer = {"version": 4}
    assert DaemonPublisher(client).publish(MODULATOR) == 4
    assert client.posted == [
        (
            "POST",
            "/v1/cerebellum/versions",
            {
                "description": "learned while asleep",
                "sleep_cycle": 7,
                "path": "/data/staging/cb",
                "metrics": {},
            },
        ),
        ("POST", "/v1/modulator/versions", {"version": 4, "sleep_cycle": 7}),
    ]
    assert capsys.readouterr().err == (
        "  cerebellum v3 is now served (swap 12 ms)\n  modulator v4 now routes questions\n"
    )


def test_a_worker_whose_daemon_is_gone_publishes_nothing() -> None:
    gone = FakeClient(DaemonNotRunning("npllm is not running"))
    with pytest.raises(CycleStopped, match="^the daemon is not running; cooking was not published"):
        DaemonPublisher(gone).publish(ADAPTER)
    with pytest.raises(CycleStopped, match="^the daemon is not running; modulator v4 was not"):
        DaemonPublisher(gone).publish(MODULATOR)


def test_the_control_runs_before_anything_is_posted() -> None:
    client = FakeClient(SWAP)

    def stopped() -> None:
        raise CycleStopped("the daemon asked the cycle to stop")

    with pytest.raises(CycleStopped, match="asked the cycle to stop"):
        DaemonPublisher(client, control=stopped).publish(ADAPTER)
    assert client.posted == []


class FakeRegistry:
    def __init__(self) -> None:
        self.added: list[tuple[str, Path, dict[str, Any]]] = []
        self.active: list[Any] = []
        self.retired: list[Any] = []

    def add_version(self, name: str, source: Path, **kwargs: Any) -> Any:
        self.added.append((name, source, kwargs))
        return SimpleNamespace(adapter=name, version=5)

    def activate(self, version: Any, sleep_cycle: int | None = None) -> None:
        self.active.append((version, sleep_cycle))

    def retire(self, name: str, reason: str, **kwargs: Any) -> Any:
        self.retired.append((name, reason, kwargs))
        return SimpleNamespace(adapter=name, version=2)


def test_with_no_daemon_the_clis_cycle_registers_the_version_in_the_database(
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = FakeRegistry()
    offline = OfflinePublisher({"adapter": registry})
    gone = FakeClient(DaemonNotRunning("npllm is not running"))
    assert DaemonPublisher(gone, offline=offline).publish(ADAPTER) == 5
    ((name, source, kwargs),) = registry.added
    assert (name, source) == ("cooking", Path("/data/staging/cooking"))
    assert kwargs["description"] == "learned while asleep" and kwargs["dataset"] == "recipes"
    assert kwargs["centroid"] is ADAPTER.centroid and kwargs["metrics"] == ADAPTER.metrics
    assert [(v.version, cycle) for v, cycle in registry.active] == [(5, 7)]
    assert capsys.readouterr().err == (
        "  cooking v5 registered; the daemon serves it when it starts\n"
    )


def test_adapter_train_publishes_through_the_same_publishers_with_its_own_description() -> None:
    """`npllm adapter train`'s version: no sleep cycle, the user's description, its lines
    unindented (they are not under a cycle's phase lines)."""
    trained = Trained(
        kind="adapter",
        name="cooking",
        path=Path("/data/staging/cooking-run4"),
        metrics={"steps": 8},
        dataset="recipes",
        description="my recipes",
    )
    client, lines = FakeClient(SWAP), []
    assert DaemonPublisher(client, echo=lines.append).publish(trained) == 3
    assert client.posted == [
        (
            "POST",
            "/v1/adapters/cooking/versions",
            {
                "description": "my recipes",
                "dataset": "recipes",
                "path": "/data/staging/cooking-run4",
                "metrics": {"steps": 8},
            },
        )
    ]
    registry = FakeRegistry()
    offline = OfflinePublisher({"adapter": registry}, echo=lines.append)
    gone = FakeClient(DaemonNotRunning("npllm is not running"))
    assert DaemonPublisher(gone, offline=offline, echo=lines.append).publish(trained) == 5
    assert registry.added[0][2]["description"] == "my recipes"
    assert lines == [
        "cooking v3 is now served, replacing v2 (swap 12 ms)",
        "cooking v5 registered; the daemon serves it when it starts",
    ]


def test_an_idle_adapter_is_retired_through_the_daemon_or_in_the_database(
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = FakeClient({"name": "cooking", "retired": True, "version": 3})
    DaemonPublisher(client).retire("cooking", "unused for 30 days", 7, {"idle_days": 30})
    assert client.posted == [("POST", "/v1/adapters/cooking/retire",
                              {"reason": "unused for 30 days", "sleep_cycle": 7,
                               "details": {"idle_days": 30}})]  # fmt: skip
    # No daemon: the CLI's own cycle retires it in the database; the daemon's worker stops.
    registry = FakeRegistry()
    gone = FakeClient(DaemonNotRunning("npllm is not running"))
    offline = OfflinePublisher({"adapter": registry})
    DaemonPublisher(gone, offline=offline).retire("cooking", "unused", 7, {})
    assert registry.retired == [("cooking", "unused", {"sleep_cycle": 7, "details": {}})]
    with pytest.raises(CycleStopped, match="cooking was not retired"):
        DaemonPublisher(gone).retire("cooking", "unused", 7, {})
    err = capsys.readouterr().err
    assert "cooking retired from serving (v3 kept): unused for 30 days" in err
    assert "cooking retired (v2 kept): unused" in err


def test_a_merged_version_skips_the_canary_trial() -> None:
    """A merged version holds the absorbed adapter's facts, which the previous version
    cannot answer: it publishes without a trial."""
    client = FakeClient(SWAP)
    DaemonPublisher(client).publish(replace(ADAPTER, canary=False))
    assert client.posted[0][2]["canary"] is False
