"""What the dashboard shows (GET /v1/dashboard, the page at GET /dashboard), read from the
database with a few named queries and returned as one JSON-able dict.

Every figure is a column a person can read with psql (docs/dashboard.md names them):

- **satisfaction**: the mean integrated reward (`replay_buffer.reward`) of rated answers
  (those with a row in `feedback_events`), by hour or day of `interactions.created_at`,
  overall (each answer once) and per adapter and version of `interactions.adapters_used`
  (an answer blended from two adapters counts for both; a canary's arm, when the element
  names one, splits the series); canary trials (`canaries`) mark the chart;
- **nights**: per sleep cycle (`sleep_cycles`) what its `metrics` recorded for each
  adapter (the cycle's own words, consolidation/cycle.py `_report`), the training runs
  (`training_runs`) and the questions the version it made was taught (`routing_keys` of
  kind question, with their interactions and the taught answer);
- **retention**: the R matrix — per night and adapter, the retention score (exp(−loss) on
  the probe set of earlier nights' answers) before and after that night's training, as
  the gate measured it; an adapter not trained that night has no cell (its weights did
  not change);
- the replay buffer's tiers (`replay_overview`), routing shares (`routing_decisions`),
  alerts (`alerts`) and the running cycle's progress (its `phase`).

Nothing here computes a number the daemon did not record, except means and counts.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from consolidation.bookkeeping import recent_cycles

# Satisfaction is bucketed by minute over a span of up to two hours (a new install's first
# day), by hour up to three days, else by day.
MINUTELY_SPAN_S = 2 * 3600
HOURLY_SPAN_S = 3 * 86400
NIGHTS = 30  # sleep cycles the report shows, newest first

_SPAN = """
SELECT min(i.created_at), max(i.created_at)
FROM npllm.interactions i
WHERE i.created_at >= now() - make_interval(days => %(days)s)
  AND EXISTS (SELECT 1 FROM npllm.feedback_events f WHERE f.interaction_id = i.id)
"""
# Each rated answer once.
_SATISFACTION = """
SELECT date_trunc(%(bucket)s, i.created_at) AS at, avg(r.reward)::float8, count(*)
FROM npllm.replay_buffer r JOIN npllm.interactions i ON i.id = r.interaction_id
WHERE i.created_at >= now() - make_interval(days => %(days)s)
  AND EXISTS (SELECT 1 FROM npllm.feedback_events f WHERE f.interaction_id = i.id)
GROUP BY 1 ORDER BY 1
"""
# Per adapter, version and (while a canary runs) arm; 'none': no adapter answered.
_SATISFACTION_BY_ADAPTER = """
SELECT date_trunc(%(bucket)s, i.created_at) AS at,
       coalesce(a->>'name', 'none'), a->>'version', a->>'arm', a->>'canary',
       avg(r.reward)::float8, count(*)
FROM npllm.replay_buffer r
JOIN npllm.interactions i ON i.id = r.interaction_id
LEFT JOIN LATERAL jsonb_array_elements(i.adapters_used) a ON true
WHERE i.created_at >= now() - make_interval(days => %(days)s)
  AND EXISTS (SELECT 1 FROM npllm.feedback_events f WHERE f.interaction_id = i.id)
GROUP BY 1, 2, 3, 4, 5 ORDER BY 1
"""
_CANARIES = """
SELECT id, adapter, candidate, control, share, sleep_cycle, status, decided_by, reason, stats,
       started_at, deadline, decided_at
FROM npllm.canaries ORDER BY id DESC LIMIT 50
"""
_CYCLES = """
SELECT id, trigger, status, phase, samples, metrics, error, started_at, finished_at,
       resumed_from
FROM npllm.sleep_cycles ORDER BY id DESC LIMIT %(limit)s
"""
_RUNS = """
SELECT sleep_cycle, id, kind, adapter, version, dataset, status, examples, steps, steps_done,
       stopped, error, started_at, finished_at
FROM npllm.training_runs WHERE sleep_cycle = ANY(%(cycles)s) ORDER BY id
"""
# The questions each version was taught, with the interaction and the answer taught (the
# user's correction, else the answer they liked).
_TAUGHT = """
SELECT k.adapter, k.version, k.text, k.interaction_id,
       npllm.training_target(r.corrected_answer, i.answer)
FROM npllm.routing_keys k
LEFT JOIN npllm.interactions i ON i.id = k.interaction_id
LEFT JOIN npllm.replay_buffer r ON r.interaction_id = k.interaction_id
WHERE k.kind = 'question' AND k.adapter || ':' || k.version = ANY(%(versions)s)
ORDER BY k.adapter, k.version, k.interaction_id NULLS LAST, k.id
"""
_REPLAY = """
SELECT tier, tag, interactions, mean_reward::float8, mean_quality::float8, corrected, rated,
       times_sampled
FROM npllm.replay_overview
"""
_ROUTING = """
SELECT date_trunc('day', d.created_at) AS day, coalesce(c->>'name', 'none'), count(*)
FROM npllm.routing_decisions d
LEFT JOIN LATERAL jsonb_array_elements(d.chosen) c ON true
WHERE d.created_at >= now() - make_interval(days => %(days)s)
GROUP BY 1, 2 ORDER BY 1, 2
"""
_ROUTING_MODES = """
SELECT mode, count(*) FROM npllm.routing_decisions
WHERE created_at >= now() - make_interval(days => %(days)s) GROUP BY 1 ORDER BY 1
"""
_ALERTS = """
SELECT id, kind, severity, message, details, raised_at, resolved_at
FROM npllm.alerts ORDER BY raised_at DESC, id DESC LIMIT 50
"""

# The cycle's own summaries (consolidation/gate.py: Taught.summary, Locality.summary).
_SERVED = re.compile(r"(\d+) of (\d+) new(?:, (\d+) of (\d+) rehearsed)? served as taught")
_LOCALITY = re.compile(
    r"(\d+) of (\d+) neighbouring questions changed \((\d+) in its scope, (\d+) taken out"
    r" of it, (\d+) too alike"
)
_STEP = re.compile(r"step (\d+)/(\d+)")


def read(pool: Any, days: int) -> dict[str, Any]:
    """Everything the page shows from the database, over the last `days` days (the nights
    and alerts: the latest ones, whatever their age)."""
    with pool.connection() as conn:
        first, last = conn.execute(_SPAN, {"days": days}).fetchone() or (None, None)
        bucket = _bucket(first, last)
        window = {"days": days, "bucket": bucket}
        overall = conn.execute(_SATISFACTION, window).fetchall()
        by_adapter = conn.execute(_SATISFACTION_BY_ADAPTER, window).fetchall()
        canaries = _rows(conn.execute(_CANARIES))
        cycles = _rows(conn.execute(_CYCLES, {"limit": NIGHTS}))
        ids = [c["id"] for c in cycles]
        runs = _rows(conn.execute(_RUNS, {"cycles": ids}))
        taught = conn.execute(_TAUGHT, {"versions": _versions(cycles)}).fetchall()
        replay = _rows(conn.execute(_REPLAY))
        routing = conn.execute(_ROUTING, {"days": days}).fetchall()
        modes = conn.execute(_ROUTING_MODES, {"days": days}).fetchall()
        alerts = _rows(conn.execute(_ALERTS))
    nights = _nights(cycles, runs, taught)
    return {
        "days": days,
        "satisfaction": _satisfaction(bucket, overall, by_adapter),
        "canaries": [_iso(c) for c in canaries],
        "nights": nights,
        "retention": _retention(nights),
        "progress": _progress(recent_cycles(pool, 1)),
        "replay": replay,
        "routing": {
            "days": [
                {"day": day.date().isoformat(), "adapter": name, "answers": n}
                for day, name, n in routing
            ],
            "modes": {mode: n for mode, n in modes},
        },
        "alerts": [_iso(a) for a in alerts],
    }


def _bucket(first: datetime | None, last: datetime | None) -> str:
    """The date_trunc unit for a span of rated answers from `first` to `last`."""
    if first is None or last is None:
        return "hour"
    span = (last - first).total_seconds()
    return "minute" if span <= MINUTELY_SPAN_S else "hour" if span <= HOURLY_SPAN_S else "day"


def _rows(cursor: Any) -> list[dict[str, Any]]:
    names = [c.name for c in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _iso(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _satisfaction(bucket: str, overall: list[Any], by_adapter: list[Any]) -> dict[str, Any]:
    series: dict[str, dict[str, Any]] = {}
    for at, name, version, arm, canary, mean, n in by_adapter:
        label = name if version is None else f"{name} v{version}"
        if arm:
            label += f" ({arm})"
        s = series.setdefault(
            label,
            {"label": label, "adapter": name, "version": None if version is None else int(version),
             "arm": arm, "canary": None if canary is None else int(canary), "points": []},
        )  # fmt: skip
        s["points"].append({"at": at.isoformat(), "mean": round(mean, 4), "n": n})
    return {
        "bucket": bucket,
        "overall": [
            {"at": at.isoformat(), "mean": round(mean, 4), "n": n} for at, mean, n in overall
        ],
        "series": sorted(series.values(), key=lambda s: s["label"]),
    }


def _versions(cycles: list[dict[str, Any]]) -> list[str]:
    """'adapter:version' of every version the cycles made (published or refused) and of the
    versions they followed."""
    made = []
    for c in cycles:
        for name, report in _reports(c["metrics"]).items():
            for key in ("published", "candidate_version", "previous_version"):
                if isinstance(report.get(key), int):
                    made.append(f"{name}:{report[key]}")
    return made


def _reports(metrics: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """A cycle's reports by what was trained: each adapter, the cerebellum, the modulator."""
    metrics = metrics or {}
    reports = dict(metrics.get("adapters") or {})
    for kind in ("cerebellum", "modulator"):
        if isinstance(metrics.get(kind), dict):
            reports[kind] = metrics[kind]
    return reports


_NIGHT = ("id", "trigger", "status", "phase", "samples", "error", "started_at", "finished_at",
          "resumed_from")  # fmt: skip


def _nights(
    cycles: list[dict[str, Any]], runs: list[dict[str, Any]], taught: list[Any]
) -> list[dict[str, Any]]:
    questions: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for adapter, version, text, interaction, answer in taught:
        questions.setdefault((adapter, version), []).append(
            {"question": text, "interaction_id": interaction, "answer": answer}
        )
    nights = []
    for c in cycles:
        metrics = c["metrics"] or {}
        learned = []
        for name, report in _reports(metrics).items():
            learned.append(_learned(name, report, questions))
        nights.append(
            {
                **_iso({k: c[k] for k in _NIGHT}),
                "seconds": None
                if c["finished_at"] is None
                else round((c["finished_at"] - c["started_at"]).total_seconds(), 1),
                "topics": metrics.get("topics", {}),
                "skipped": metrics.get("skipped", {}),
                "base_unchanged": metrics.get("base_unchanged"),
                "learned": learned,
                "runs": [_iso(r) for r in runs if r["sleep_cycle"] == c["id"]],
            }
        )
    return nights


def _learned(
    name: str, report: dict[str, Any], questions: dict[tuple[str, int], list[dict[str, Any]]]
) -> dict[str, Any]:
    """One adapter's entry in a night: what the cycle recorded, and the numbers of its
    summaries (efficacy: taught answers served as taught; locality: neighbours changed)."""
    version = report.get("published") or report.get("candidate_version")
    served = _SERVED.search(str(report.get("served") or ""))
    locality = _LOCALITY.search(str(report.get("locality") or ""))
    retention = report.get("retention_score") or {}
    loss = report.get("validation_loss") or {}
    previous = report.get("previous_version")
    taught = questions.get((name, version), []) if isinstance(version, int) else []
    earlier = {q["question"] for q in questions.get((name, previous), [])} if previous else set()
    return {
        "adapter": name,
        "verdict": report.get("verdict"),
        "published": report.get("published"),
        "candidate_version": report.get("candidate_version"),
        "previous_version": previous,
        "samples": report.get("samples"),
        "rehearsed": report.get("rehearsed"),
        "paraphrases": report.get("paraphrases"),
        "keys": report.get("keys"),
        "steps": report.get("steps"),
        "steps_done": report.get("steps_done"),
        "seconds": report.get("seconds"),
        "stopped": report.get("stopped"),
        "dataset": report.get("dataset"),
        "served": report.get("served"),
        "efficacy": None
        if served is None
        else {
            "new": int(served[2]),
            "new_right": int(served[1]),
            "rehearsed": int(served[4] or 0),
            "rehearsed_right": int(served[3] or 0),
        },
        "locality": report.get("locality"),
        "locality_counts": None
        if locality is None
        else {
            "changed": int(locality[1]),
            "questions": int(locality[2]),
            "in_scope": int(locality[3]),
            "taken_out": int(locality[4]),
            "unclear": int(locality[5]),
        },
        "validation_loss": {"before": loss.get("before"), "after": loss.get("after")},
        "retention": {"before": retention.get("before"), "after": retention.get("after")},
        "forgotten": report.get("forgotten"),
        "unlearned": report.get("unlearned"),
        # The version's question keys; `new`: not taught to the version it follows.
        "taught": [{**q, "new": q["question"] not in earlier} for q in taught],
    }


def _retention(nights: list[dict[str, Any]]) -> dict[str, Any]:
    """The R matrix: rows the nights that trained something (oldest first), columns the
    adapters; a cell is what the gate measured on the adapter's probe set that night."""
    rows, columns = [], []
    for night in reversed(nights):
        cells = {}
        for entry in night["learned"]:
            if entry["verdict"] is None or str(entry["verdict"]).startswith("skipped"):
                continue
            name = entry["adapter"]
            if name not in columns:
                columns.append(name)
            before, after = entry["retention"]["before"], entry["retention"]["after"]
            cells[name] = {
                "before": before,
                "after": after,
                # first: its first version, no earlier answer to retain yet
                "first": before is None and after is None,
                "published": entry["published"] is not None,
                "forgotten": len(entry["forgotten"] or []),
            }
        if cells:
            rows.append({"night": night["id"], "started_at": night["started_at"], "cells": cells})
    return {"columns": columns, "rows": rows}


def _progress(latest: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The running cycle's phase and, while it trains, its step of the budget (`latest`:
    consolidation.bookkeeping.recent_cycles, which knows a cycle whose worker died)."""
    running = next((c for c in latest if c["status"] == "running"), None)
    if running is None:
        return None
    step = _STEP.search(running["phase"] or "")
    return {
        "cycle": running["id"],
        "phase": running["phase"],
        "started_at": running["started_at"],
        "step": int(step[1]) if step else None,
        "steps": int(step[2]) if step else None,
    }


def versions_of(listing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The version store's listing (npllm.versions.Registry.listing) without the trainer's
    per-step figures: each version's status, reason, night and verdict."""
    return [
        {
            **{k: a[k] for k in ("name", "description", "tags", "status", "dataset")},
            "versions": [
                {
                    **{k: v.get(k) for k in ("version", "status", "reason", "created_at")},
                    "sleep_cycle": (v.get("metrics") or {}).get("sleep_cycle"),
                    "samples": (v.get("metrics") or {}).get("samples"),
                }
                for v in a["versions"]
            ],
        }
        for a in listing
    ]
