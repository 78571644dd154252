"""The daemon's side of canary trials (npllm/canary.py has the rule and the rows): start a
trial when a version is published on trial, serve both arms, decide on the watcher's turn
or a person's word, and restore running trials at start-up.

Everything that changes what is served happens on the model thread (through the hot swap
or the queue), between requests: a request never sees a trial half set up or torn down.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from npllm.awake import AwakePath
from npllm.canary import Canaries, Row, Trial, new_keys
from npllm.config import Settings
from npllm.errors import ConflictError, NotFoundError
from npllm.versions import Registry, Version
from services.hot_swap import HotSwap
from services.queue import GenerationQueue

log = logging.getLogger("npllm.canary")


def _now() -> datetime:
    return datetime.now(UTC)


class CanaryKeeper:
    """Runs the trials of the served adapters."""

    def __init__(
        self,
        settings: Settings,
        pool: Any,
        registry: Registry,
        awake: AwakePath,
        queue: GenerationQueue,
        hot_swap: Callable[[], HotSwap],
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.config = settings.canary
        self.radius = settings.modulator.scope_similarity
        self.rows = Canaries(pool, settings.canary)
        self.registry = registry
        self.awake = awake
        self.queue = queue
        self.hot_swap = hot_swap  # the Service's (built lazily)
        self.clock = clock
        self._lock = threading.RLock()  # one decision at a time (watcher, API)

    # ---- start -------------------------------------------------------------------------

    def control_for(
        self, name: str, canary: bool | None, sleep_cycle: int | None
    ) -> Version | None:
        """The version a new version of `name` is tried against, or None when it goes live
        at once: a sleep cycle's versions are tried (`canary` None), a hand publish only
        when `canary` is true; never with canary.share 0, nor for an adapter serving no
        version for this base yet."""
        wanted = canary if canary is not None else sleep_cycle is not None
        if not wanted or self.config.share <= 0:
            return None
        return self.awake.adapters.alias.get(name)

    def publish(
        self, version: Version, sleep_cycle: int | None, canary: bool | None
    ) -> dict[str, Any]:
        """Publish `version` through the hot swap (blocking), on trial when it should be.
        A trial running for the adapter ends ('superseded') when the switch happens."""
        control = self.control_for(version.adapter, canary, sleep_cycle)
        old = self.awake.trials.get(version.adapter)
        if control is None:
            return self.hot_swap().publish(
                "adapter", version, sleep_cycle=sleep_cycle,
                then=lambda: self._end(version.adapter, old, f"v{version.version} was published"),
            )  # fmt: skip
        taught = new_keys(self.registry.keys(version), self.registry.keys(control), self.radius)
        self.awake.adapters.hold(control)  # loaded beside the new version from the switch on

        def start() -> dict[str, Any]:
            row = self.rows.start(version.adapter, version.version, control.version,
                                  self.config.share, sleep_cycle)  # fmt: skip
            if old is not None and old.control.key != control.key:
                self.awake.adapters.release(old.control.key)
            self.awake.trials[version.adapter] = Trial(
                row.id, version.adapter, version, control, row.share, taught, self.radius
            )
            log.info(json.dumps({"event": "canary_started", "canary": row.id,
                                 "adapter": version.adapter, "candidate": version.version,
                                 "control": control.version, "share": row.share,
                                 "taught_keys": len(taught)}))  # fmt: skip
            return {"canary": {"id": row.id, "control": control.version, "share": row.share,
                               "deadline": row.deadline.isoformat()}}  # fmt: skip

        try:
            return self.hot_swap().publish("adapter", version, sleep_cycle=sleep_cycle, then=start)
        except Exception:  # refused: the control is what the adapter serves, alone
            trial = self.awake.trials.get(version.adapter)
            if trial is None or trial.control.key != control.key:
                self.awake.adapters.release(control.key)
            raise

    def _end(self, name: str, old: Trial | None, reason: str) -> dict[str, Any]:
        """On the model thread: a publish without a trial ends the adapter's running one."""
        if old is None:
            return {}
        self.rows.supersede(name, reason)
        self.awake.trials.pop(name, None)
        self.awake.adapters.release(old.control.key)
        return {"canary_superseded": old.id}

    # ---- decide ------------------------------------------------------------------------

    def check(self) -> list[dict[str, Any]]:
        """Decide every running trial that can be (the watcher's job); what was decided."""
        decided = []
        with self._lock:
            for row in self.rows.running():
                verdict = self.rows.judge(row, self.clock())
                if verdict.outcome == "running":
                    continue
                decided.append(self._decide(row, verdict.outcome, verdict.decided_by or "test",
                                            verdict.reason, verdict.stats))  # fmt: skip
        return decided

    def act(self, name: str, action: str) -> dict[str, Any]:
        """A person's decision: 'promote' or 'abort' (roll back) the running trial."""
        with self._lock:
            row = self.running(name)
            stats = self.rows.judge(row, self.clock()).stats
            if action == "promote":
                return self._decide(row, "promoted", "user", "promoted by hand", stats)
            return self._decide(row, "rolled_back", "user", "aborted by hand", stats)

    def running(self, name: str) -> Row:
        for row in self.rows.running():
            if row.adapter == name:
                return row
        raise NotFoundError(f"adapter {name!r} has no canary trial running", param="name")

    def _decide(
        self, row: Row, outcome: str, by: str, reason: str, stats: dict[str, Any]
    ) -> dict[str, Any]:
        with self._lock:
            trial = self.awake.trials.get(row.adapter)
            if trial is None or trial.id != row.id:
                # not served as a trial (its versions could not be loaded): record only
                self.rows.finish(row, outcome, by, reason, stats)
            elif outcome == "promoted":
                if not self.rows.finish(row, outcome, by, reason, stats):
                    raise ConflictError(f"canary {row.id} was decided meanwhile")
                self.queue.submit(lambda: self._stop_trial(trial), always=True).result()
            else:
                self.hot_swap().publish(
                    "adapter", trial.control, f"canary {row.id} rolled back: {reason}",
                    then=lambda: self._stop_trial(trial),
                )  # fmt: skip
                self.rows.finish(row, outcome, by, reason, stats)
        log.log(
            logging.WARNING if outcome == "rolled_back" else logging.INFO,
            json.dumps({"event": "canary_decided", "canary": row.id, "adapter": row.adapter,
                        "outcome": outcome, "by": by, "reason": reason, "stats": stats}),
        )  # fmt: skip
        served = row.control if outcome == "rolled_back" else row.candidate
        return {"id": row.id, "name": row.adapter, "status": outcome, "decided_by": by,
                "reason": reason, "stats": stats, "version": served}  # fmt: skip

    def _stop_trial(self, trial: Trial) -> dict[str, Any]:
        """On the model thread: serve one version again."""
        if self.awake.trials.get(trial.adapter) is trial:
            del self.awake.trials[trial.adapter]
        self.awake.adapters.release(trial.control.key)
        self.awake.cache.clear()
        return {}

    # ---- start-up ----------------------------------------------------------------------

    def restore(self) -> None:
        """After the adapters are loaded: serve the running trials whose two versions are
        (the others are ended, saying why)."""
        for row in self.rows.running():
            served = self.awake.adapters.alias.get(row.adapter)
            control = self.awake.adapters.held.get(f"{row.adapter}@v{row.control}")
            if served is None or served.version != row.candidate or control is None:
                self.rows.supersede(
                    row.adapter,
                    f"at start-up v{row.candidate} and v{row.control} were not both servable "
                    "for this base; the active version serves alone",
                )
                continue
            taught = new_keys(self.registry.keys(served), self.registry.keys(control), self.radius)
            self.awake.trials[row.adapter] = Trial(
                row.id, row.adapter, served, control, row.share, taught, self.radius
            )

    # ---- what is shown -----------------------------------------------------------------

    def summary(self) -> list[dict[str, Any]]:
        """The running trials with each arm's rated answers so far (for status)."""
        out = []
        for row in self.rows.running():
            stats = self.rows.judge(row, self.clock()).stats
            out.append({
                "id": row.id, "adapter": row.adapter, "candidate": row.candidate,
                "control": row.control, "share": row.share,
                "deadline": row.deadline.isoformat(), "candidate_arm": stats["candidate"],
                "control_arm": stats["control"],
            })  # fmt: skip
        return out


def held_at_start(pool: Any, settings: Settings, registry: Registry) -> list[Version]:
    """The running trials' controls, to load beside the active versions at start-up: only
    for trials whose candidate is the adapter's active version for this base (after a
    base swap the others end at `CanaryKeeper.restore`)."""
    held = []
    for row in Canaries(pool, settings.canary).running():
        current = registry.current(row.adapter)
        if current is None or current.version != row.candidate:
            continue
        try:
            held.append(registry.version(row.adapter, row.control))
        except NotFoundError:
            continue
    return held
