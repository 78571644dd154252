"""Alerts (services/alerts.py) against a real, empty database: each condition fires on the
rows that make it hold, with a fake clock and a fake disk reading; the repeat rule,
resolution, the one-shot canary alert, a database that stops answering, and the
configured command."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from npllm.db import Database
from npllm.errors import ConfigError
from services.alerts import Alerts, cycle_outcome

from ..conftest import free_port, make_settings

MIB = 2**20
# Writes its stdin to the file named by its first argument.
TO_FILE = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.stdin.read())"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, hours: float) -> None:
        self.now += timedelta(hours=hours)


class Disk:
    def __init__(self, free_mb: float) -> None:
        self.free_mb = free_mb

    def __call__(self, path: Path) -> int:
        return int(self.free_mb * MIB)


def _alerts(
    db: Database,
    tmp_path: Path,
    clock: Clock,
    disk: Disk | None = None,
    ping: Callable[[], None] | None = None,
    **env: str,
) -> Alerts:
    settings = make_settings(tmp_path, **{f"NPLLM_ALERTS__{k.upper()}": v for k, v in env.items()})
    return Alerts(
        db.pool, settings, tmp_path, clock=clock, disk_free=disk or Disk(10**6), ping=ping
    )


def _rows(db: Database) -> list[dict[str, Any]]:
    with db.pool.connection() as conn:
        cur = conn.execute(
            "SELECT id, kind, severity, message, details, command, raised_at, resolved_at "
            "FROM npllm.alerts ORDER BY id"
        )
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _rated(db: Database, when: datetime, reward: float, rated: bool = True) -> None:
    """An answer given at `when` with integrated reward `reward` (rated: a feedback event)."""
    with db.pool.connection() as conn:
        iid = conn.execute(
            "INSERT INTO npllm.interactions (created_at, messages, question, answer, base_model) "
            "VALUES (%s, '[]', 'q', 'a', 'm') RETURNING id",
            (when,),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO npllm.replay_buffer (interaction_id, reward) VALUES (%s, %s)",
            (iid, reward),
        )
        if rated:
            conn.execute(
                "INSERT INTO npllm.feedback_events (interaction_id, created_at, origin, kind, "
                "rating) VALUES (%s, %s, 'explicit', 'rating', %s)",
                (iid, when, reward),
            )


def _cycle(db: Database, status: str, metrics: dict[str, Any] | None = None) -> int:
    finished = None if status == "running" else datetime.now(UTC)
    with db.pool.connection() as conn:
        return int(
            conn.execute(
                "INSERT INTO npllm.sleep_cycles (trigger, seed, status, metrics, error, "
                "finished_at) VALUES ('manual', 0, %s, %s, %s, %s) RETURNING id",
                (status, Jsonb(metrics or {}), "boom" if status == "failed" else None, finished),
            ).fetchone()[0]
        )


def _canary(db: Database, adapter: str, status: str) -> int:
    with db.pool.connection() as conn:
        conn.execute(
            "INSERT INTO npllm.adapters (name, base_model, base_fingerprint, shape) "
            "VALUES (%s, 'm', 'f', '{}') ON CONFLICT DO NOTHING",
            (adapter,),
        )
        decided = None if status == "running" else datetime.now(UTC)
        return int(
            conn.execute(
                "INSERT INTO npllm.canaries (adapter, candidate, control, share, status, "
                "decided_by, reason, stats, deadline, decided_at) VALUES (%s, 2, 1, 0.2, %s, "
                "%s, %s, %s, now() + interval '1 day', %s) RETURNING id",
                (
                    adapter,
                    status,
                    None if decided is None else "test",
                    "the candidate's arm lost 0.5 of reward",
                    Jsonb({"candidate": {"n": 12, "mean": -0.4}, "control": {"n": 40}}),
                    decided,
                ),
            ).fetchone()[0]
        )


def test_satisfaction_drop_fires_when_the_rated_answers_fall(
    fresh_database: Database, tmp_path: Path
) -> None:
    clock = Clock()
    alerts = _alerts(fresh_database, tmp_path, clock)  # 24 h windows, drop 0.3, 10 rated
    for k in range(10):
        _rated(fresh_database, clock.now - timedelta(hours=30, minutes=k), 0.8)
        _rated(fresh_database, clock.now - timedelta(hours=2, minutes=k), 0.2)
    _rated(fresh_database, clock.now - timedelta(hours=1), -1.0, rated=False)  # not rated
    _rated(fresh_database, clock.now - timedelta(hours=50), -1.0)  # before both windows
    (alert,) = alerts.check()
    assert alert.kind == "satisfaction_drop" and alert.id is not None
    assert alert.details["recent"] == {"mean": pytest.approx(0.2, abs=1e-4), "rated": 10}
    assert alert.details["before"] == {"mean": pytest.approx(0.8, abs=1e-4), "rated": 10}
    assert alert.details["drop"] == pytest.approx(0.6, abs=1e-4)
    assert "+0.80 to +0.20" in alert.message
    (row,) = _rows(fresh_database)
    assert row["kind"] == "satisfaction_drop" and row["resolved_at"] is None
    assert row["details"]["drop"] == pytest.approx(0.6, abs=1e-4)
    # A day later the bad answers are the window before, and too few are rated since.
    clock.advance(24)
    assert alerts.check() == []
    assert _rows(fresh_database)[0]["resolved_at"] == clock.now


def test_satisfaction_is_not_compared_on_too_few_rated_answers(
    fresh_database: Database, tmp_path: Path
) -> None:
    clock = Clock()
    alerts = _alerts(fresh_database, tmp_path, clock)
    for k in range(10):
        _rated(fresh_database, clock.now - timedelta(hours=30, minutes=k), 0.9)
    for k in range(9):
        _rated(fresh_database, clock.now - timedelta(hours=2, minutes=k), -0.9)
    assert alerts.check() == []
    assert _rows(fresh_database) == []


def test_an_alert_repeats_after_repeat_hours_and_resolves_when_the_condition_ends(
    fresh_database: Database, tmp_path: Path
) -> None:
    clock, disk = Clock(), Disk(free_mb=500)
    alerts = _alerts(fresh_database, tmp_path, clock, disk, repeat_hours="6")
    (first,) = alerts.check()
    assert first.kind == "low_disk" and first.severity == "critical"
    assert first.details == {"path": str(tmp_path), "free_mb": 500.0, "min_free_mb": 1024.0}
    assert "only 500 MiB free" in first.message
    clock.advance(5.9)
    assert alerts.check() == []  # still holds, but raised less than 6 h ago
    clock.advance(0.2)
    (second,) = alerts.check()
    assert second.kind == "low_disk" and second.id != first.id
    open_now = alerts.open_alerts()
    assert [a["id"] for a in open_now] == [second.id]  # the newest row of the condition
    assert alerts.open_counts()["low_disk"] == 1
    disk.free_mb = 5000
    clock.advance(1)
    assert alerts.check() == []
    rows = _rows(fresh_database)
    assert [r["resolved_at"] for r in rows] == [clock.now, clock.now]
    assert alerts.open_alerts() == [] and alerts.open_counts()["low_disk"] == 0
    assert [a["id"] for a in alerts.listing(limit=1)] == [second.id]


def test_a_rolled_back_canary_alerts_once(fresh_database: Database, tmp_path: Path) -> None:
    clock = Clock()
    alerts = _alerts(fresh_database, tmp_path, clock)
    _canary(fresh_database, "billing", "promoted")
    canary = _canary(fresh_database, "payments", "rolled_back")
    (alert,) = alerts.check()
    assert alert.kind == "canary_rolled_back"
    assert alert.details["canary"] == canary and alert.details["adapter"] == "payments"
    assert alert.details["stats"]["candidate"]["mean"] == -0.4
    assert "payments v2 was rolled back (test)" in alert.message
    assert "v1 serves again" in alert.message
    clock.advance(48)  # one-shot: never again for this canary, and closed after repeat_hours
    assert alerts.check() == []
    (row,) = _rows(fresh_database)
    assert row["resolved_at"] == clock.now
    another = _canary(fresh_database, "billing", "rolled_back")
    assert [a.details["canary"] for a in alerts.check()] == [another]


def test_cycle_outcome_reads_the_verdicts_the_cycle_records() -> None:
    published = {"verdict": "published"}
    gate = {"verdict": "rejected: retention fell"}
    at_publish = {"verdict": "not published: the adapter cap is reached"}
    skipped = {"verdict": "skipped: 0 recurring samples"}
    assert cycle_outcome("failed", {}) == "failed"
    assert cycle_outcome("interrupted", {}) == "interrupted"
    assert cycle_outcome("succeeded", {"adapters": {"a": gate, "b": at_publish}}) == "refused"
    assert cycle_outcome("succeeded", {"adapters": {"a": gate}, "cerebellum": skipped}) == (
        "refused"
    )
    modulator = {"verdict": "kept as candidate: no better"}
    assert cycle_outcome("succeeded", {"adapters": {}, "modulator": modulator}) == "refused"
    assert cycle_outcome("succeeded", {"adapters": {"a": gate, "b": published}}) == "ok"
    assert cycle_outcome("succeeded", {"adapters": {}, "cerebellum": skipped}) == "ok"
    assert cycle_outcome("succeeded", {}) == "ok"  # nothing to learn is no failure


def test_failed_interrupted_or_refused_cycles_in_a_row_alert(
    fresh_database: Database, tmp_path: Path
) -> None:
    clock = Clock()
    alerts = _alerts(fresh_database, tmp_path, clock)  # failed_cycles = 3
    _cycle(fresh_database, "succeeded", {"adapters": {"a": {"verdict": "published"}}})
    failed = _cycle(fresh_database, "failed")
    interrupted = _cycle(fresh_database, "interrupted")
    assert alerts.check() == []  # two in a row
    refused = _cycle(fresh_database, "succeeded", {"adapters": {"a": {"verdict": "rejected: x"}}})
    _cycle(fresh_database, "running")  # not finished: not counted
    (alert,) = alerts.check()
    assert alert.kind == "failed_cycles"
    assert [(c["id"], c["outcome"]) for c in alert.details["cycles"]] == [
        (refused, "refused"),
        (interrupted, "interrupted"),
        (failed, "failed"),
    ]
    assert f"{failed} failed, {interrupted} interrupted, {refused} refused" in alert.message
    with fresh_database.pool.connection() as conn:
        conn.execute("UPDATE npllm.sleep_cycles SET status = 'succeeded', finished_at = now(), "
                     "metrics = '{\"adapters\": {\"a\": {\"verdict\": \"published\"}}}' "
                     "WHERE status = 'running'")  # fmt: skip
    assert alerts.check() == []
    assert _rows(fresh_database)[0]["resolved_at"] == clock.now


def test_an_unreachable_database_is_held_in_memory_and_written_when_it_answers(
    fresh_database: Database, tmp_path: Path
) -> None:
    clock, out = Clock(), tmp_path / "alert.json"
    down = True

    def ping() -> None:
        if down:
            raise OSError("connection refused")

    alerts = _alerts(
        fresh_database,
        tmp_path,
        clock,
        ping=ping,
        command=shlex.join([sys.executable, "-c", TO_FILE, str(out)]),
    )
    (alert,) = alerts.check()
    assert alert.kind == "database_unreachable" and alert.severity == "critical"
    assert alert.id is None and "connection refused" in alert.details["error"]
    alerts.wait_commands(30)
    sent = json.loads(out.read_text())
    assert sent["kind"] == "database_unreachable" and sent["id"] is None
    assert alert.command == {"exit": 0, "stderr": ""}
    clock.advance(1)
    assert alerts.check() == []  # the same outage: not raised again
    assert [a["kind"] for a in alerts.listing(open_only=True)] == ["database_unreachable"]
    assert _rows(fresh_database) == []
    down = False
    clock.advance(1)
    assert alerts.check() == []
    (row,) = _rows(fresh_database)
    assert row["kind"] == "database_unreachable"
    assert row["raised_at"] == clock.now - timedelta(hours=2)
    assert row["resolved_at"] == clock.now
    assert row["command"] == {"exit": 0, "stderr": ""}
    assert alerts.open_alerts() == []


def test_a_pool_on_a_closed_port_is_reported_unreachable(
    database: Database, tmp_path: Path
) -> None:
    pool = ConnectionPool(f"host=127.0.0.1 port={free_port()} dbname=x", min_size=1, open=False)
    pool.open(wait=False)
    try:
        alerts = Alerts(pool, make_settings(tmp_path), tmp_path, disk_free=Disk(2048))
        (alert,) = alerts.check()
    finally:
        pool.close(timeout=1)
    assert alert.kind == "database_unreachable" and alert.details["free_disk_mb"] == 2048.0
    assert alert.details["error"].startswith("PoolTimeout")


def test_the_command_gets_the_alert_as_json_and_its_result_is_stored(
    fresh_database: Database, tmp_path: Path
) -> None:
    out = tmp_path / "alert.json"
    command = shlex.join([sys.executable, "-c", TO_FILE, str(out)])
    alerts = _alerts(fresh_database, tmp_path, Clock(), Disk(10), command=command)
    (alert,) = alerts.check()
    alerts.wait_commands(30)
    sent = json.loads(out.read_text())
    assert sent["id"] == alert.id and sent["kind"] == "low_disk"
    assert sent["message"] == alert.message and sent["details"]["free_mb"] == 10.0
    assert sent["severity"] == "critical" and sent["raised_at"] == alert.raised_at.isoformat()
    (row,) = _rows(fresh_database)
    assert row["command"] == {"exit": 0, "stderr": ""}


@pytest.mark.parametrize(
    ("script", "timeout", "expected"),
    [
        ("import sys; print('no route to pager', file=sys.stderr); sys.exit(3)", "30",
         {"exit": 3, "stderr": "no route to pager"}),
        ("import time; time.sleep(30)", "0.5",
         {"error": "killed after 0.5 s (alerts.command_timeout_s)"}),
    ],
)  # fmt: skip
def test_a_failing_or_slow_command_is_recorded_not_raised(
    fresh_database: Database, tmp_path: Path, script: str, timeout: str, expected: dict[str, Any]
) -> None:
    command = shlex.join([sys.executable, "-c", script])
    alerts = _alerts(
        fresh_database, tmp_path, Clock(), Disk(10), command=command, command_timeout_s=timeout
    )
    (alert,) = alerts.check()
    alerts.wait_commands(30)
    assert _rows(fresh_database)[0]["command"] == expected == alert.command


def test_a_missing_program_is_recorded(fresh_database: Database, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-notifier"
    alerts = _alerts(fresh_database, tmp_path, Clock(), Disk(10), command=f"{missing} --now")
    alerts.check()
    alerts.wait_commands(30)
    (row,) = _rows(fresh_database)
    assert row["command"]["error"].startswith(f"cannot run '{missing}'")


@pytest.mark.parametrize(
    ("command", "says"),
    [("notify-send 'npllm", "cannot be split like a shell line"), ("''", "names no program")],
)
def test_a_bad_alert_command_is_a_config_error_at_load(
    tmp_path: Path, command: str, says: str
) -> None:
    with pytest.raises(ConfigError, match="alerts.command") as caught:
        make_settings(tmp_path, NPLLM_ALERTS__COMMAND=command)
    assert says in str(caught.value)
    assert make_settings(tmp_path, NPLLM_ALERTS__COMMAND="").alerts.argv == []


def test_an_unknown_kind_is_refused(fresh_database: Database, tmp_path: Path) -> None:
    alerts = _alerts(fresh_database, tmp_path, Clock())
    with pytest.raises(ValueError, match="not one of"):
        alerts.raise_alert("cpu_hot", "hot", {})
    assert _rows(fresh_database) == []
