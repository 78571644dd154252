"""Is the machine idle? System CPU over a sliding window and AC power, via psutil.

The daemon samples on every tick; the sleep state machine (services/sleep.py) reads
the window's mean. Nothing here blocks: psutil.cpu_percent(interval=None) reports the
use since the previous call.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class IdleReading:
    cpu_percent: float  # mean system CPU use over the window, 0..100
    on_ac: bool | None  # None: no battery (a desktop or a server), counts as on AC
    samples: int


class SystemIdle:
    """Sliding-window CPU use and power source of the whole machine."""

    def __init__(self, window_s: float = 120.0, clock: Callable[[], float] = time.monotonic):
        import psutil

        self._psutil = psutil
        self.window_s = window_s
        self.clock = clock
        self._samples: deque[tuple[float, float]] = deque()
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement

    def sample(self) -> IdleReading:
        """Take one CPU sample (use since the last call) and return the window's reading."""
        now = self.clock()
        self._samples.append((now, float(self._psutil.cpu_percent(interval=None))))
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()
        cpu = sum(v for _, v in self._samples) / len(self._samples)
        battery = self._psutil.sensors_battery()
        on_ac = None if battery is None else bool(battery.power_plugged)
        return IdleReading(round(cpu, 1), on_ac, len(self._samples))
