"""The sleep worker: one consolidation cycle, in its own low-priority process.

The daemon starts it (``python -m services.worker --seed N --trigger T``, see
services/sleep.py, ``Sleeper``) and steers it with files in ``<data_dir>/run/``
(:func:`worker_control`). ``npllm sleep --now --here``, and ``npllm sleep --now`` with no
daemon, run the same cycle in the CLI's own process (:func:`run_cycle_here`).

The cycle hands what it trained to a publisher (consolidation/publisher.py):
:class:`DaemonPublisher` asks the running daemon to hot-swap it in, over the socket;
:class:`OfflinePublisher` registers it in the database, served from the daemon's next
start. The daemon's worker never publishes offline: when its daemon is gone, the cycle
stops (CycleStopped) and nothing is published.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from consolidation.publisher import Publisher, Trained
from npllm.config import Settings
from npllm.errors import AdapterError, ConfigError, CycleStopped, DaemonNotRunning, NpllmError

PAUSED = "sleep.paused"  # written by a paused worker: its cores are free
DESCRIPTION = "learned while asleep"  # of every version a sleep cycle publishes


def _say(line: str) -> None:
    """Progress and publish lines go to stderr (the worker's log, or the CLI's terminal)."""
    print(line, file=sys.stderr, flush=True)


def worker_control(run_dir: Path, parent: int | None = None) -> Callable[[], None]:
    """For the worker: call it often (every micro-batch, every block of the model; three
    system calls, a few microseconds); waits while paused, raises on stop,
    and raises when `parent` (the daemon that started it) is gone: a daemon killed
    mid-cycle leaves the cycle interrupted, never half-published."""
    pause, stop, paused = run_dir / "sleep.pause", run_dir / "sleep.stop", run_dir / PAUSED

    def control() -> None:
        acked = False
        try:
            while True:
                if parent is not None and os.getppid() != parent:
                    raise CycleStopped(f"the daemon that started this cycle (pid {parent}) is gone")
                if stop.exists():
                    raise CycleStopped("the daemon asked the cycle to stop")
                if not pause.exists():
                    return
                if not acked:  # tell the daemon this process no longer computes
                    paused.touch()
                    acked = True
                time.sleep(0.01 if acked else 0.05)
        finally:
            if acked:
                paused.unlink(missing_ok=True)

    return control


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
    if trained.kind == "modulator":
        return "/v1/modulator/versions", {
            "version": trained.version,
            "sleep_cycle": trained.sleep_cycle,
        }
    body: dict[str, Any] = {
        "description": DESCRIPTION,
        "sleep_cycle": trained.sleep_cycle,
    }
    if trained.dataset:
        body["dataset"] = trained.dataset
    if trained.kind == "cerebellum":
        route = "/v1/cerebellum/versions"
    else:
        route = f"/v1/adapters/{trained.name}/versions"
        if trained.centroid is not None:
            body["centroid"] = [float(x) for x in trained.centroid]
        if trained.canary is not None:
            body["canary"] = trained.canary
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

    `control` (the worker's) runs before every publish: a worker whose daemon stopped it
    stops there. When nothing answers on the socket, the version goes to `offline` (the
    CLI's own cycle) or, with none (the daemon's worker, whose daemon is gone), nothing is
    published and CycleStopped is raised."""

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
            self.echo(f"  modulator v{answer['version']} now routes questions")
            return _modulator_version(trained)
        self.echo("  " + swapped(answer))
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
        self.echo(f"  {name} retired from serving (v{answer['version']} kept): {reason}")


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
            self.echo(f"  modulator v{stored} registered; the daemon routes with it when it starts")
            return stored
        version = register(
            self.registries[trained.kind],
            trained.name,
            _directory(trained),
            description=DESCRIPTION,
            centroid=trained.centroid if trained.kind == "adapter" else None,
            dataset=trained.dataset,
            metrics=trained.metrics,
            sleep_cycle=trained.sleep_cycle,
        )
        self.echo(f"  {trained.name} v{version} registered; the daemon serves it when it starts")
        return version

    def retire(self, name: str, reason: str, sleep_cycle: int, details: dict[str, Any]) -> None:
        retired = self.registries["adapter"].retire(
            name, reason, sleep_cycle=sleep_cycle, details=details
        )
        self.echo(f"  {name} retired (v{retired.version} kept): {reason}")


def run_cycle_here(
    settings: Settings, seed: int | None, trigger: str = "manual", *, parent: int | None = None
) -> dict[str, Any]:
    """Run one sleep cycle in this process (at nice 10); its metrics.

    `parent`: the daemon that started this worker: the cycle follows its pause/stop files
    and stops when it is gone, and publishes only through it. None: the CLI's own process
    (`--here`, or no daemon): it publishes through a daemon if one answers, else to the
    database."""
    from consolidation.bookkeeping import refuse_if_running, refuse_untrainable
    from consolidation.cycle import CycleContext, run_cycle
    from npllm import modulator
    from npllm.db import Database
    from npllm.embeddings import load_embedder
    from npllm.llm import load_base_llm
    from npllm.versions import BaseIdentity, Registry
    from services.client import Client

    db = Database(settings)
    db.open(migrate=True)
    served = None
    try:
        refuse_if_running(db.pool)  # before loading the models: say it at once
        refuse_untrainable(db.pool, settings, trigger, seed)
        os.nice(10)
        llm = load_base_llm(settings)
        embedder = load_embedder(settings)
        registry = Registry.for_settings(
            db.pool, settings, BaseIdentity(llm.model_id, llm.fingerprint)
        )
        # The daemon starts the worker: it stops with it (see worker_control).
        control = None if parent is None else worker_control(settings.data_path / "run", parent)
        cerebellum = None
        registries: dict[str, Any] = {
            "adapter": registry,
            "modulator": modulator.store_for(settings, db.pool),
        }
        if settings.cerebellum.role == "draft":
            from npllm import cerebellum as cb

            own = cb.load_model(settings, llm)
            cerebellum = (own, cb.registry_for(settings, db.pool, own))
            registries["cerebellum"] = cerebellum[1]
        publisher = DaemonPublisher(
            Client(settings.socket_path),
            control=control,
            offline=None if parent is not None else OfflinePublisher(registries),
        )
        if settings.training.served_check:  # the night checks what the engine will serve
            from consolidation.served import Served
            from npllm.engines import load_engine

            served = Served(settings, load_engine(settings), control=control)
        started = time.perf_counter()
        return run_cycle(
            CycleContext(
                settings=settings,
                pool=db.pool,
                llm=llm,
                embedder=embedder,
                registry=registry,
                publisher=publisher,
                seed=seed if seed is not None else int(time.time()),
                trigger=trigger,
                on_phase=lambda p: _say(f"[{time.perf_counter() - started:6.1f} s] {p}"),
                control=control,
                cerebellum=cerebellum,
                served=served,
            )
        )
    finally:
        if served is not None:
            served.close()
        db.close()


def main(argv: list[str] | None = None) -> None:
    """The daemon's sleep worker: one cycle, then exit (0: it ran; 1: it failed with the
    reason on stderr; 2: bad config; 130: the daemon stopped it, or is gone)."""
    from typing import get_args

    from npllm.config import load_settings
    from services.sleep import Trigger

    parser = argparse.ArgumentParser(
        prog="python -m services.worker",
        description="Run one sleep cycle for the daemon that started this process.",
    )
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: time)")
    parser.add_argument("--trigger", choices=get_args(Trigger), default="manual")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parent = os.getppid()  # the daemon; once it is gone, this becomes another pid
    try:
        metrics = run_cycle_here(load_settings(), args.seed, args.trigger, parent=parent)
    except ConfigError as exc:
        _say(f"npllm: {exc}")
        sys.exit(2)
    except NpllmError as exc:
        _say(f"npllm: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:  # CycleStopped: the cycle is recorded as interrupted
        sys.exit(130)
    from services.cli.sleep import print_summary

    print_summary(metrics)


if __name__ == "__main__":
    main()
