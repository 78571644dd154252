"""The hot swap: one way to publish a version of any kind — an adapter, the cerebellum's
draft model, the modulator — while the daemon answers.

    stage      off the model thread: build and check what can be, beside the served state
    prepare    on the model thread, between requests: load beside the served one, smoke test
    checks     the sleep cycle that sent it is still alive; the store's cap (in activate)
    activate   the store flips the database in one transaction (the old version retires)
    switch     the served state points at the new version; cached answers are dropped

Everything that can refuse comes before the flip: a refused version stays ``candidate``
with the reason (``not published: ...``), nothing served changes, and the caller gets an
AdapterError naming the version. Each kind says how it stages, prepares and switches in
a small ``Slot``; the sequence above is written once, in `HotSwap.publish`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from npllm.adapters import MODULATOR
from npllm.awake import AwakePath
from npllm.errors import AdapterError
from npllm.modulator import Modulator, weights
from npllm.versions import Registry, Version
from services.queue import GenerationQueue


class Slot(Protocol):
    """How one kind of version is served (see the module docstring for the order)."""

    store: Registry

    def label(self, version: Version) -> str:
        """How messages name it: 'adapter zorblax@v2', 'cerebellum v3', 'modulator v1'."""
        ...

    def stage(self, version: Version | None) -> Any:
        """Off the model thread; what `prepare` and `switch` need (raise to refuse)."""
        ...

    def prepare(self, version: Version | None, staged: Any) -> dict[str, Any]:
        """On the model thread; raise to refuse. Extra fields for the answer."""
        ...

    def discard(self, version: Version | None, staged: Any) -> None:
        """Undo `prepare` for a refused version."""
        ...

    def switch(self, version: Version | None, staged: Any) -> int | None:
        """Serve `version` (the store has activated it); the version number it replaced."""
        ...

    def answer(
        self, version: Version | None, old: int | None, ms: float, extra: dict[str, Any]
    ) -> dict[str, Any]:
        """What the publish (or rollback) route answers."""
        ...


class HotSwap:
    """Publishes versions of every kind through their slots."""

    def __init__(
        self,
        awake: AwakePath,
        queue: GenerationQueue,
        slots: dict[str, Slot],
        cycle_alive: Callable[[int], bool],
    ) -> None:
        self.awake = awake
        self.queue = queue
        self.slots = slots
        self.cycle_alive = cycle_alive

    def publish(
        self,
        kind: str,
        version: Version | None,
        reason: str = "replaced by a newer version",
        sleep_cycle: int | None = None,
        then: Callable[[], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Make `version` the served one of its kind (blocking: call it off the event loop).
        `version` None: none of that kind (only the modulator: back to untrained routing).
        A version from a sleep cycle is switched to only while that cycle's worker lives.
        `then` runs on the model thread right after the switch, before any other request
        (a canary trial starts there); what it returns joins the answer."""
        slot = self.slots[kind]
        started = time.perf_counter()
        try:
            staged = slot.stage(version)
        except Exception as exc:
            raise self._refuse(slot, version, exc) from exc

        def flip() -> tuple[int | None, dict[str, Any]]:
            try:
                extra = slot.prepare(version, staged)
                self._check_cycle(sleep_cycle)
                if version is None:
                    slot.store.deactivate(MODULATOR, reason)
                else:  # checks the cap, then flips the database (one transaction)
                    slot.store.activate(version, reason, sleep_cycle=sleep_cycle)
            except Exception as exc:
                slot.discard(version, staged)
                raise self._refuse(slot, version, exc) from exc
            old = slot.switch(version, staged)
            if then is not None:
                extra = {**extra, **then()}
            self.awake.cache.clear()  # cached answers report what served them
            return old, extra

        old, extra = self.queue.submit(flip, always=True).result()
        return slot.answer(version, old, (time.perf_counter() - started) * 1000, extra)

    def _check_cycle(self, sleep_cycle: int | None) -> None:
        if sleep_cycle is not None and not self.cycle_alive(sleep_cycle):
            raise AdapterError(
                f"its sleep cycle {sleep_cycle} ended before the switch (worker stopped "
                "or killed); the active version stays"
            )

    @staticmethod
    def _refuse(slot: Slot, version: Version | None, exc: Exception) -> AdapterError:
        """Keep the version as a candidate saying why; the error to raise."""
        if version is None:
            return AdapterError(f"the untrained modulator was not restored: {exc}")
        slot.store.refuse(version, f"not published: {exc}", {})
        return AdapterError(f"{slot.label(version)} was not published: {exc}")


def _swap_answer(
    version: Version | None, old: int | None, ms: float, extra: dict[str, Any]
) -> dict[str, Any]:
    """An adapter's or the cerebellum's answer: the version now served and the replaced."""
    assert version is not None  # only the modulator can publish "none"
    return {
        "name": version.adapter,
        "version": version.version,
        "path": str(version.path),
        "replaced": old,
        "swap_ms": round(ms, 1),
        **extra,
    }


class AdapterSlot:
    """LoRA adapters: the engine loads them beside the served ones (npllm/engines/)."""

    def __init__(self, awake: AwakePath, store: Registry) -> None:
        self.awake, self.store = awake, store

    def label(self, version: Version) -> str:
        return f"adapter {version.key}"

    def stage(self, version: Version | None) -> None:
        assert version is not None  # an adapter always publishes a version
        self.awake.adapters.stage(version)  # llama.cpp: the next instance, parity-checked

    def prepare(self, version: Version | None, staged: Any) -> dict[str, Any]:
        assert version is not None
        self.awake.adapters.load(version)
        return self.awake.adapters.smoke(version)

    def discard(self, version: Version | None, staged: Any) -> None:
        assert version is not None
        self.awake.adapters.unload(version)

    def switch(self, version: Version | None, staged: Any) -> int | None:
        assert version is not None
        old = self.awake.adapters.activate(version)
        self.awake.modulator.set_adapters(self.store.scopes(self.awake.settings.modulator))
        return None if old is None else old.version

    answer = staticmethod(_swap_answer)


class CerebellumSlot:
    """The cerebellum: its version merged into a private draft model, built off-thread."""

    def __init__(self, awake: AwakePath, store: Registry) -> None:
        self.awake, self.store = awake, store

    def label(self, version: Version) -> str:
        return f"cerebellum v{version.version}"

    def stage(self, version: Version | None) -> Any:
        assert version is not None and self.awake.cerebellum is not None
        return self.awake.cerebellum.build(version)  # a Draft

    def prepare(self, version: Version | None, staged: Any) -> dict[str, Any]:
        return {"build_ms": staged.load_ms}

    def discard(self, version: Version | None, staged: Any) -> None:
        pass  # the draft was never served; dropping it frees it

    def switch(self, version: Version | None, staged: Any) -> int | None:
        assert self.awake.cerebellum is not None
        old = self.awake.cerebellum.activate(staged)
        return None if old is None else old.version

    answer = staticmethod(_swap_answer)


class ModulatorSlot:
    """The modulator: a fresh network loaded off-thread, routing to the same adapters."""

    def __init__(self, awake: AwakePath, store: Registry) -> None:
        self.awake, self.store = awake, store

    def label(self, version: Version) -> str:
        return f"modulator v{version.version}"

    def stage(self, version: Version | None) -> Modulator:
        fresh = Modulator(self.awake.settings.modulator)
        if version is not None:
            fresh.load(weights(version))
        return fresh

    def prepare(self, version: Version | None, staged: Any) -> dict[str, Any]:
        return {}

    def discard(self, version: Version | None, staged: Any) -> None:
        pass

    def switch(self, version: Version | None, staged: Any) -> int | None:
        staged.set_adapters(self.awake.modulator.routable())  # the same adapters
        old = self.awake.modulator_version
        self.awake.modulator = staged
        self.awake.modulator_version = None if version is None else version.version
        return old

    def answer(
        self, version: Version | None, old: int | None, ms: float, extra: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "version": None if version is None else version.version,
            "replaced": old,
            "swap_ms": round(ms, 1),
        }
