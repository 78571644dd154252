"""The watcher: the daemon's periodic jobs (canary decisions, alert checks), each on its
own interval, on one background thread.

Chosen over APScheduler (which the design card names) because two fixed-interval jobs need
no scheduler: a thread that wakes every second and runs what is due keeps the jobs off the
event loop (they query the database and may hot-swap an adapter) and adds no dependency.
A job that raises is logged and runs again at its next turn; `run_now` lets an API route
(or a test) run a job at once, serialised with the thread's own runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("npllm.watch")


@dataclass
class Job:
    name: str
    every_s: float
    run: Callable[[], Any]
    due: float = field(default=0.0)  # time.monotonic() of its next run


class Watcher:
    """Runs each job every `every_s` seconds (the first time `first_after_s` after start)."""

    def __init__(self, jobs: list[Job], tick_s: float = 1.0) -> None:
        self.jobs = {job.name: job for job in jobs}
        self.tick_s = tick_s
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one job at a time, thread or run_now
        self._thread: threading.Thread | None = None

    def start(self, first_after_s: float = 10.0) -> None:
        now = time.monotonic()
        for job in self.jobs.values():
            job.due = now + min(first_after_s, job.every_s)
        self._thread = threading.Thread(target=self._loop, name="npllm-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_now(self, name: str) -> Any:
        """Run job `name` now (KeyError if there is none) and return what it returned."""
        job = self.jobs[name]
        with self._lock:
            result = job.run()
            job.due = time.monotonic() + job.every_s
        return result

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            for job in self.jobs.values():
                if self._stop.is_set() or time.monotonic() < job.due:
                    continue
                with self._lock:
                    try:
                        job.run()
                    except Exception:
                        log.exception("periodic job %s failed", job.name)
                    job.due = time.monotonic() + job.every_s
