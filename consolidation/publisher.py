"""Publishing a trained version: what is handed over (:class:`Trained`) and the publishers.

Training and gating are someone else's; publishing is this module's, for every caller: a
sleep cycle (in the daemon's sleep worker, or in the CLI's own process) and `npllm adapter
train`. :class:`DaemonPublisher` asks the running daemon to hot-swap the version in, over
its socket (the daemon's routes load it, smoke-test it, check the cycle is still alive and
switch); :class:`OfflinePublisher` makes it the active version in the database, served
from the daemon's next start. Both implement :class:`Publisher`; the cycle never knows
which one it has.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from npllm.errors import AdapterError, CycleStopped, DaemonNotRunning

Kind = Literal["adapter", "cerebellum", "modulator"]
ASLEEP = "learned while asleep"  # the description of every version a sleep cycle publishes


def _say(line: str) -> None:
    """A sleep cycle's publish line: to stderr (the worker's log, or the CLI's terminal),
    indented under the cycle's phase lines."""
    print("  " + line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Trained:
    """A version that was trained (and, in a sleep cycle, passed its gate), to publish.

    adapter, cerebellum: `path` is the trained peft directory (the store copies it);
    modulator: the version is already stored (`version`), only its switch is asked for.
    `sleep_cycle`: the cycle that trained it (None: `npllm adapter train`)."""

    kind: Kind
    name: str
    sleep_cycle: int | None = None
    path: Path | None = None
    version: int | None = None
    centroid: np.ndarray | None = None  # adapters: where the modulator routes from now on
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    description: str = ASLEEP
    canary: bool | None = None  # adapters: on trial first (None: the daemon's default)


class Publisher(Protocol):
    def publish(self, trained: Trained) -> int:
        """Make `trained` the version in use; returns its version number. Raises an
        NpllmError when it is refused (its gate passed but the daemon's checks did not:
        the cap, the smoke test, conversion parity) and CycleStopped when the daemon that
        started the cycle is gone (nothing is published then)."""
        ...

    def retire(self, name: str, reason: str, sleep_cycle: int, details: dict[str, Any]) -> None:
        """Stop serving adapter `name` (idle for sleep.retire_idle_days: see
        consolidation/forgetting.py; or merged into another: consolidation/merging.py): its
        active version retires, every version is kept, a `retired` row says `reason`.
        Raises an NpllmError when it is refused (it is not served, a canary trial runs) and
        CycleStopped when the daemon is gone."""
        ...


def swapped(answer: dict[str, Any]) -> str:
    """The line for the daemon's answer to a publish or a rollback (a hot swap), or to a
    canary trial's decision."""
    if "decided_by" in answer:  # a trial decided (a rollback during one aborts it)
        what = "promoted" if answer["status"] == "promoted" else "rolled back"
        return (
            f"{answer['name']}: canary trial {answer['id']} {what}; v{answer['version']} "
            f"serves every conversation ({answer['reason']})"
        )
    replaced = f", replacing v{answer['replaced']}" if answer["replaced"] else ""
    trial = answer.get("canary")
    on_trial = (
        f"; on trial for {trial['share']:.0%} of the conversations about what v"
        f"{trial['control']} knew (it serves the rest) until the trial decides — `npllm "
        f"adapter canary {answer['name']}`"
        if trial
        else ""
    )
    return (
        f"{answer['name']} v{answer['version']} is now served{replaced} "
        f"(swap {answer['swap_ms']:.0f} ms){on_trial}"
    )


def register(
    registry: Any,
    name: str,
    path: Path,
    *,
    description: str,
    centroid: Any,
    dataset: str | None,
    metrics: dict[str, Any],
    sleep_cycle: int | None = None,
) -> int:
    """No daemon: store `path` as the next version of `name` and make it the active one in
    the database; the daemon serves it when it starts. Its version."""
    version = registry.add_version(
        name, path, description=description, centroid=centroid, dataset=dataset, metrics=metrics
    )
    registry.activate(version, sleep_cycle=sleep_cycle)
    return int(version.version)


def _request(trained: Trained) -> tuple[str, dict[str, Any]]:
    """The daemon's route for a version of this kind, and the body it takes."""
    cycle = {} if trained.sleep_cycle is None else {"sleep_cycle": trained.sleep_cycle}
    if trained.kind == "modulator":
        return "/v1/modulator/versions", {"version": trained.version, **cycle}
    body: dict[str, Any] = {"description": trained.description, **cycle}
    if trained.dataset:
        body["dataset"] = trained.dataset
    if trained.canary is not None:
        body["canary"] = trained.canary
    if trained.kind == "cerebellum":
        route = "/v1/cerebellum/versions"
    else:
        route = f"/v1/adapters/{trained.name}/versions"
        if trained.centroid is not None:
            body["centroid"] = [float(x) for x in trained.centroid]
    return route, {**body, "path": str(_directory(trained)), "metrics": trained.metrics}


def _label(trained: Trained) -> str:
    return f"modulator v{trained.version}" if trained.kind == "modulator" else trained.name


def _modulator_version(trained: Trained) -> int:
    if trained.version is None:  # a bug in the cycle: it stores the modulator first
        raise AdapterError("a trained modulator came without its stored version")
    return trained.version


def _directory(trained: Trained) -> Path:
    if trained.path is None:  # a bug in the cycle: adapters come as a peft directory
        raise AdapterError(f"{trained.name}: a trained version came without its directory")
    return trained.path


class DaemonPublisher:
    """Publishes through the running daemon's routes: its hot swap loads the version,
    smoke-tests it, checks the cycle is still alive and switches.

    `client`: the daemon's socket client (services/client.py). `control` (the sleep
    worker's) runs before every publish: a worker whose daemon stopped it stops there.
    When nothing answers on the socket, the version goes to `offline` (the CLI's own cycle,
    `adapter train`) or, with none (the daemon's worker, whose daemon is gone), nothing is
    published and CycleStopped is raised. `echo` gets one line per publish."""

    def __init__(
        self,
        client: Any,
        *,
        control: Callable[[], None] | None = None,
        offline: Publisher | None = None,
        echo: Callable[[str], None] = _say,
    ) -> None:
        self.client = client
        self.control = control
        self.offline = offline
        self.echo = echo

    def publish(self, trained: Trained) -> int:
        if self.control is not None:
            self.control()
        route, body = _request(trained)
        try:
            answer = self.client.request("POST", route, json=body)
        except DaemonNotRunning as exc:
            if self.offline is None:
                raise CycleStopped(
                    f"the daemon is not running; {_label(trained)} was not published"
                ) from exc
            return self.offline.publish(trained)
        if trained.kind == "modulator":
            self.echo(f"modulator v{answer['version']} now routes questions")
            return _modulator_version(trained)
        self.echo(swapped(answer))
        return int(answer["version"])

    def retire(self, name: str, reason: str, sleep_cycle: int, details: dict[str, Any]) -> None:
        if self.control is not None:
            self.control()
        body = {"reason": reason, "sleep_cycle": sleep_cycle, "details": details}
        try:
            answer = self.client.request("POST", f"/v1/adapters/{name}/retire", json=body)
        except DaemonNotRunning as exc:
            if self.offline is None:
                raise CycleStopped(f"the daemon is not running; {name} was not retired") from exc
            self.offline.retire(name, reason, sleep_cycle, details)
            return
        self.echo(f"{name} retired from serving (v{answer['version']} kept): {reason}")


class OfflinePublisher:
    """No daemon: makes the version the active one in the database, in the version store
    of its kind (`registries`: "adapter", "cerebellum", "modulator"); the daemon serves it
    when it starts."""

    def __init__(self, registries: Mapping[str, Any], echo: Callable[[str], None] = _say) -> None:
        self.registries = registries
        self.echo = echo

    def publish(self, trained: Trained) -> int:
        if trained.kind == "modulator":  # stored already: only the switch is left
            from npllm.adapters import MODULATOR

            stored = _modulator_version(trained)
            store = self.registries["modulator"]
            store.activate(store.version(MODULATOR, stored))
            self.echo(f"modulator v{stored} registered; the daemon routes with it when it starts")
            return stored
        version = register(
            self.registries[trained.kind],
            trained.name,
            _directory(trained),
            description=trained.description,
            centroid=trained.centroid if trained.kind == "adapter" else None,
            dataset=trained.dataset,
            metrics=trained.metrics,
            sleep_cycle=trained.sleep_cycle,
        )
        self.echo(f"{trained.name} v{version} registered; the daemon serves it when it starts")
        return version

    def retire(self, name: str, reason: str, sleep_cycle: int, details: dict[str, Any]) -> None:
        retired = self.registries["adapter"].retire(
            name, reason, sleep_cycle=sleep_cycle, details=details
        )
        self.echo(f"{name} retired (v{retired.version} kept): {reason}")
