"""The night's report, typed: what a sleep cycle's metrics say (as ``run_cycle`` returns
them and ``npllm.sleep_cycles.metrics`` stores them, JSON), read once into dataclasses so
that what prints or decides on a night reads attributes, not string keys with fallbacks.

The metrics stay JSON on disk and in the database (the dashboard, alerts and the benches
read them there); :meth:`NightReport.from_metrics` is the one reader. A figure the night
did not produce (an adapter skipped before training, a modulator not trained) is ``None``
here, and says so when printed, rather than ``?``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Loss:
    before: float
    after: float


@dataclass(frozen=True)
class LessonReport:
    """One adapter's (or the cerebellum's) night: how much it learned from, how training
    went, and the verdict (published, rejected: why, kept as candidate: why, skipped: why)."""

    verdict: str
    samples: int = 0
    rehearsed: int = 0
    steps: int | None = None
    steps_done: int | None = None
    stopped: str = ""
    validation_loss: Loss | None = None
    merged: str | None = None  # the adapter this version absorbed (consolidation/merging.py)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LessonReport:
        loss = d.get("validation_loss")
        merged = d.get("merged")
        return cls(
            verdict=str(d.get("verdict", "not finished")),
            samples=int(d.get("samples") or 0),
            rehearsed=int(d.get("rehearsed") or 0),
            steps=None if d.get("steps") is None else int(d["steps"]),
            steps_done=None if d.get("steps_done") is None else int(d["steps_done"]),
            stopped=str(d.get("stopped") or ""),
            validation_loss=None if not loss else Loss(float(loss["before"]), float(loss["after"])),
            merged=merged.get("retired") if isinstance(merged, dict) else None,
        )

    def line(self, name: str, why: str | None = None) -> str:
        """The summary line `npllm sleep` and the worker's log print for it."""
        if self.validation_loss is None:
            return f"{name}: {self.verdict}"
        rehearsed = f" + {self.rehearsed} rehearsed" if self.rehearsed else ""
        topic = f" [{why}]" if why else ""
        if self.steps_done is None:
            steps = "steps not recorded"
        else:
            of = f" of {self.steps}" if self.steps is not None else ""
            stopped = f" ({self.stopped})" if self.stopped else ""
            steps = f"{self.steps_done}{of} steps{stopped}"
        loss = self.validation_loss
        return (
            f"{name}: {self.samples} sample(s){rehearsed}{topic}, {steps}, validation loss "
            f"{loss.before:.4f} -> {loss.after:.4f}: {self.verdict}"
        )


@dataclass(frozen=True)
class ModulatorReport:
    """The modulator's night: how many rated decisions it had, the off-policy estimates of
    the current and the trained modulator (doubly robust for PPO, IPS for supervised), and
    the verdict."""

    verdict: str
    decisions: int | None = None
    method: str | None = None
    current: float | None = None
    trained: float | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModulatorReport:
        trained = d.get("trained") or {}
        current = d.get("current") or {}
        key = "dr" if "dr" in trained else "value"
        return cls(
            verdict=str(d.get("verdict", "not finished")),
            decisions=None if d.get("decisions") is None else int(d["decisions"]),
            method="ppo" if key == "dr" else ("supervised" if trained else None),
            current=None if key not in current else float(current[key]),
            trained=None if key not in trained else float(trained[key]),
        )

    def line(self) -> str:
        estimate = ""
        if self.current is not None and self.trained is not None:
            what = "doubly robust" if self.method == "ppo" else "estimated"
            estimate = f", {what} mean reward {self.current:+.3f} -> {self.trained:+.3f}"
        decisions = "not trained" if self.decisions is None else f"{self.decisions} rated decisions"
        return f"modulator: {decisions}{estimate}: {self.verdict}"


@dataclass(frozen=True)
class ForgettingReport:
    """The night's last step (consolidation/forgetting.py)."""

    retired: dict[str, str] = field(default_factory=dict)  # adapter -> why (or why not)
    memories_decayed: int = 0
    error: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> ForgettingReport:
        d = d or {}
        return cls(dict(d.get("retired") or {}), int(d.get("memories_decayed") or 0),
                   d.get("error"))  # fmt: skip


@dataclass(frozen=True)
class NightReport:
    """A sleep cycle's metrics, typed."""

    cycle: int | None
    adapters: dict[str, LessonReport]
    cerebellum: LessonReport | None = None
    modulator: ModulatorReport | None = None
    topics: dict[str, str] = field(default_factory=dict)  # adapter -> why it learned tonight
    skipped: dict[str, str] = field(default_factory=dict)  # what was not learned, why
    forgetting: ForgettingReport = field(default_factory=ForgettingReport)
    base_unchanged: bool | None = None
    resumed_from: int | None = None

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> NightReport:
        cerebellum = metrics.get("cerebellum")
        modulator = metrics.get("modulator")
        adapters = metrics.get("adapters") or {}
        return cls(
            cycle=metrics.get("cycle"),
            adapters={n: LessonReport.from_json(r) for n, r in adapters.items()},
            cerebellum=LessonReport.from_json(cerebellum) if cerebellum else None,
            modulator=ModulatorReport.from_json(modulator) if modulator else None,
            topics=dict(metrics.get("topics") or {}),
            skipped=dict(metrics.get("skipped") or {}),
            forgetting=ForgettingReport.from_json(metrics.get("forgetting")),
            base_unchanged=metrics.get("base_unchanged"),
            resumed_from=metrics.get("resumed_from"),
        )  # fmt: skip

    def lines(self, status: str = "succeeded") -> list[str]:
        """What the cycle did, one line per adapter (the cerebellum, the modulator, what it
        retired and let go), then its outcome."""
        out = []
        if not self.adapters:
            out.append("nothing to learn: no corrected or well-rated answers in the replay buffer")
        for name, report in self.adapters.items():
            out.append(report.line(name, self.topics.get(name)))
        if self.cerebellum is not None:
            out.append(self.cerebellum.line("cerebellum"))
        out += [f"{name}: {why}" for name, why in self.skipped.items()]
        if self.modulator is not None:
            out.append(self.modulator.line())
        forgot = self.forgetting
        out += [f"{name}: retired from serving, {why}" for name, why in forgot.retired.items()]
        if forgot.memories_decayed:
            out.append(
                f"{forgot.memories_decayed} exchange memories unused for memory.decay_days left "
                "retrieval (their rows stay)"
            )
        if forgot.error:
            out.append(f"forgetting did not run: {forgot.error}")
        out.append(f"cycle {self.cycle} {status}; base weights unchanged: {self.base_unchanged}")
        return out
