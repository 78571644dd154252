"""What GET /metrics exposes, in Prometheus's text format, through prometheus-client.

Two kinds of figures:

- **Measured as requests run** (this process; reset at restart, as Prometheus expects of
  counters): request latency by route template, method and status class; time to first
  token and tokens per second of streamed answers; tokens generated; requests refused
  because the queue was full (503).
- **Read from the database at each scrape** (`StateCollector`): the queue's depth, the
  adapters served, feedback events by origin and kind, the mean reward of rated answers
  by adapter and version, sleep cycles by status and the seconds they took, the
  database's size, and whether it answered (`npllm_database_up`).

Names follow Prometheus's conventions (`npllm_…_seconds`, `_bytes`, counters `_total`);
docs/api.md lists them all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("npllm.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RATE_BUCKETS = (1, 5, 10, 20, 40, 60, 80, 100, 150, 200, 400)

_FEEDBACK = """
SELECT origin, kind, count(*) FROM npllm.feedback_events GROUP BY origin, kind
"""
# Rated answers (at least one feedback event) by the adapters that answered them; an
# answer blended from two adapters counts for both; none: no adapter.
_REWARD = """
SELECT coalesce(a->>'name', 'none') AS adapter, coalesce(a->>'version', '') AS version,
       avg(r.reward)::float8, count(*)
FROM npllm.replay_buffer r
JOIN npllm.interactions i ON i.id = r.interaction_id
LEFT JOIN LATERAL jsonb_array_elements(i.adapters_used) a ON true
WHERE EXISTS (SELECT 1 FROM npllm.feedback_events f WHERE f.interaction_id = i.id)
GROUP BY 1, 2
"""
_CYCLES = """
SELECT status, count(*),
       coalesce(sum(extract(epoch FROM finished_at - started_at)), 0)::float8
FROM npllm.sleep_cycles GROUP BY status
"""
_SIZE = "SELECT pg_database_size(current_database())"
_CANARIES = "SELECT status, count(*) FROM npllm.canaries GROUP BY status"


class Metrics:
    """The daemon's registry and the figures measured as requests run."""

    def __init__(self, service: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "npllm_request_duration_seconds",
            "Time from a request's arrival to its last byte, by route template.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "npllm_time_to_first_token_seconds",
            "Time from a streamed answer's request to its first text (chat or completion).",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens_per_second = Histogram(
            "npllm_generation_tokens_per_second",
            "Decoding rate of each answer, as npllm's timings.tokens_per_s reports it.",
            ["kind"],
            buckets=RATE_BUCKETS,
            registry=self.registry,
        )
        self.generated = Counter(
            "npllm_generated_tokens",
            "Tokens generated, by kind of answer (chat, completion).",
            ["kind"],
            registry=self.registry,
        )
        self.queue_full = Counter(
            "npllm_queue_full",
            "Requests refused with 503 because every generation slot was taken.",
            registry=self.registry,
        )
        self.registry.register(StateCollector(service))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, f"{status // 100}xx").observe(seconds)

    def observe_answer(self, kind: str, answer: Any) -> None:
        """A finished answer (an Answer or a Completion): its tokens and decoding rate."""
        tokens = int(getattr(answer, "completion_tokens", 0) or 0)
        self.generated.labels(kind).inc(tokens)
        rate = float((getattr(answer, "timings", None) or {}).get("tokens_per_s", 0.0))
        if tokens and rate > 0:
            self.tokens_per_second.labels(kind).observe(rate)


class StateCollector(Collector):
    """What is read at scrape time: the queue, the adapters, and the database's rows."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def describe(self) -> list[Metric]:
        return []  # read at each scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        service = self.service
        waiting = GaugeMetricFamily("npllm_queue_waiting", "Requests waiting for the model.")
        waiting.add_metric([], service.queue.waiting)
        yield waiting
        running = GaugeMetricFamily("npllm_queue_running", "Requests being generated now.")
        running.add_metric([], service.queue.running)
        yield running
        served = GaugeMetricFamily(
            "npllm_adapters_served", "Adapters the daemon serves (one version each)."
        )
        served.add_metric([], len(service.awake.adapters.alias))
        yield served
        up = GaugeMetricFamily("npllm_database_up", "1 when the database answered this scrape.")
        try:
            rows = self._read(service.database.pool)
        except Exception as exc:  # the scrape still answers, saying the database is down
            log.warning("metrics: the database did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        feedback = CounterMetricFamily(
            "npllm_feedback_events",
            "Feedback events stored, by origin and kind.",
            labels=["origin", "kind"],
        )
        for origin, kind, count in rows["feedback"]:
            feedback.add_metric([origin, kind], count)
        yield feedback
        reward = GaugeMetricFamily(
            "npllm_reward_mean",
            "Mean integrated reward of rated answers, by the adapter and version that answered.",
            labels=["adapter", "version"],
        )
        rated = GaugeMetricFamily(
            "npllm_rated_answers",
            "Rated answers, by adapter and version.",
            labels=["adapter", "version"],
        )
        for adapter, version, mean, count in rows["reward"]:
            reward.add_metric([adapter, version], mean)
            rated.add_metric([adapter, version], count)
        yield reward
        yield rated
        cycles = CounterMetricFamily(
            "npllm_sleep_cycles", "Sleep cycles, by status.", labels=["status"]
        )
        seconds = CounterMetricFamily(
            "npllm_sleep_cycle_seconds",
            "Seconds the finished sleep cycles took, by status (÷ npllm_sleep_cycles_total: "
            "the mean).",
            labels=["status"],
        )
        for status, count, total in rows["cycles"]:
            cycles.add_metric([status], count)
            seconds.add_metric([status], total)
        yield cycles
        yield seconds
        size = GaugeMetricFamily("npllm_database_size_bytes", "Size of npllm's database.")
        size.add_metric([], rows["size"])
        yield size
        trials = dict(rows["canaries"])
        running = GaugeMetricFamily(
            "npllm_canaries_running", "Canary trials of new adapter versions running now."
        )
        running.add_metric([], trials.get("running", 0))
        yield running
        decided = CounterMetricFamily(
            "npllm_canary_decisions",
            "Canary trials decided, by outcome (promoted, rolled_back, superseded).",
            labels=["outcome"],
        )
        for outcome in ("promoted", "rolled_back", "superseded"):
            decided.add_metric([outcome], trials.get(outcome, 0))
        yield decided
        if service.alerts is not None:
            alerts = GaugeMetricFamily(
                "npllm_alerts_open", "Alert conditions that hold now, by kind.", labels=["kind"]
            )
            for kind, count in service.alerts.open_counts().items():
                alerts.add_metric([kind], count)
            yield alerts

    @staticmethod
    def _read(pool: Any) -> dict[str, Any]:
        with pool.connection(timeout=5) as conn:
            return {
                "feedback": conn.execute(_FEEDBACK).fetchall(),
                "reward": conn.execute(_REWARD).fetchall(),
                "cycles": conn.execute(_CYCLES).fetchall(),
                "size": conn.execute(_SIZE).fetchone()[0],
                "canaries": conn.execute(_CANARIES).fetchall(),
            }
