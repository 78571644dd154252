"""The quality gate a trained version passes before it is published.

A version is measured before and after training on two things (`Losses`): the
validation loss (the examples it was taught, or the held-out fifth of a large imported
dataset) and the loss on its **probe set** — earlier cycles' examples, kept with each
version (``probe.jsonl``, at most `PROBE_LIMIT`). `judge` passes it when

- the validation loss improved by ``training.gate_min_improvement`` (relative),
- the retention score, exp(−probe loss), dropped by at most
  ``training.retention_tolerance`` (no probe set yet: nothing to retain) — or, when it
  dropped by more, every earlier answer the previous version reproduced exactly (greedy,
  teacher-forced with the served penalties) is still reproduced (`forgotten` empty): a loss
  that moves on answers still given word for word is no forgetting, and is reported,
- it learned something: at least one of tonight's taught answers is served as taught
  (`Taught`, checked through the serving engine: consolidation/served.py) — those it
  does not reproduce are not counted learned and stay new, and
- it leaves the neighbours alone (`Locality`): of the night's neighbouring questions
  (other relations about the same subject, the topic's general questions), the share whose
  served greedy answer changed is at most ``training.max_changed_neighbours``.

A version that fails is kept as ``candidate`` with the reasons.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npllm.config import TrainingConfig

PROBE_LIMIT = 200  # examples kept per adapter for the retention probe
PROBE_FILE = "probe.jsonl"

Losses = tuple[float, float | None]  # (validation loss, probe loss | None: no probe set)
Chat = list[dict[str, str]]


@dataclass(frozen=True)
class Taught:
    """How many of tonight's taught answers (and of the rehearsed earlier ones) the version
    answers as taught, through the serving engine."""

    new: int
    new_right: int
    rehearsed: int
    rehearsed_right: int

    def summary(self) -> str:
        text = f"{self.new_right} of {self.new} new"
        if self.rehearsed:
            text += f", {self.rehearsed_right} of {self.rehearsed} rehearsed"
        return text + " served as taught"


@dataclass(frozen=True)
class Locality:
    """The night's neighbouring questions: how many, how many the version's scope takes
    (routed to it), those whose served greedy answer changed and routing cannot keep apart
    (`changed`), and those it changed and that are now left to the base (`excluded`: the
    scope learned from them, consolidation/cycle.py)."""

    questions: int
    routed: int
    changed: list[str]
    excluded: list[str] = field(default_factory=list)
    # Changed, as alike to a taught question as a question asked again, and made by rule:
    # no evidence either way, reported only.
    unclear: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        return len(self.changed) / self.questions if self.questions else 0.0

    def summary(self) -> str:
        return (f"{len(self.changed)} of {self.questions} neighbouring questions changed "
                f"({self.routed} in its scope, {len(self.excluded)} taken out of it, "
                f"{len(self.unclear)} too alike to a taught one to tell)")  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str]  # why it failed, each a sentence; empty when it passed
    before: Losses  # what it judged
    after: Losses
    retention_before: float | None  # exp(−probe loss); None without a probe set
    retention_after: float | None
    taught: Taught | None = None
    locality: Locality | None = None
    # The probe's questions the version no longer answers as the previous one did; None:
    # not checked (the retention score stayed within tolerance).
    forgotten: list[str] | None = None


def retention_fell(before: Losses, after: Losses, config: TrainingConfig) -> bool:
    """Did the retention score drop by more than ``training.retention_tolerance``?"""
    if before[1] is None or after[1] is None:
        return False
    return math.exp(-after[1]) < math.exp(-before[1]) - config.retention_tolerance


def judge(
    before: Losses,
    after: Losses,
    config: TrainingConfig,
    taught: Taught | None = None,
    locality: Locality | None = None,
    forgotten: list[str] | None = None,
) -> Verdict:
    """Does the version measured `after` (against `before`) pass the gate? `forgotten`: when
    the retention score fell (`retention_fell`), the probe questions whose answers the
    previous version reproduced and this one does not; None counts the fall alone."""
    improved = after[0] <= before[0] * (1 - config.gate_min_improvement)
    retention_before = None if before[1] is None else math.exp(-before[1])
    retention_after = None if after[1] is None else math.exp(-after[1])
    retained = not retention_fell(before, after, config) or forgotten == []
    reasons = []
    if not improved:
        reasons.append(
            f"validation loss {after[0]:.4f} is not {config.gate_min_improvement:.0%} "
            f"below {before[0]:.4f}"
        )
    if not retained:
        reason = (f"retention score fell from {retention_before:.3f} to {retention_after:.3f} "
                  f"(tolerance {config.retention_tolerance})")  # fmt: skip
        if forgotten:
            shown = "; ".join(repr(q) for q in forgotten[:3])
            reason += f" and it no longer gives {len(forgotten)} earlier answer(s), e.g. {shown}"
        reasons.append(reason)
    if taught is not None and taught.new and not taught.new_right:
        reasons.append(f"it learned none of tonight's {taught.new} taught answers "
                       "(not one is served as taught)")  # fmt: skip
    if locality is not None and locality.share > config.max_changed_neighbours:
        shown = "; ".join(repr(q) for q in locality.changed[:3])
        reasons.append(
            f"it changed the answers to {len(locality.changed)} of {locality.questions} "
            f"neighbouring questions ({locality.share:.0%} > training.max_changed_neighbours "
            f"= {config.max_changed_neighbours:.0%}), e.g. {shown}"
        )
    return Verdict(not reasons, reasons, before, after, retention_before, retention_after,
                   taught, locality, forgotten)  # fmt: skip


def measure(
    model: Any, tokenizer: Any, validation: list[Chat], probe: list[Chat], prompt: str
) -> Losses:
    """The losses the gate compares, of `model` (the base, or it with an adapter on it)."""
    from consolidation.trainer import chat_loss

    probe_loss = chat_loss(model, tokenizer, probe, prompt) if probe else None
    return chat_loss(model, tokenizer, validation, prompt), probe_loss


Probe = list[tuple[Chat, int | None]]  # an example, and the interaction it was taught from


def read_probe(directory: Path | None) -> Probe:
    """The probe set stored with a version (its directory; None: no version yet): each
    example with the interaction it was taught from (None: a dataset's, or from before)."""
    path = None if directory is None else directory / PROBE_FILE
    if path is None or not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [(row["messages"], row.get("interaction_id")) for row in rows]


def write_probe(directory: Path, examples: Probe) -> None:
    """Store the newest `PROBE_LIMIT` of `examples` as the version's probe set."""
    lines = (json.dumps({"messages": m, "interaction_id": i}) + "\n"
             for m, i in examples[-PROBE_LIMIT:])  # fmt: skip
    (directory / PROBE_FILE).write_text("".join(lines))
