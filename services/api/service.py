"""The Service: the daemon's live objects and what the routes ask of them, hot swaps
included. Its blocking methods run in a worker thread or, through the queue, on the model
thread; its async ones on the event loop, which they never block."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import npllm
from consolidation import datasets
from consolidation.bookkeeping import cycle_running, recent_cycles
from npllm import modulator, replay
from npllm.adapters import CEREBELLUM, MODULATOR
from npllm.awake import Answer, AwakePath
from npllm.cerebellum import Cerebellum
from npllm.completion import Completion, complete
from npllm.config import Settings
from npllm.db import Database, ServerVersions
from npllm.embeddings import DATABASE_DIM
from npllm.errors import ConflictError, NotFoundError, QueueFull, RequestError
from npllm.feedback import Result
from npllm.generation import GenerationParams
from npllm.memory import Recalled
from npllm.model_card import ModelCard, model_card
from npllm.versions import Registry, Version
from npllm.weights import resolve
from services.alerts import Alerts
from services.api.guard import LoginTokens
from services.auth import KeyFile
from services.canaries import CanaryKeeper
from services.feedback_writer import FeedbackWriter
from services.hot_swap import AdapterSlot, CerebellumSlot, HotSwap, ModulatorSlot, Slot
from services.metrics import Metrics
from services.queue import GenerationQueue
from services.sleep import Sleeper
from services.watch import Watcher

T = TypeVar("T")


class Cancel(threading.Event):
    """Stops one answer at its next token; `by_user` when its user asked for it
    (POST /v1/chat/completions/{id}/cancel), not a client that went away."""

    by_user = False


# Inputs one embeddings request may carry (each is cut to the embedder's window).
MAX_EMBED_INPUTS = 256


@dataclass
class Embedded:
    """The embeddings of one request's inputs."""

    vectors: np.ndarray  # (inputs, dim) float32, rows of unit length
    tokens: int  # tokens embedded, over all inputs
    seconds: float


@dataclass
class Service:
    """What the routes need: config, the awake path, the queue, and facts for /v1/status."""

    settings: Settings
    database: Database
    awake: AwakePath
    queue: GenerationQueue
    versions: ServerVersions
    feedback_writer: FeedbackWriter
    registry: Registry
    sleeper: Sleeper
    # The cerebellum's versions (None with cerebellum.role = off).
    cerebellum_registry: Registry | None = None
    # Why the sleep cycle cannot train for this base (None: it can); see llm.untrainable_reason.
    untrainable: str | None = None
    # The TCP listener's key (None: no TCP port) and the browser's one-time login links.
    key_file: KeyFile | None = None
    logins: LoginTokens = field(default_factory=LoginTokens)
    # The daemon's periodic jobs (services/watch.py), set once the service is built.
    watcher: Watcher | None = None
    started_at: float = field(default_factory=time.time)
    in_flight: dict[str, Cancel] = field(default_factory=dict)
    # The alert checks (services/alerts.py; None: not checked in this process).
    alerts: Alerts | None = None

    def stop_answer(self, response_id: str) -> None:
        """Stop the answer `response_id` at its next token, as its user asked: it ends with
        finish_reason "cancelled" and its interaction id, and is not taken as abandoned."""
        cancel = self.in_flight.get(response_id)
        if cancel is None:
            raise NotFoundError(
                f"no answer in progress with id {response_id!r} (it may have finished)",
                param="id",
            )
        cancel.by_user = True
        cancel.set()

    def cancel_all(self) -> None:
        """At shutdown: stop every running answer at its next token."""
        for event in self.in_flight.values():
            event.set()

    def delete_adapter(self, name: str) -> dict[str, Any]:
        """On the model thread: delete adapter `name` (rows and files), then stop serving
        and routing to it. Refused while a sleep cycle runs (it may be training it)."""
        pool = self.database.pool
        running = [c for c in recent_cycles(pool) if c["status"] == "running"]
        if running:
            raise ConflictError(
                f"sleep cycle {running[0]['id']} is running and may be training {name!r}; "
                "delete it after the cycle ends (`npllm sleep --status`)"
            )
        versions = self.registry.delete(name)  # its canary rows go with it
        self.awake.trials.pop(name, None)
        served = self.awake.adapters.remove(name)
        self.awake.modulator.set_adapters({v.adapter: c for v, c in self.registry.active()})
        self.awake.cache.clear()
        return {"name": name, "deleted": True, "versions": versions, "was_served": served}

    def retire_adapter(
        self, name: str, reason: str, sleep_cycle: int | None, details: dict[str, Any]
    ) -> dict[str, Any]:
        """On the model thread: retire adapter `name` from serving (its versions kept; a
        `retired` row in npllm.adapter_population says `reason`), then stop serving and
        routing to it. Refused during its canary trial, and for a sleep cycle that ended."""
        if name in self.awake.trials:
            raise ConflictError(
                f"adapter {name!r} is on a canary trial; decide it first "
                f"(`npllm adapter canary {name}`)"
            )
        if sleep_cycle is not None and not cycle_running(self.database.pool, sleep_cycle):
            raise ConflictError(f"sleep cycle {sleep_cycle} ended; {name!r} stays served")
        retired = self.registry.retire(name, reason, sleep_cycle=sleep_cycle, details=details)
        served = self.awake.adapters.remove(name)
        self.awake.modulator.set_adapters(self.registry.scopes(self.settings.modulator))
        self.awake.cache.clear()
        return {"name": name, "retired": True, "version": retired.version,
                "was_served": served, "reason": reason}  # fmt: skip

    @functools.cached_property
    def metrics(self) -> Metrics:
        """What GET /metrics exposes (services/metrics.py)."""
        return Metrics(self)

    @functools.cached_property
    def canaries(self) -> CanaryKeeper:
        """Canary trials of new adapter versions (services/canaries.py)."""
        return CanaryKeeper(
            self.settings, self.database.pool, self.registry, self.awake, self.queue,
            lambda: self.hot_swap,
        )  # fmt: skip

    @functools.cached_property
    def hot_swap(self) -> HotSwap:
        """The one publish path (services/hot_swap.py), with a slot per kind served."""
        slots: dict[str, Slot] = {
            "adapter": AdapterSlot(self.awake, self.registry),
            "modulator": ModulatorSlot(self.awake, self.modulator_store()),
        }
        if self.cerebellum_registry is not None and self.awake.cerebellum is not None:
            slots["cerebellum"] = CerebellumSlot(self.awake, self.cerebellum_registry)
        return HotSwap(
            self.awake, self.queue, slots, lambda cycle: cycle_running(self.database.pool, cycle)
        )

    def publish_modulator(
        self, version: int | None, sleep_cycle: int | None, reason: str | None = None
    ) -> dict[str, Any]:
        """Route with trained modulator `version` (None: the untrained one) from the next
        request on, keeping the adapters it routes to."""
        store = self.modulator_store()
        stored = None if version is None else _modulator_version(store, version)
        if reason is None:
            reason = "replaced by a newer version"
        return self.hot_swap.publish("modulator", stored, reason, sleep_cycle)

    # ---- what the routes ask (one method per route that does more than one call) ---------

    def chat(
        self,
        response_id: str,
        messages: list[dict[str, str]],
        params: GenerationParams,
        adapters: list[str] | None,
        emit: Callable[..., None],
        cancel: Cancel,
        stream: bool,
        memory: bool = True,
    ) -> asyncio.Future[Answer]:
        """Queue one answer (QueueFull when every slot is taken); `emit(kind, text)` reports
        "start" (the prompt is assembled), "text" (streamed pieces) and "done" from the
        model thread."""

        def work() -> Answer:
            try:
                self.sleeper.wait_paused()  # a paused worker's cores are free first
                return self.awake.answer(
                    messages,
                    params,
                    on_text=(lambda t: emit("text", t)) if stream else None,
                    cancel=cancel,
                    on_start=lambda: emit("start"),
                    adapters=adapters,
                    memory=memory,
                )
            finally:
                emit("done")

        return self.submit(response_id, work, cancel)

    def complete(
        self,
        response_id: str,
        prompt: str,
        suffix: str | None,
        params: GenerationParams,
        adapters: list[str] | None,
        emit: Callable[..., None],
        cancel: Cancel,
        stream: bool,
    ) -> asyncio.Future[Completion]:
        """Queue one raw completion (npllm/completion.py), reporting as `chat` does."""

        def work() -> Completion:
            try:
                self.sleeper.wait_paused()
                return complete(
                    self.awake,
                    prompt,
                    suffix,
                    params,
                    on_text=(lambda t: emit("text", t)) if stream else None,
                    cancel=cancel,
                    adapters=adapters,
                    on_start=lambda: emit("start"),
                )
            finally:
                emit("done")

        return self.submit(response_id, work, cancel)

    def submit(self, response_id: str, work: Callable[[], T], cancel: Cancel) -> asyncio.Future[T]:
        """Run `work` on the model thread (QueueFull when every slot is taken), known as
        `response_id` to cancel routes and shutdown while it runs."""
        self.in_flight[response_id] = cancel
        self.sleeper.on_request()  # wakes a sleeping daemon: training pauses
        try:
            future = asyncio.wrap_future(self.queue.submit(work))
        except QueueFull:
            self.in_flight.pop(response_id, None)
            self.sleeper.on_request_done()
            raise
        future.add_done_callback(lambda _: self.sleeper.on_request_done())
        return future

    async def status(self) -> dict[str, Any]:
        # The latest cycle as the database records it: the daemon is awake once it ended.
        self.sleeper.observe(await asyncio.to_thread(recent_cycles, self.database.pool, 1))
        return await asyncio.to_thread(self._status)

    def _status(self) -> dict[str, Any]:
        s, awake = self.settings, self.awake
        return {
            "status": "ok",
            "version": npllm.__version__,
            "state": self.sleeper.state,
            "uptime_s": round(time.time() - self.started_at, 1),
            "base_model": awake.engine.model_id,
            "engine": awake.engine.info(),
            "training": {"trainable": self.untrainable is None, "reason": self.untrainable},
            "alerts": [] if self.alerts is None else self.alerts.open_alerts(),
            "embedder": awake.embedder.model_id,
            "database": {
                "url": self.database.url,
                "embedded": self.database.embedded is not None,
                "postgresql": self.versions.postgresql,
                "pgvector": self.versions.pgvector,
            },
            "counts": awake.status_counts(),
            "replay": replay.tier_counts(self.database.pool),
            "adapters": {"served": self.served(), "stale": self.registry.stale()},
            "canaries": self.canaries.summary(),
            "cerebellum": (
                {"role": "off"} if awake.cerebellum is None else awake.cerebellum.status()
            ),
            "queue": {
                "size": s.server.queue_size,
                "running": self.queue.running,
                "waiting": self.queue.waiting,
            },
            "socket": str(s.socket_path),
        }

    def search_memories(self, query: str, k: int, min_score: float) -> list[Recalled]:
        embedding = self.awake.embedder.embed_one(query)
        return self.awake.memory.search(embedding, k=k, min_score=min_score)

    async def embed(
        self, texts: list[str], truncate: bool = True, dimensions: int | None = None
    ) -> Embedded:
        """The hippocampus's embeddings of `texts`, computed in a worker thread. Each text
        is cut to the embedder's window; with `truncate` false a longer one is refused.
        `dimensions`, if given, must be the embedder's (vectors are never shortened)."""
        embedder = self.awake.embedder
        if dimensions is not None and dimensions != embedder.dim:
            raise RequestError(
                f"dimensions is {dimensions}, but the embedder ({embedder.model_id}) makes "
                f"{embedder.dim}-dimensional vectors only; leave dimensions out or set it "
                f"to {embedder.dim}",
                param="dimensions",
            )
        if not texts:
            raise RequestError("input is empty: give a string or a list of strings", "input")
        if len(texts) > MAX_EMBED_INPUTS:
            raise RequestError(
                f"input has {len(texts)} texts, more than the {MAX_EMBED_INPUTS} one request "
                "may embed; send them in several requests",
                param="input",
            )
        return await asyncio.to_thread(self._embed, texts, truncate)

    def _embed(self, texts: list[str], truncate: bool) -> Embedded:
        started = time.perf_counter()
        embedder = self.awake.embedder
        counts = embedder.token_counts(texts)
        window = embedder.window
        if not truncate and max(counts) > window:
            index = max(range(len(texts)), key=counts.__getitem__)
            raise RequestError(
                f"input {index} has {counts[index]} tokens, more than the embedder's window "
                f"of {window}; shorten it or leave truncate on",
                param="input",
            )
        vectors = embedder.embed(texts)
        tokens = sum(min(count, window) for count in counts)
        return Embedded(vectors, tokens, time.perf_counter() - started)

    @functools.cached_property
    def base_card(self) -> ModelCard:
        """What a model listing says about the served base LLM (read once; blocking: its
        file is hashed)."""
        return model_card(resolve(self.settings.models.base, "models.base"))

    def served(self) -> dict[str, int]:
        """Adapter name → the version served."""
        return {name: v.version for name, v in self.awake.adapters.alias.items()}

    def modulator_status(self, versions: bool = False) -> dict[str, Any]:
        awake = self.awake
        status: dict[str, Any] = {
            "parameters": awake.modulator.parameter_count,
            "routable": [n for n in awake.modulator.names if n is not None],
            "top_k": self.settings.modulator.top_k,
            "version": awake.modulator_version,  # None: untrained (centroid similarity alone)
            "train": self.settings.modulator.train,
        }
        if versions:
            status["versions"] = modulator.listing(self.modulator_store())
        return status

    def modulator_store(self) -> Registry:
        return modulator.store_for(self.settings, self.database.pool)

    async def rollback_modulator(self) -> dict[str, Any]:
        if self.awake.modulator_version is None:
            raise ConflictError(
                "no trained modulator is routing (it routes by adapter centroids); nothing "
                "to roll back"
            )
        previous = await asyncio.to_thread(modulator.previous, self.modulator_store())
        number = None if previous is None else previous.version
        return await asyncio.to_thread(self.publish_modulator, number, None, "rolled back")

    async def publish_adapter(
        self,
        name: str,
        path: str,
        description: str,
        tags: list[str],
        dataset: str | None,
        centroid: list[float] | None,
        metrics: dict[str, Any],
        sleep_cycle: int | None,
        canary: bool | None = None,
    ) -> dict[str, Any]:
        """Add the adapter directory at `path` as `name`'s next version and switch to it,
        on trial (npllm/canary.py) when a sleep cycle publishes it or `canary` asks.
        Where to route it: `centroid`, else the centroid of `dataset`'s questions, else the
        embedding of `description`."""
        directory = _absolute(path)
        if centroid is not None:
            if len(centroid) != DATABASE_DIM:
                raise RequestError(f"centroid must have {DATABASE_DIM} numbers", param="centroid")
            where: Any = np.asarray(centroid, dtype=np.float32)
            if not np.isfinite(where).all():  # e.g. 1e300: finite in JSON, inf in float32
                raise RequestError("centroid must hold float32 numbers", param="centroid")
        else:
            where = await asyncio.to_thread(self.centroid, dataset, description)
        version = await asyncio.to_thread(
            self.registry.add_version,
            name,
            directory,
            description=description,
            tags=tags,
            centroid=where,
            dataset=dataset,
            metrics=metrics,
        )
        # Staged beside the served set while requests run; only the flip waits for them.
        return await asyncio.to_thread(self.canaries.publish, version, sleep_cycle, canary)

    def centroid(self, dataset: str | None, description: str) -> Any:
        """Where the modulator should send questions: the dataset's questions, else the
        description; None (only pinned use) when neither is given."""
        embedder = self.awake.embedder
        if dataset:
            return datasets.dataset_centroid(self.database.pool, embedder, dataset)
        if description.strip():
            return embedder.embed_one(description)
        return None

    async def rollback_adapter(self, name: str) -> dict[str, Any]:
        """Back to the previous version; during a canary trial, that is aborting it."""
        if name in self.awake.trials:
            return await asyncio.to_thread(self.canaries.act, name, "abort")
        previous = await asyncio.to_thread(self.registry.previous, name)
        return await asyncio.to_thread(self.hot_swap.publish, "adapter", previous, "rolled back")

    def prune(self) -> dict[str, Any]:
        """Remove the files of inactive versions beyond training.keep_versions, adapters'
        and the cerebellum's."""
        pruned = self.registry.prune_all()
        if self.cerebellum_registry is not None:
            pruned.update(self.cerebellum_registry.prune_all())
        return pruned

    def require_cerebellum(self) -> tuple[Cerebellum, Registry]:
        """The cerebellum and its versions; ConflictError when it is off."""
        if self.cerebellum_registry is None or self.awake.cerebellum is None:
            raise ConflictError(
                'the cerebellum is off (cerebellum.role = "off"); set it to "draft" and '
                "restart to train and serve it"
            )
        return self.awake.cerebellum, self.cerebellum_registry

    async def add_cerebellum(
        self, path: str, description: str, metrics: dict[str, Any], sleep_cycle: int | None
    ) -> dict[str, Any]:
        """Add the cerebellum directory at `path` as its next version and switch to it."""
        _, registry = self.require_cerebellum()
        add = registry.add_version
        version = await asyncio.to_thread(
            add, CEREBELLUM, _absolute(path), description=description, metrics=metrics
        )
        publish = self.hot_swap.publish
        return await asyncio.to_thread(publish, "cerebellum", version, sleep_cycle=sleep_cycle)

    def cerebellum_status(self) -> dict[str, Any]:
        cerebellum, registry = self.require_cerebellum()
        return {**cerebellum.status(), "versions": registry.listing()}

    async def sleep_status(self) -> dict[str, Any]:
        """GET /v1/sleep: the state machine and the latest cycles."""
        cycles = await asyncio.to_thread(recent_cycles, self.database.pool)
        self.sleeper.observe(cycles)  # a finished cycle: awake again at once
        machine, worker = self.sleeper.machine, self.sleeper.worker
        now = datetime.now()
        opening = machine.window.next_opening(now)
        window = machine.window
        return {
            "state": machine.state,
            "reason": machine.reason,
            # Inside the window: the opening of the one we are in (window_open true).
            "next_window": opening.isoformat() if opening else None,
            "window_open": window.contains(now),
            "window": None if window.start == "any" else f"{window.start}-{window.end}",
            "worker_pid": worker.pid if worker else None,
            "latest_cycle": cycles[0]["id"] if cycles else None,
            "cycles": cycles,
        }

    async def dashboard(self, days: int) -> dict[str, Any]:
        """GET /v1/dashboard: what the page shows (services/dashboard.py), the adapters and
        their versions, and the sleep state."""
        from services import dashboard

        board = await asyncio.to_thread(dashboard.read, self.database.pool, days)
        sleep = await self.sleep_status()
        listing = await asyncio.to_thread(self.registry.listing)
        return {
            **board,
            "sleep": {k: v for k, v in sleep.items() if k != "cycles"},
            "adapters": {"served": self.served(), "data": dashboard.versions_of(listing)},
        }

    async def sleep_now(self, now: bool, seed: int | None) -> dict[str, Any]:
        """POST /v1/sleep: with `now`, start a cycle as soon as no request runs."""
        status = await self.sleep_status()
        if now:
            await self.sleeper.force_when_free(status["cycles"], seed)
        return {"state": self.sleeper.state, "latest_cycle": status["latest_cycle"]}

    async def feedback(
        self,
        interaction_id: int,
        event: str | None,
        rating: float | None,
        comment: str | None,
        text: str | None,
    ) -> Result:
        """Check explicit feedback and wait until the group-commit writer stored it."""
        pending = self.awake.feedback.explicit_pending(interaction_id, event, rating, comment, text)
        return await self.feedback_writer.submit(pending)


def _modulator_version(store: Registry, version: int) -> Version:
    try:
        return store.version(MODULATOR, version)
    except NotFoundError as exc:
        raise NotFoundError(f"no modulator version {version}", param="version") from exc


def _absolute(path: str) -> Path:
    if not Path(path).is_absolute():
        raise RequestError(f"path must be absolute, got {path!r}", param="path")
    return Path(path)
