"""The sleep state machine with a fake clock and fake idle readings; the real idle reader."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from npllm.config import SleepConfig
from services.idle import IdleReading, SystemIdle
from services.sleep import DROWSY_S, RESUME_AFTER_S, SleepStateMachine, SleepWindow

from ..conftest import make_settings

QUIET = IdleReading(cpu_percent=3.0, on_ac=True, samples=10)
BUSY = IdleReading(cpu_percent=90.0, on_ac=True, samples=10)


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def _machine(at: str = "2026-11-23 02:00", **config: object) -> tuple[SleepStateMachine, FakeClock]:
    clock = FakeClock(datetime.fromisoformat(at))
    settings = SleepConfig(**{"idle_minutes": 15, "min_new_interactions": 1, **config})  # type: ignore[arg-type]
    machine = SleepStateMachine(settings, clock)
    machine.on_request()
    machine.on_request_done(interactions=3)
    return machine, clock


@pytest.mark.parametrize(
    ("start", "end", "inside", "outside"),
    [
        ("01:00", "06:00", ["01:00", "03:30", "05:59"], ["00:59", "06:00", "12:00"]),
        ("22:00", "06:00", ["22:00", "23:59", "00:00", "05:59"], ["06:00", "21:59", "12:00"]),
        ("any", "06:00", ["00:00", "12:00", "23:59"], []),
    ],
)
def test_the_window_handles_midnight(
    start: str, end: str, inside: list[str], outside: list[str]
) -> None:
    window = SleepWindow(start, end)
    day = "2026-11-23 "
    assert all(window.contains(datetime.fromisoformat(day + t)) for t in inside)
    assert not any(window.contains(datetime.fromisoformat(day + t)) for t in outside)


def test_next_window_opening_is_the_next_start_time() -> None:
    window = SleepWindow("01:00", "06:00")
    assert window.next_opening(
        datetime.fromisoformat("2026-11-23 00:30")
    ) == datetime.fromisoformat("2026-11-23 01:00")
    assert window.next_opening(
        datetime.fromisoformat("2026-11-23 12:00")
    ) == datetime.fromisoformat("2026-11-24 01:00")
    assert (
        SleepWindow("any", "06:00").next_opening(datetime.fromisoformat("2026-11-23 12:00")) is None
    )


@pytest.mark.parametrize(
    ("start", "end", "now", "opening"),
    [
        # Inside the window: the opening of the window we are in, not tomorrow's.
        ("01:00", "06:00", "2026-12-07 01:00", "2026-12-07 01:00"),
        ("01:00", "06:00", "2026-12-07 03:30", "2026-12-07 01:00"),
        ("22:00", "06:00", "2026-12-07 23:00", "2026-12-07 22:00"),
        ("22:00", "06:00", "2026-12-08 02:00", "2026-12-07 22:00"),  # opened yesterday
        # Outside it: the next opening ahead.
        ("01:00", "06:00", "2026-12-07 06:00", "2026-12-08 01:00"),
        ("22:00", "06:00", "2026-12-07 06:00", "2026-12-07 22:00"),
        ("22:00", "06:00", "2026-12-07 21:59", "2026-12-07 22:00"),
    ],
)
def test_inside_the_window_its_opening_is_the_current_one(
    start: str, end: str, now: str, opening: str
) -> None:
    window = SleepWindow(start, end)
    assert window.next_opening(datetime.fromisoformat(now)) == datetime.fromisoformat(opening)


def test_falls_asleep_only_when_idle_in_the_window_then_wakes_and_resumes() -> None:
    machine, clock = _machine()
    assert machine.tick(QUIET) is None and machine.state == "awake"
    assert "a request 0.0 min ago" in machine.reason
    clock.advance(minutes=16)
    assert machine.tick(BUSY) is None and machine.state == "awake"
    assert machine.reason == "CPU 90% (needs < 25%)"
    assert machine.tick(QUIET) is None and machine.state == "drowsy"
    clock.advance(seconds=DROWSY_S)
    assert machine.tick(QUIET) == "start" and machine.state == "asleep"
    # A request wakes it: training pauses, the request is served, then training resumes.
    assert machine.on_request() == "pause" and machine.state == "waking"
    clock.advance(seconds=RESUME_AFTER_S)
    assert machine.tick(QUIET) is None  # still answering
    machine.on_request_done()
    assert machine.tick(QUIET) is None  # quiet time counts from the end of the request
    clock.advance(seconds=RESUME_AFTER_S)
    assert machine.tick(QUIET) == "resume" and machine.state == "asleep"
    machine.on_cycle_done()
    assert machine.state == "awake" and machine.new_interactions == 0


def test_a_request_while_drowsy_keeps_it_awake() -> None:
    machine, clock = _machine()
    clock.advance(minutes=16)
    machine.tick(QUIET)
    assert machine.state == "drowsy"
    assert machine.on_request() is None and machine.state == "awake"


@pytest.mark.parametrize(
    ("at", "config", "reading", "reason"),
    [
        ("2026-11-23 12:00", {}, QUIET, "outside the sleep window 01:00-06:00"),
        ("2026-11-23 02:00", {"require_ac_power": True}, IdleReading(3.0, False, 5), "on battery"),
        ("2026-11-23 02:00", {"min_new_interactions": 10}, QUIET, "3 new interactions (needs 10)"),
    ],
)
def test_what_keeps_it_awake_is_said(
    at: str, config: dict[str, object], reading: IdleReading, reason: str
) -> None:
    machine, clock = _machine(at, **config)
    clock.advance(minutes=16)
    machine.tick(reading)
    assert machine.state == "awake" and machine.reason == reason


def test_minimum_interval_between_cycles() -> None:
    machine, clock = _machine(min_interval_hours=6)
    machine.on_cycle_done()
    machine.on_request_done(interactions=5)
    clock.advance(minutes=30)
    machine.tick(QUIET)
    assert machine.state == "awake" and machine.reason.startswith("last cycle 0.5 h ago")


def test_the_window_closing_stops_a_cycle_but_a_forced_one_runs_anyway() -> None:
    machine, clock = _machine("2026-11-23 05:40")
    clock.advance(minutes=16)
    machine.tick(QUIET)
    clock.advance(seconds=DROWSY_S)
    assert machine.tick(QUIET) == "start"
    clock.advance(minutes=10)  # 06:07
    assert machine.tick(QUIET) == "stop" and machine.reason == "the sleep window closed"
    forced, clock = _machine("2026-11-23 12:00")
    assert forced.force() == "start" and forced.state == "asleep"
    clock.advance(hours=3)
    assert forced.tick(BUSY) is None and forced.state == "asleep"


def test_a_forced_sleep_waits_for_running_requests() -> None:
    machine, _ = _machine("2026-11-23 12:00")
    machine.on_request()
    assert machine.force() is None and machine.state == "awake"
    machine.on_request_done()
    assert machine.tick(None) == "start"


def test_the_real_idle_reader_gives_sane_values() -> None:
    ticks = iter(range(0, 1000, 30))
    reader = SystemIdle(window_s=60, clock=lambda: float(next(ticks)))
    readings = [reader.sample() for _ in range(5)]
    assert all(0.0 <= r.cpu_percent <= 100.0 for r in readings)
    assert readings[-1].samples == 3  # 60 s window, a sample every 30 s
    assert readings[-1].on_ac in (True, False, None)


def test_one_cycle_at_a_time_and_a_finished_worker_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`npllm sleep --now` while a cycle runs, or while the daemon's worker starts one, is
    refused with the reason. A worker records its cycle as finished a moment before its
    process exits: asked again in that moment, the daemon waits for the exit and starts
    the new cycle, instead of finding a worker and doing nothing."""
    import asyncio
    import subprocess
    import sys
    from types import SimpleNamespace

    from npllm.errors import ConflictError
    from services import sleep
    from services.sleep import Sleeper

    sleeper = Sleeper(SimpleNamespace(sleep=SleepConfig(), data_path=tmp_path))
    started: list[str | None] = []
    monkeypatch.setattr(sleeper, "_act", started.append)  # no real worker process

    def worker(seconds: float) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])

    def ask(cycles: list[dict[str, object]]) -> None:
        asyncio.run(sleeper.force_when_free(cycles, seed=1))

    running = {"id": 7, "status": "running", "phase": "training x step 2/8", "pid": 123}
    with pytest.raises(ConflictError, match=r"sleep cycle 7 is already running \(training x"):
        ask([running])
    sleeper.machine.force()  # asleep: the worker below is its cycle's
    sleeper.worker = worker(1.0)
    with pytest.raises(ConflictError, match="a sleep cycle is starting"):
        ask([{"id": 6, "status": "succeeded", "phase": "done", "pid": 1}])
    finished = {"id": 8, "status": "succeeded", "phase": "done", "pid": sleeper.worker.pid}
    ask([finished])  # waits for it to exit, then starts the next cycle
    assert sleeper.last_exit == 0 and started == ["start"] and sleeper.state == "asleep"
    sleeper.worker = worker(60.0)
    monkeypatch.setattr(sleep, "WORKER_EXIT_S", 0.1)
    try:
        with pytest.raises(ConflictError, match="has not exited after 0.1 s"):
            ask([{**finished, "pid": sleeper.worker.pid}])
    finally:
        sleeper.worker.kill()
        sleeper.worker.wait()


@pytest.mark.parametrize(
    ("window", "forced", "trigger"),
    [("01:00", False, "scheduled"), ("any", False, "idle"), ("01:00", True, "manual")],
)
def test_the_trigger_says_why_a_cycle_started(window: str, forced: bool, trigger: str) -> None:
    machine, clock = _machine(window_start=window)
    clock.advance(minutes=16)
    if forced:
        assert machine.force() == "start"
    else:
        machine.tick(QUIET)
        clock.advance(seconds=DROWSY_S)
        assert machine.tick(QUIET) == "start"
    assert machine.trigger == trigger


def test_the_daemon_is_awake_as_soon_as_its_cycle_is_recorded_finished(tmp_path: Path) -> None:
    """`npllm status` right after `npllm sleep --now --follow` returns says awake: the cycle's
    row is read, not only the worker's exit (which comes a moment later)."""
    import subprocess
    import sys
    from types import SimpleNamespace

    from services.sleep import Sleeper

    sleeper = Sleeper(SimpleNamespace(sleep=SleepConfig(), data_path=tmp_path))
    sleeper.machine.force()
    sleeper.worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        mine = {"id": 3, "status": "running", "pid": sleeper.worker.pid}
        sleeper.observe([mine])
        assert sleeper.state == "asleep"
        sleeper.observe([{**mine, "status": "succeeded"}])
        assert sleeper.state == "awake" and sleeper.machine.reason == "cycle 3 succeeded"
        assert sleeper.worker is not None  # still reaped later, when it exits
    finally:
        sleeper.worker.kill()
        sleeper.worker.wait()
    sleeper.tick()
    assert sleeper.worker is None and sleeper.state == "awake"


def test_new_interactions_are_counted_in_the_database_since_the_last_successful_cycle(
    fresh_database: Any, tmp_path: Path
) -> None:
    from npllm import interactions
    from services.sleep import Sleeper

    pool = fresh_database.pool

    def answered(n: int) -> None:
        with pool.connection() as conn:
            for i in range(n):
                conn.execute(
                    "INSERT INTO npllm.interactions (messages, question, answer, base_model) "
                    "VALUES ('[]', %(q)s, 'a', 'm')",
                    {"q": f"question {i}"},
                )

    answered(3)
    assert interactions.since_last_cycle(pool) == 3
    with pool.connection() as conn:
        conn.execute("INSERT INTO npllm.sleep_cycles (seed, status) VALUES (0, 'failed')")
    assert interactions.since_last_cycle(pool) == 3  # a failed night learned nothing
    with pool.connection() as conn:
        conn.execute("INSERT INTO npllm.sleep_cycles (seed, status) VALUES (0, 'succeeded')")
    answered(2)
    assert interactions.since_last_cycle(pool) == 2
    # The daemon's sleeper reads that count at every tick (a restart loses nothing).
    sleeper = Sleeper(
        make_settings(tmp_path), count_new=lambda: interactions.since_last_cycle(pool)
    )
    sleeper.machine.new_interactions = 0
    sleeper.tick()
    assert sleeper.machine.new_interactions == 2


def test_sleep_status_says_the_window_is_open_while_it_is() -> None:
    from services.cli.sleep import window_line

    inside = {"next_window": "2026-12-08T01:00:00", "window_open": True, "window": "01:00-06:00"}
    assert window_line(inside) == "window open now (since 2026-12-08 01:00, until 06:00)"
    outside = {**inside, "window_open": False}
    assert window_line(outside) == "window opens next at 2026-12-08 01:00"
    assert window_line({"next_window": None}) is None
