"""Alerts: the conditions a person should hear about, checked every `alerts.check_every_s`
by the daemon's watcher thread (services/watch.py).

Kinds, and when each holds:

- ``satisfaction_drop``: the mean integrated reward (``replay_buffer.reward``) of the
  answers given in the last `satisfaction_window_hours` and rated (they have feedback
  events) fell by more than `satisfaction_drop` from the window before it, each window
  holding at least `satisfaction_min_rated` rated answers. An answer counts in the window
  of its *interaction's* time, not its rating's: a drop is then the answers served in
  that window (by the versions serving then), and a late rating of an old answer does
  not move today's figure.
- ``canary_rolled_back``: a ``npllm.canaries`` row with status 'rolled_back' that no
  alert names yet (``details->>'canary'``). Found by reading the table, so the canary
  code needs to know nothing of alerts. An event, raised once per canary; its row stays
  open for `repeat_hours` (shown in status), then closes itself.
- ``failed_cycles``: the last `failed_cycles` finished sleep cycles all failed, were
  interrupted or were refused (`cycle_outcome`).
- ``low_disk``: the data dir's filesystem has less than `min_free_disk_mb` free.
- ``database_unreachable``: a ``SELECT 1`` got no answer within `PING_TIMEOUT_S`. It
  cannot be stored while the database is down: it is logged and its command run at
  once, kept in memory (listed by the API), and written — resolved at the time the
  database answered again — at the first check that reaches it. While it is down
  nothing else is checked: every other condition reads the database.

Each alert is a row in ``npllm.alerts``, a log line ``{"event": "alert", ...}`` and, when
`alerts.command` is set, one run of it (no shell) with the alert as one JSON object on
stdin; its exit code and last lines of stderr, or why it could not run, go to the row's
``command``. The command runs on its own thread, so a slow one delays no check. npllm
makes no network request of its own.

A condition that still holds is raised again (a new row) `repeat_hours` after its newest
row; when it stops holding, its open rows get ``resolved_at``. "Open" alerts
(`open_alerts`: status, the API, the gauge) are the newest unresolved row of each
condition (of each canary for ``canary_rolled_back``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from npllm.config import Settings
from npllm.errors import StorageError

log = logging.getLogger("npllm.alerts")

KINDS = (
    "satisfaction_drop",
    "canary_rolled_back",
    "failed_cycles",
    "low_disk",
    "database_unreachable",
)
Severity = Literal["warning", "critical"]
# Seconds the database has to answer a check's SELECT 1 before it counts as unreachable.
PING_TIMEOUT_S = 3.0
# Lines of the command's stderr kept in the alert's row.
STDERR_LINES = 20
MIB = 2**20

_INSERT = """
INSERT INTO npllm.alerts (kind, severity, message, details, command, raised_at, resolved_at)
VALUES (%(kind)s, %(severity)s, %(message)s, %(details)s, %(command)s, %(raised_at)s,
        %(resolved_at)s)
RETURNING id
"""
# A short bound on the check's own query (the pool's timeout bounds getting a connection).
_PING = "SET LOCAL statement_timeout = '3s'"
_SET_COMMAND = "UPDATE npllm.alerts SET command = %(command)s WHERE id = %(id)s"
_NEWEST_OPEN = """
SELECT id, raised_at FROM npllm.alerts
WHERE kind = %(kind)s AND resolved_at IS NULL ORDER BY id DESC LIMIT 1
"""
_RESOLVE = """
UPDATE npllm.alerts SET resolved_at = %(now)s
WHERE kind = %(kind)s AND resolved_at IS NULL AND raised_at <= %(before)s
RETURNING id
"""
# The newest unresolved row of each condition (each canary's own).
_OPEN = """
SELECT DISTINCT ON (kind, details->>'canary')
       id, kind, severity, message, details, command, raised_at, resolved_at
FROM npllm.alerts WHERE resolved_at IS NULL
ORDER BY kind, details->>'canary', id DESC
"""
_RECENT = """
SELECT id, kind, severity, message, details, command, raised_at, resolved_at
FROM npllm.alerts ORDER BY id DESC LIMIT %(limit)s
"""
# Rated answers (at least one feedback event) by the window their interaction falls in.
_SATISFACTION = """
SELECT count(*) FILTER (WHERE i.created_at >= %(split)s) AS recent_n,
       avg(r.reward) FILTER (WHERE i.created_at >= %(split)s)::float8 AS recent_mean,
       count(*) FILTER (WHERE i.created_at < %(split)s) AS before_n,
       avg(r.reward) FILTER (WHERE i.created_at < %(split)s)::float8 AS before_mean
FROM npllm.interactions i
JOIN npllm.replay_buffer r ON r.interaction_id = i.id
WHERE i.created_at >= %(start)s AND i.created_at < %(now)s
  AND EXISTS (SELECT 1 FROM npllm.feedback_events f WHERE f.interaction_id = i.id)
"""
_ROLLED_BACK = """
SELECT c.id, c.adapter, c.candidate, c.control, c.share, c.decided_by, c.reason, c.stats,
       c.decided_at
FROM npllm.canaries c
WHERE c.status = 'rolled_back'
  AND NOT EXISTS (SELECT 1 FROM npllm.alerts a
                  WHERE a.kind = 'canary_rolled_back' AND a.details->>'canary' = c.id::text)
ORDER BY c.id
"""
_FINISHED_CYCLES = """
SELECT id, status, error, metrics, finished_at FROM npllm.sleep_cycles
WHERE status <> 'running' ORDER BY id DESC LIMIT %(n)s
"""


@dataclass
class Alert:
    """One alert: what a row of npllm.alerts holds (`id` None while only in memory)."""

    kind: str
    severity: Severity
    message: str
    details: dict[str, Any]
    raised_at: datetime
    id: int | None = None
    command: dict[str, Any] | None = None
    resolved_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        """The alert as the API shows it and the command reads it."""
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "details": self.details,
            "command": self.command,
            "raised_at": self.raised_at.isoformat(),
            "resolved_at": None if self.resolved_at is None else self.resolved_at.isoformat(),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Alert:
        return cls(**row)


@dataclass(frozen=True)
class Finding:
    """A condition that holds now: what its alert will say."""

    kind: str
    message: str
    details: dict[str, Any]
    severity: Severity = "warning"


def cycle_outcome(status: str, metrics: dict[str, Any]) -> str:
    """What a finished sleep cycle came to: 'failed', 'interrupted', 'refused' or 'ok'.

    'refused': it succeeded, trained at least one version, and published none. The cycle
    records each version it trained in its metrics (consolidation/cycle.py) — per adapter
    under ``adapters``, and ``cerebellum``, ``modulator`` — each with a ``verdict``:
    "published"; "rejected: …" (its gate refused it), "not published: …" (the daemon
    refused it at publish: capacity, smoke test), "kept as candidate: …" (the modulator's
    off-policy estimate) — refused; "skipped: …" — nothing trained. A cycle that had
    nothing to learn is 'ok'."""
    if status in ("failed", "interrupted"):
        return status
    reports = [*(metrics.get("adapters") or {}).values()]
    reports += [metrics[k] for k in ("cerebellum", "modulator") if metrics.get(k)]
    verdicts = [str(r.get("verdict", "skipped")) for r in reports if isinstance(r, dict)]
    trained = [v for v in verdicts if not v.startswith("skipped")]
    if trained and "published" not in trained:
        return "refused"
    return "ok"


def _disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


def _now() -> datetime:
    return datetime.now(UTC)


class Alerts:
    """Checks the conditions (`check`) and raises alerts (`raise_alert`).

    `clock` (an aware datetime), `disk_free` (bytes free at a path) and `ping` (raises
    when the database does not answer) are what tests replace."""

    def __init__(
        self,
        pool: ConnectionPool,
        settings: Settings,
        data_dir: Path,
        clock: Callable[[], datetime] = _now,
        disk_free: Callable[[Path], int] = _disk_free,
        ping: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.config = settings.alerts
        self.data_dir = data_dir
        self.clock = clock
        self.disk_free = disk_free
        self.ping = ping or self._ping
        self._lock = threading.Lock()  # an alert's row id and its command's result
        self._pending: list[Alert] = []  # raised, not yet stored (the database was down)
        self._down: Alert | None = None  # the database_unreachable alert of this outage
        self._commands: list[threading.Thread] = []

    @property
    def repeat(self) -> timedelta:
        return timedelta(hours=self.config.repeat_hours)

    # ---- checking ----------------------------------------------------------------------------

    def check(self) -> list[Alert]:
        """Evaluate every condition now; the alerts raised by this check."""
        now = self.clock()
        try:
            self.ping()
        except Exception as exc:
            return self._database_down(now, exc)
        if not self._database_back(now):
            return []
        raised: list[Alert] = []
        conditions: list[tuple[str, Callable[[datetime], Finding | None]]] = [
            ("satisfaction_drop", self._satisfaction),
            ("failed_cycles", self._failed_cycles),
            ("low_disk", self._low_disk),
        ]
        for kind, condition in conditions:
            try:
                raised += self._settle(kind, condition(now), now)
            except Exception:
                log.exception("checking alert condition %s failed", kind)
        try:
            raised += self._canaries(now)
        except Exception:
            log.exception("checking alert condition canary_rolled_back failed")
        return raised

    def _settle(self, kind: str, finding: Finding | None, now: datetime) -> list[Alert]:
        """Raise `finding` unless its condition's newest open row is younger than
        repeat_hours; with no finding, resolve the condition's open rows."""
        with self.pool.connection() as conn:
            newest = conn.execute(_NEWEST_OPEN, {"kind": kind}).fetchone()
            if finding is None:
                if newest is not None:
                    self._resolve(conn, kind, now, now)
                return []
        if newest is not None and now - newest[1] < self.repeat:
            return []
        return [self.raise_alert(finding.kind, finding.message, finding.details, finding.severity)]

    def _resolve(self, conn: Any, kind: str, now: datetime, before: datetime) -> None:
        ids = [r[0] for r in conn.execute(_RESOLVE, {"kind": kind, "now": now, "before": before})]
        if ids:
            log.info(json.dumps({"event": "alert_resolved", "kind": kind, "ids": ids}))

    def _satisfaction(self, now: datetime) -> Finding | None:
        c = self.config
        window = timedelta(hours=c.satisfaction_window_hours)
        args = {"now": now, "split": now - window, "start": now - 2 * window}
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(_SATISFACTION, args).fetchone()
        assert row is not None  # an aggregate always answers one row
        if min(row["recent_n"], row["before_n"]) < c.satisfaction_min_rated:
            return None
        drop = row["before_mean"] - row["recent_mean"]
        if drop <= c.satisfaction_drop:
            return None
        hours = f"{c.satisfaction_window_hours:g} h"
        return Finding(
            "satisfaction_drop",
            f"satisfaction fell from {row['before_mean']:+.2f} to {row['recent_mean']:+.2f} "
            f"(mean reward of rated answers, the last {hours} against the {hours} before; "
            f"more than the {c.satisfaction_drop:g} allowed)",
            {
                "window_hours": c.satisfaction_window_hours,
                "recent": {"mean": round(row["recent_mean"], 4), "rated": row["recent_n"]},
                "before": {"mean": round(row["before_mean"], 4), "rated": row["before_n"]},
                "drop": round(drop, 4),
                "threshold": c.satisfaction_drop,
            },
        )

    def _failed_cycles(self, now: datetime) -> Finding | None:
        n = self.config.failed_cycles
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cycles = cur.execute(_FINISHED_CYCLES, {"n": n}).fetchall()
        outcomes = [cycle_outcome(c["status"], c["metrics"]) for c in cycles]
        if len(cycles) < n or "ok" in outcomes:
            return None
        listed = [
            {"id": c["id"], "outcome": o, "error": c["error"]}
            for c, o in zip(cycles, outcomes, strict=True)
        ]
        ids = ", ".join(str(c["id"]) for c in reversed(cycles))
        return Finding(
            "failed_cycles",
            f"the last {n} sleep cycles ({ids}) learned nothing: "
            + ", ".join(f"{c['id']} {c['outcome']}" for c in reversed(listed))
            + "; see `npllm sleep --status` and npllm.sleep_cycles",
            {"in_a_row": n, "cycles": listed},
        )

    def _low_disk(self, now: datetime) -> Finding | None:
        free_mb = self.disk_free(self.data_dir) / MIB
        floor = self.config.min_free_disk_mb
        if free_mb >= floor:
            return None
        return Finding(
            "low_disk",
            f"only {free_mb:.0f} MiB free on the disk of {self.data_dir} (alerts.min_free_disk_mb "
            f"= {floor:g}); the database and new adapter versions need room: free some space",
            {"path": str(self.data_dir), "free_mb": round(free_mb, 1), "min_free_mb": floor},
            "critical",
        )

    def _canaries(self, now: datetime) -> list[Alert]:
        """One alert per canary rolled back; an alert stays open repeat_hours, then closes."""
        with self.pool.connection() as conn:
            self._resolve(conn, "canary_rolled_back", now, now - self.repeat)
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            canaries = cur.execute(_ROLLED_BACK).fetchall()
        raised = []
        for c in canaries:
            decided = c["decided_at"].isoformat() if c["decided_at"] else None
            why = f": {c['reason']}" if c["reason"] else ""
            raised.append(
                self.raise_alert(
                    "canary_rolled_back",
                    f"the canary of {c['adapter']} v{c['candidate']} was rolled back "
                    f"({c['decided_by'] or 'unknown'}){why}; v{c['control']} serves again",
                    {
                        "canary": c["id"],
                        "adapter": c["adapter"],
                        "candidate": c["candidate"],
                        "control": c["control"],
                        "share": c["share"],
                        "decided_by": c["decided_by"],
                        "reason": c["reason"],
                        "stats": c["stats"],
                        "decided_at": decided,
                    },
                )
            )
        return raised

    # ---- the database going away and coming back ----------------------------------------------

    def _ping(self) -> None:
        with self.pool.connection(timeout=PING_TIMEOUT_S) as conn:
            conn.execute(_PING)
            conn.execute("SELECT 1")

    def _database_down(self, now: datetime, exc: Exception) -> list[Alert]:
        if self._down is not None and now - self._down.raised_at < self.repeat:
            return []
        details: dict[str, Any] = {"error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(OSError):  # a full disk is a common reason it stopped
            details["free_disk_mb"] = round(self.disk_free(self.data_dir) / MIB, 1)
        alert = Alert(
            "database_unreachable",
            "critical",
            f"the database did not answer within {PING_TIMEOUT_S:g} s ({details['error']}); "
            "answers are not stored until it is back (`npllm doctor` checks it)",
            details,
            now,
        )
        with self._lock:
            self._pending.append(alert)
        self._down = alert
        self._announce(alert)
        return [alert]

    def _database_back(self, now: datetime) -> bool:
        """Store the alerts raised while the database was down, this outage's
        database_unreachable resolved now; False when it went away again meanwhile (those
        not stored stay pending)."""
        if self._down is not None:
            self._down = None
            log.info(json.dumps({"event": "alert_resolved", "kind": "database_unreachable"}))
        with self._lock:
            pending = list(self._pending)
        for alert in pending:
            if alert.kind == "database_unreachable" and alert.resolved_at is None:
                alert.resolved_at = now
            try:
                self._store(alert)
            except Exception as exc:
                log.warning(json.dumps({"event": "alert_not_stored", "error": str(exc)}))
                return False
            with self._lock:
                self._pending.remove(alert)
        return True

    # ---- raising -------------------------------------------------------------------------------

    def raise_alert(
        self, kind: str, message: str, details: dict[str, Any], severity: Severity = "warning"
    ) -> Alert:
        """Store, log and announce (`alerts.command`) one alert raised now. When the
        database cannot store it, it is kept and stored at the next check that reaches it."""
        if kind not in KINDS:
            raise ValueError(f"alert kind {kind!r} is not one of {', '.join(KINDS)}")
        alert = Alert(kind, severity, message, details, self.clock())
        try:
            self._store(alert)
        except Exception as exc:
            log.warning(json.dumps({"event": "alert_not_stored", "error": str(exc)}))
            with self._lock:
                self._pending.append(alert)
        self._announce(alert)
        return alert

    def _store(self, alert: Alert) -> None:
        """Write the alert's row (under the lock: its command may finish meanwhile)."""
        with self._lock, self.pool.connection() as conn:
            row = conn.execute(
                _INSERT,
                {
                    "kind": alert.kind,
                    "severity": alert.severity,
                    "message": alert.message,
                    "details": Jsonb(alert.details),
                    "command": None if alert.command is None else Jsonb(alert.command),
                    "raised_at": alert.raised_at,
                    "resolved_at": alert.resolved_at,
                },
            ).fetchone()
            assert row is not None  # INSERT … RETURNING
            alert.id = int(row[0])

    def _announce(self, alert: Alert) -> None:
        """The log line, and the command started on its own thread."""
        level = logging.ERROR if alert.severity == "critical" else logging.WARNING
        log.log(level, json.dumps({"event": "alert", **alert.as_json()}, default=str))
        if not self.config.argv:
            return
        thread = threading.Thread(
            target=self._run_command, args=(alert,), name="npllm-alert-command", daemon=True
        )
        self._commands = [t for t in self._commands if t.is_alive()] + [thread]
        thread.start()

    def _run_command(self, alert: Alert) -> None:
        argv, timeout = self.config.argv, self.config.command_timeout_s
        payload = json.dumps({k: v for k, v in alert.as_json().items() if k != "command"})
        try:
            done = subprocess.run(
                argv,
                input=payload,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
            )
            result: dict[str, Any] = {"exit": done.returncode, "stderr": _tail(done.stderr)}
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr or ""
            if isinstance(stderr, bytes):
                stderr = stderr.decode(errors="replace")
            result = {"error": f"killed after {timeout:g} s (alerts.command_timeout_s)"}
            if stderr:
                result["stderr"] = _tail(stderr)
        except OSError as exc:
            result = {"error": f"cannot run {argv[0]!r}: {exc}"}
        if result.get("exit", 0) != 0 or "error" in result:
            log.warning(json.dumps({"event": "alert_command_failed", "alert": alert.id, **result}))
        with self._lock:  # not stored yet: its row will be written with the result
            alert.command = result
            stored = alert.id
        if stored is None:
            return
        try:
            with self.pool.connection() as conn:
                conn.execute(_SET_COMMAND, {"id": stored, "command": Jsonb(result)})
        except Exception as exc:
            log.warning(json.dumps({"event": "alert_command_not_stored", "error": str(exc)}))

    def wait_commands(self, timeout: float) -> None:
        """Wait (at most `timeout` s each) for the commands still running."""
        for thread in list(self._commands):
            thread.join(timeout)

    # ---- reading -------------------------------------------------------------------------------

    def listing(self, open_only: bool = False, limit: int = 100) -> list[dict[str, Any]]:
        """Alerts newest first: all rows, or (`open_only`) the newest unresolved row of each
        condition; those not stored yet (the database was down) first."""
        with self._lock:
            pending = [a.as_json() for a in reversed(self._pending)]
        if open_only:
            pending = [a for a in pending if a["resolved_at"] is None]
        try:
            with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                if open_only:
                    rows = sorted(cur.execute(_OPEN).fetchall(), key=lambda r: -r["id"])
                else:
                    rows = cur.execute(_RECENT, {"limit": limit}).fetchall()
        except Exception as exc:
            if pending:  # the database is down, and these say so
                return pending[:limit]
            raise StorageError(
                f"the alerts cannot be read: the database did not answer ({exc})"
            ) from exc
        return (pending + [Alert.from_row(r).as_json() for r in rows])[:limit]

    def open_alerts(self) -> list[dict[str, Any]]:
        """What `npllm status` shows: the conditions that hold now."""
        return self.listing(open_only=True, limit=len(KINDS) * 1000)

    def open_counts(self) -> dict[str, int]:
        """Kind → conditions holding now (the gauge npllm_alerts_open)."""
        counts = dict.fromkeys(KINDS, 0)
        for alert in self.open_alerts():
            counts[alert["kind"]] = counts.get(alert["kind"], 0) + 1
        return counts


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-STDERR_LINES:])
