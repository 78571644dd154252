"""The daemon ↔ sleep worker protocol: how the daemon starts its worker and steers it.

Both sides import this module, and nothing else of each other (services/sleep.py is the
daemon's side, services/worker.py the worker's).

- Start: ``python -m services.worker [--seed N] --trigger T`` (:func:`worker_command`),
  one cycle, then the process exits.
- Steer: files in the run directory ``<data_dir>/run/`` (:func:`run_dir`). The daemon
  creates ``sleep.pause`` (the worker waits while it exists) and ``sleep.stop`` (the worker
  stops; the cycle is interrupted) — :class:`RunFiles`. A paused worker answers with
  ``sleep.paused`` (its cores are free) and removes it when it resumes. The worker looks
  at them between micro-batches and inside the model's compute
  (:func:`worker_control`, called by consolidation.trainer.yielding), so it reacts within
  about 0.1 s, and it stops when the daemon that started it is gone.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from npllm.errors import CycleStopped

# Why a cycle started, as recorded in npllm.sleep_cycles.trigger: `npllm sleep --now`, the
# configured sleep window with an idle machine, or an idle machine with the window "any".
Trigger = Literal["manual", "scheduled", "idle"]

PAUSE = "sleep.pause"  # written by the daemon: the worker waits while it exists
STOP = "sleep.stop"  # written by the daemon: the worker stops, the cycle is interrupted
PAUSED = "sleep.paused"  # written by a paused worker: its cores are free


def run_dir(data_path: Path) -> Path:
    """The directory of the daemon's run files (socket, the sleep files) under a data dir."""
    return data_path / "run"


def worker_command(seed: int | None, trigger: Trigger) -> list[str]:
    """The command line that starts the sleep worker for one cycle."""
    seeded = [] if seed is None else ["--seed", str(seed)]
    return [sys.executable, "-m", "services.worker", *seeded, "--trigger", trigger]


class RunFiles:
    """The daemon's side: the files that steer its worker (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pause = directory / PAUSE
        self.stop = directory / STOP
        self.paused = directory / PAUSED

    def ask_pause(self) -> None:
        self.pause.touch()

    def resume(self) -> None:
        self.pause.unlink(missing_ok=True)

    def ask_stop(self) -> None:
        self.stop.touch()
        self.pause.unlink(missing_ok=True)

    def clear(self) -> None:
        """Before a worker starts and after one exited: nothing asked."""
        self.pause.unlink(missing_ok=True)
        self.stop.unlink(missing_ok=True)

    def pause_asked(self) -> bool:
        return self.pause.exists()

    def worker_paused(self) -> bool:
        """The worker says it has paused (its cores are free)."""
        return self.paused.exists()


def worker_control(run_dir: Path, parent: int | None = None) -> Callable[[], None]:
    """The worker's side: call it often (every micro-batch, every block of the model; three
    system calls, a few microseconds); waits while paused, raises on stop,
    and raises when `parent` (the daemon that started it) is gone: a daemon killed
    mid-cycle leaves the cycle interrupted, never half-published."""
    pause, stop, paused = run_dir / PAUSE, run_dir / STOP, run_dir / PAUSED

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
