"""The sleep worker: one consolidation cycle, in its own low-priority process.

The daemon starts it (``python -m services.worker --seed N --trigger T``, see
services/sleep.py, ``Sleeper``) and steers it with files in ``<data_dir>/run/``
(services/sleep_protocol.py, the protocol both sides import). ``npllm sleep --now --here``,
and ``npllm sleep --now`` with no daemon, run the same cycle in the CLI's own process
(:func:`run_cycle_here`); :func:`print_summary` says what it did.

The cycle hands what it trained to a publisher (consolidation/publisher.py):
``DaemonPublisher`` asks the running daemon to hot-swap it in, over the socket;
``OfflinePublisher`` registers it in the database, served from the daemon's next
start. The daemon's worker never publishes offline: when its daemon is gone, the cycle
stops (CycleStopped) and nothing is published.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

from consolidation.publisher import DaemonPublisher, OfflinePublisher
from consolidation.reports import NightReport
from npllm.config import Settings
from npllm.errors import ConfigError, NpllmError
from services.sleep_protocol import Trigger, run_dir, worker_control


def _say(line: str) -> None:
    """Progress lines go to stderr (the worker's log, or the CLI's terminal)."""
    print(line, file=sys.stderr, flush=True)


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
        control = None if parent is None else worker_control(run_dir(settings.data_path), parent)
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
    print_summary(metrics)


def print_summary(metrics: dict[str, Any], status: str = "succeeded") -> None:
    """What a cycle did, one line per adapter (and the cerebellum, the modulator), then its
    outcome, on stdout; `metrics` as the cycle returns them (and npllm.sleep_cycles.metrics
    holds), read through the typed report (consolidation/reports.py). The worker prints it
    into its log; `npllm sleep` on the terminal."""
    for line in NightReport.from_metrics(metrics).lines(status):
        print(line, flush=True)


if __name__ == "__main__":
    main()
