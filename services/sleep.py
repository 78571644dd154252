"""When npllm sleeps: the state machine awake → drowsy → asleep → waking → awake.

Pure logic with an injected clock, so it is tested with a fake one. The daemon calls
:meth:`SleepStateMachine.tick` periodically with an idle reading and acts on the
returned action (start, pause, resume or stop the consolidation worker), and calls
:meth:`on_request` / :meth:`on_request_done` around every request.

- awake → drowsy: the sleep window is open (``sleep.window_start``–``window_end``, local
  time; "any" = always), no request for ``sleep.idle_minutes``, system CPU below
  ``sleep.cpu_threshold_percent`` over the sliding window, on AC power if
  ``sleep.require_ac_power``, at least ``sleep.min_interval_hours`` since the last cycle
  and at least ``sleep.min_new_interactions`` new interactions since then.
- drowsy → asleep after the conditions held for ``DROWSY_S`` more seconds (a request
  or a busy CPU sends it back to awake): action "start".
- asleep → waking when a request arrives: action "pause" (the worker stops computing
  within about 0.1 s; the request is answered by the active versions).
- waking → asleep when no request came for ``RESUME_AFTER_S``: action "resume".
- asleep/waking → awake when the cycle ends (:meth:`on_cycle_done`), or the window
  closes: action "stop".
- ``npllm sleep --now`` (:meth:`force`) skips the window, idle and data checks.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Literal

from npllm.config import SleepConfig
from npllm.errors import ConflictError
from services.idle import IdleReading
from services.sleep_protocol import RunFiles, Trigger, run_dir, worker_command

State = Literal["awake", "drowsy", "asleep", "waking"]
Action = Literal["start", "pause", "resume", "stop"]

DROWSY_S = 60.0  # the idle conditions must hold this long before a cycle starts
RESUME_AFTER_S = 10.0  # quiet time after a request before training resumes
WORKER_EXIT_S = 30.0  # how long a new cycle waits for the last one's worker to exit


def _hhmm(text: str) -> time:
    hour, minute = text.split(":")
    return time(int(hour), int(minute))


@dataclass(frozen=True)
class SleepWindow:
    """A daily local-time window; it may wrap past midnight (01:00–06:00, 22:00–06:00)."""

    start: str
    end: str

    def contains(self, now: datetime) -> bool:
        if self.start == "any":
            return True
        start, end, t = _hhmm(self.start), _hhmm(self.end), now.time()
        if start <= end:
            return start <= t < end
        return t >= start or t < end

    def next_opening(self, now: datetime) -> datetime | None:
        """When the window opens (in `now`'s time zone; naive = local time); None if always
        open. Inside the window, the opening of the window we are in — already past, so it
        reads as "open since" (`npllm sleep --status` showed tomorrow's while the window was
        open) — which is yesterday's window_start in a window past midnight (22:00–06:00 at
        02:00). Outside it, the next window_start ahead: today's, else tomorrow's."""
        if self.start == "any":
            return None
        today = datetime.combine(now.date(), _hhmm(self.start), tzinfo=now.tzinfo)
        if self.contains(now):
            return today if today <= now else today - timedelta(days=1)
        return today if today > now else today + timedelta(days=1)


class SleepStateMachine:
    """See the module docstring for the transitions."""

    def __init__(self, config: SleepConfig, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.clock = clock
        self.window = SleepWindow(config.window_start, config.window_end)
        self.state: State = "awake"
        self.reason = "just started"
        self.last_request_at = clock()
        self.last_cycle_at: datetime | None = None
        self.in_flight = 0
        self.new_interactions = 0
        self._since: datetime = clock()  # when the current state began
        self._forced = False
        self.trigger: Trigger = "manual"  # why the current (or last) cycle started

    # ---- inputs ------------------------------------------------------------------------------

    def on_request(self) -> Action | None:
        self.in_flight += 1
        self.last_request_at = self.clock()
        if self.state == "asleep":
            return self._go("waking", "a request arrived", "pause")
        if self.state == "drowsy":
            self._go("awake", "a request arrived")
        return None

    def on_request_done(self, interactions: int = 1) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.new_interactions += interactions
        self.last_request_at = self.clock()

    def force(self) -> Action | None:
        """`npllm sleep --now`: start a cycle as soon as no request is running."""
        self._forced = True
        return self.tick(None)

    def on_cycle_done(self, reason: str = "the cycle finished") -> None:
        self.last_cycle_at = self.clock()
        self.new_interactions = 0
        self._forced = False
        self._go("awake", reason)

    # ---- the clock -----------------------------------------------------------------------

    def tick(self, reading: IdleReading | None) -> Action | None:
        """Advance the state machine; returns what the worker should do, if anything."""
        now = self.clock()
        if (
            self.state in ("asleep", "waking")
            and not self._forced
            and not self.window.contains(now)
        ):
            return self._go("awake", "the sleep window closed", "stop")
        if self.state == "waking":
            quiet = (now - self.last_request_at).total_seconds()
            if self.in_flight == 0 and quiet >= RESUME_AFTER_S:
                return self._go("asleep", "quiet again", "resume")
            return None
        if self.state == "asleep":
            return None
        if self._forced:
            if self.in_flight:
                return None
            self.trigger = "manual"
            return self._go("asleep", "asked to sleep now", "start")
        blocker = self._blocker(now, reading)
        if self.state == "awake":
            if blocker is None:
                self._go("drowsy", "idle in the sleep window")
            else:
                self.reason = blocker
            return None
        # drowsy
        if blocker is not None:
            self._go("awake", blocker)
            return None
        if (now - self._since).total_seconds() >= DROWSY_S:
            self.trigger = "idle" if self.config.window_start == "any" else "scheduled"
            return self._go("asleep", "idle long enough", "start")
        return None

    def _blocker(self, now: datetime, reading: IdleReading | None) -> str | None:
        """Why the daemon may not fall asleep now, or None if it may."""
        c = self.config
        if not self.window.contains(now):
            return f"outside the sleep window {c.window_start}-{c.window_end}"
        if self.in_flight:
            return "answering a request"
        idle_s = (now - self.last_request_at).total_seconds()
        if idle_s < c.idle_minutes * 60:
            return f"a request {idle_s / 60:.1f} min ago (needs {c.idle_minutes:g} min)"
        if reading is None:
            return "no CPU reading yet"
        if reading.cpu_percent >= c.cpu_threshold_percent:
            return f"CPU {reading.cpu_percent:.0f}% (needs < {c.cpu_threshold_percent:g}%)"
        if c.require_ac_power and reading.on_ac is False:
            return "on battery"
        if self.last_cycle_at is not None:
            since = now - self.last_cycle_at
            if since < timedelta(hours=c.min_interval_hours):
                return f"last cycle {since.total_seconds() / 3600:.1f} h ago"
        if self.new_interactions < c.min_new_interactions:
            return f"{self.new_interactions} new interactions (needs {c.min_new_interactions})"
        return None

    def _go(self, state: State, reason: str, action: Action | None = None) -> Action | None:
        self.state, self.reason, self._since = state, reason, self.clock()
        return action


class Sleeper:
    """The daemon's side of sleep: feeds the state machine, runs the worker process.

    The consolidation worker is ``python -m services.worker`` (services/worker.py), a
    separate process at lower CPU priority. The daemon steers it with files in
    ``<data_dir>/run/`` (services/sleep_protocol.py: ``sleep.pause``, ``sleep.stop``; the
    worker answers ``sleep.paused``); it reacts within about 0.1 s.
    Everything here runs on the daemon's event loop."""

    def __init__(
        self,
        settings: Any,
        clock: Callable[[], datetime] = datetime.now,
        count_new: Callable[[], int] | None = None,
    ) -> None:
        from services.idle import SystemIdle

        self.settings = settings
        self.machine = SleepStateMachine(settings.sleep, clock)
        self.idle = SystemIdle()
        self.worker: subprocess.Popen[bytes] | None = None
        self.files = RunFiles(run_dir(settings.data_path))
        self.last_exit: int | None = None
        self.seed: int | None = None
        self.last_reading: IdleReading | None = None
        # New answers since the last cycle, from the database (npllm.interactions
        # .since_last_cycle); the machine's own count only fills the time between ticks.
        self.count_new = count_new

    @property
    def state(self) -> str:
        return self.machine.state

    def tick(self) -> None:
        self.last_reading = self.idle.sample()
        self._reap()
        if self.count_new is not None:
            self.machine.new_interactions = self.count_new()
        self._act(self.machine.tick(self.last_reading))

    def _reap(self) -> None:
        """Notice a worker that has exited: the cycle is over, the daemon is awake."""
        if self.worker is None or self.worker.poll() is None:
            return
        self.last_exit = self.worker.returncode
        self.worker = None
        self.files.clear()
        if self.machine.state in ("asleep", "waking"):  # not already seen finished (observe)
            reason = "the cycle finished" if self.last_exit == 0 else "the cycle failed"
            self.machine.on_cycle_done(f"{reason} (worker exit {self.last_exit})")

    def observe(self, cycles: list[dict[str, Any]]) -> None:
        """The latest npllm.sleep_cycles rows, as a status query read them: when the
        worker's cycle is recorded as finished, the daemon is awake again at once, not only
        once the worker process has exited and a tick noticed it. (The worker is still
        reaped later; a new cycle waits for it, see force_when_free.)"""
        worker = self.worker
        if worker is None or self.machine.state not in ("asleep", "waking"):
            return
        mine = next((c for c in cycles if c.get("pid") == worker.pid), None)
        if mine is not None and mine["status"] != "running":
            self.machine.on_cycle_done(f"cycle {mine['id']} {mine['status']}")

    def on_request(self) -> None:
        self._reap()
        self._act(self.machine.on_request())

    def on_request_done(self) -> None:
        self.machine.on_request_done()

    def wait_paused(self, timeout: float = 2.0) -> float:
        """On the generation thread, before an answer starts: while a worker runs and has
        been asked to pause, wait (at most `timeout` s) until it says it has, so that the
        engine's threads never compete with training for the cores (llama.cpp's OpenMP
        threads fall from ~50 to under 1 token/s when a core is taken). Seconds waited."""
        import time as clock

        worker = self.worker
        if worker is None or worker.poll() is not None or not self.files.pause_asked():
            return 0.0
        started = clock.monotonic()
        while not self.files.worker_paused() and clock.monotonic() - started < timeout:
            if worker.poll() is not None or not self.files.pause_asked():
                break
            clock.sleep(0.005)
        return clock.monotonic() - started

    async def force_when_free(self, cycles: list[dict[str, Any]], seed: int | None) -> None:
        """`npllm sleep --now` (POST /v1/sleep): one cycle at a time. `cycles` are the latest
        npllm.sleep_cycles rows (dead workers' cycles already marked interrupted). Refuses
        while a cycle runs, here or in another process, or while this daemon's worker is
        starting one; a worker whose cycle is already recorded as finished is only
        exiting, and is waited for (up to WORKER_EXIT_S) first."""
        running = next((c for c in cycles if c["status"] == "running"), None)
        if running is not None:
            raise ConflictError(
                f"sleep cycle {running['id']} is already running ({running['phase']}); "
                "watch it with `npllm sleep --status`"
            )
        worker = self.worker
        if worker is not None and worker.poll() is None:
            if not any(c["pid"] == worker.pid for c in cycles):
                raise ConflictError(
                    f"a sleep cycle is starting (worker pid {worker.pid}); watch it with "
                    "`npllm sleep --status`"
                )
            try:  # off the event loop; the state machine is only touched on it
                await asyncio.to_thread(worker.wait, WORKER_EXIT_S)
            except subprocess.TimeoutExpired:
                raise ConflictError(
                    f"the sleep worker (pid {worker.pid}) finished its cycle but has not "
                    f"exited after {WORKER_EXIT_S:g} s; try again shortly"
                ) from None
        self.force(seed)

    def force(self, seed: int | None = None) -> None:
        self._reap()
        if self.worker is not None:
            return
        self.seed = seed
        self._act(self.machine.force())

    def stop(self, timeout: float = 30.0) -> None:
        """At daemon shutdown: ask the worker to stop (it does within ~0.1 s), then make sure."""
        if self.worker is None:
            return
        self.files.ask_stop()
        try:
            self.worker.wait(timeout)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()

    def _act(self, action: Action | None) -> None:
        if action == "start" and self.worker is None:
            self.files.clear()
            # The worker gets its own copy of the descriptor; the daemon closes its own.
            with (self.settings.data_path / "sleep-worker.log").open("ab") as log_file:
                self.worker = subprocess.Popen(
                    worker_command(self.seed, self.machine.trigger),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=os.environ.copy(),
                )
        elif action == "pause":
            self.files.ask_pause()
        elif action == "resume":
            self.files.resume()
        elif action == "stop":
            self.files.ask_stop()
