"""The quality gate (consolidation/gate.py): improvement and retention, with their reasons."""

from __future__ import annotations

import math
from pathlib import Path

from consolidation.gate import PROBE_LIMIT, Locality, Taught, judge, read_probe, write_probe
from npllm.config import TrainingConfig

CONFIG = TrainingConfig(gate_min_improvement=0.1, retention_tolerance=0.05)


def test_a_version_that_improves_and_retains_passes() -> None:
    verdict = judge((2.0, 1.0), (1.5, 1.01), CONFIG)
    assert verdict.passed and verdict.reasons == []
    assert verdict.before == (2.0, 1.0) and verdict.after == (1.5, 1.01)
    assert verdict.retention_before == math.exp(-1.0)
    assert verdict.retention_after == math.exp(-1.01)


def test_too_small_an_improvement_fails_with_the_reason() -> None:
    verdict = judge((2.0, None), (1.9, None), CONFIG)
    assert not verdict.passed
    assert verdict.reasons == ["validation loss 1.9000 is not 10% below 2.0000"]
    assert judge((2.0, None), (1.79, None), CONFIG).passed


def test_a_drop_in_retention_beyond_the_tolerance_fails_with_the_reason() -> None:
    verdict = judge((2.0, 0.5), (1.0, 1.0), CONFIG)
    before, after = math.exp(-0.5), math.exp(-1.0)
    assert not verdict.passed
    assert verdict.reasons == [
        f"retention score fell from {before:.3f} to {after:.3f} (tolerance 0.05)"
    ]
    both = judge((2.0, 0.5), (2.0, 1.0), CONFIG)
    assert both.reasons == [
        "validation loss 2.0000 is not 10% below 2.0000",
        f"retention score fell from {before:.3f} to {after:.3f} (tolerance 0.05)",
    ]


def test_without_a_probe_set_only_the_improvement_counts() -> None:
    verdict = judge((2.0, None), (1.0, None), CONFIG)
    assert verdict.passed
    assert verdict.retention_before is None and verdict.retention_after is None
    # A new adapter has no probe before training: nothing to retain yet.
    assert judge((2.0, None), (1.0, 5.0), CONFIG).passed


def test_the_probe_set_keeps_the_newest_examples(tmp_path: Path) -> None:
    assert read_probe(None) == [] and read_probe(tmp_path) == []
    examples = [([{"role": "user", "content": f"q{k}"}], k or None) for k in range(PROBE_LIMIT + 3)]
    write_probe(tmp_path, examples)  # each with the interaction it was taught from
    assert read_probe(tmp_path) == examples[-PROBE_LIMIT:]
    # A probe file from before interaction ids: its examples, from no known interaction.
    (tmp_path / "probe.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    assert read_probe(tmp_path) == [([{"role": "user", "content": "q"}], None)]


def test_a_retention_drop_with_every_earlier_answer_still_given_passes() -> None:
    """The retention score is a screen: when it falls past the tolerance, what decides is
    whether an earlier answer the previous version gave word for word is no longer given."""
    before, after = math.exp(-0.5), math.exp(-1.0)
    assert judge((2.0, 0.5), (1.0, 1.0), CONFIG, forgotten=[]).passed
    verdict = judge((2.0, 0.5), (1.0, 1.0), CONFIG, forgotten=["Who owns Sorrel?"])
    assert not verdict.passed and verdict.forgotten == ["Who owns Sorrel?"]
    assert verdict.reasons == [
        f"retention score fell from {before:.3f} to {after:.3f} (tolerance 0.05) and it no "
        "longer gives 1 earlier answer(s), e.g. 'Who owns Sorrel?'"
    ]
    # Within the tolerance nothing else is asked.
    assert judge((2.0, 1.0), (1.0, 1.01), CONFIG, forgotten=["q"]).passed


def test_a_version_that_changes_more_neighbours_than_allowed_is_refused_with_them() -> None:
    config = TrainingConfig(gate_min_improvement=0.1, max_changed_neighbours=0.05)
    changed = Locality(10, 4, ["What port does the relay use by default?"])
    verdict = judge((2.0, None), (1.0, None), config, locality=changed)
    assert not verdict.passed
    assert verdict.reasons == [
        "it changed the answers to 1 of 10 neighbouring questions (10% > "
        "training.max_changed_neighbours = 5%), e.g. 'What port does the relay use by "
        "default?'"
    ]
    two = Locality(10, 4, ["a?", "b?"], excluded=["c?"], unclear=["d?"])
    assert not judge((2.0, None), (1.0, None), config, locality=two).passed
    kept = Locality(10, 4, [], excluded=["c?"], unclear=["d?"])  # taken out of scope: fine
    assert judge((2.0, None), (1.0, None), config, locality=kept).passed
    assert kept.summary() == ("0 of 10 neighbouring questions changed (4 in its scope, 1 taken "
                              "out of it, 1 too alike to a taught one to tell)")  # fmt: skip


def test_a_version_that_learned_none_of_tonights_answers_is_refused() -> None:
    none = Taught(new=2, new_right=0, rehearsed=3, rehearsed_right=3)
    verdict = judge((2.0, None), (1.0, None), CONFIG, taught=none)
    assert verdict.reasons == ["it learned none of tonight's 2 taught answers (not one is served "
                               "as taught)"]  # fmt: skip
    assert judge((2.0, None), (1.0, None), CONFIG, taught=Taught(2, 1, 3, 2)).passed
