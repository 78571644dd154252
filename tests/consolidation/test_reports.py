"""The night's report, typed (consolidation/reports.py): read from the metrics a cycle
stores, printed as `npllm sleep` prints it."""

from __future__ import annotations

from consolidation.reports import LessonReport, NightReport

METRICS = {
    "cycle": 12,
    "adapters": {
        "ops-runbooks": {
            "samples": 2, "rehearsed": 3, "steps": 24, "steps_done": 18,
            "stopped": "every taught answer reproduced",
            "validation_loss": {"before": 2.5, "after": 0.25},
            "verdict": "published", "merged": {"retired": "ops-misc", "replay_rows_moved": 4},
        },
        "debugging-python": {"samples": 1, "verdict": "skipped: dataset 'x' is gone"},
    },
    "topics": {"ops-runbooks": "joined by routing"},
    "skipped": {"samples": "1 sample(s) not learned tonight"},
    "modulator": {"decisions": 40, "current": {"value": 0.1, "dr": 0.05},
                  "trained": {"value": 0.3, "dr": 0.4}, "verdict": "published"},
    "forgetting": {"retired": {"old-topic": "unused for 30 days"}, "memories_decayed": 3},
    "base_unchanged": True,
}  # fmt: skip


def test_a_nights_metrics_read_typed_and_print_one_line_each() -> None:
    report = NightReport.from_metrics(METRICS)
    ops = report.adapters["ops-runbooks"]
    assert (ops.samples, ops.rehearsed, ops.steps, ops.steps_done) == (2, 3, 24, 18)
    assert ops.validation_loss is not None and ops.validation_loss.after == 0.25
    assert ops.merged == "ops-misc"
    assert report.adapters["debugging-python"].validation_loss is None
    assert report.modulator is not None and report.modulator.method == "ppo"
    assert report.forgetting.memories_decayed == 3
    assert report.lines() == [
        "ops-runbooks: 2 sample(s) + 3 rehearsed [joined by routing], 18 of 24 steps (every "
        "taught answer reproduced), validation loss 2.5000 -> 0.2500: published",
        "debugging-python: skipped: dataset 'x' is gone",
        "samples: 1 sample(s) not learned tonight",
        "modulator: 40 rated decisions, doubly robust mean reward +0.050 -> +0.400: published",
        "old-topic: retired from serving, unused for 30 days",
        "3 exchange memories unused for memory.decay_days left retrieval (their rows stay)",
        "cycle 12 succeeded; base weights unchanged: True",
    ]


def test_a_report_missing_figures_says_so_instead_of_question_marks() -> None:
    """A report written before steps were recorded (or by an interrupted trainer) prints
    what it has; an empty night says there was nothing to learn."""
    partial = LessonReport.from_json({"samples": 1, "validation_loss": {"before": 1, "after": 1},
                                      "verdict": "rejected: no better"})  # fmt: skip
    assert partial.line("x") == (
        "x: 1 sample(s), steps not recorded, validation loss 1.0000 -> 1.0000: rejected: no better"
    )
    assert "?" not in partial.line("x")
    empty = NightReport.from_metrics({"cycle": 3})
    assert empty.lines("failed") == [
        "nothing to learn: no corrected or well-rated answers in the replay buffer",
        "cycle 3 failed; base weights unchanged: None",
    ]
