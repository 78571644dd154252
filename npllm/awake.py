"""The awake path: cache → embed → recall → working memory → base LLM → store.

No training ever happens here. One call answers one chat request and records it
as an interaction; the caller decides which thread it runs on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from psycopg.types.json import Jsonb

from npllm import interactions, replay
from npllm import modulator as modulator_versions
from npllm.cache import ShortTermCache, cache_key
from npllm.canary import Trial, conversation_key
from npllm.cerebellum import Cerebellum
from npllm.config import Settings
from npllm.corrections import Corrections, Verdict
from npllm.embeddings import Embedder
from npllm.engines.base import Engine
from npllm.errors import RequestError
from npllm.feedback import Feedback
from npllm.generation import Generation, GenerationParams
from npllm.interactions import Interaction
from npllm.memory import MemoryStore, Recalled
from npllm.modulator import NONE, Decision, Modulator
from npllm.replay import TopicTagger
from npllm.text import check_storable, storable
from npllm.tone import load_tone_scorer
from npllm.versions import Registry, Version
from npllm.working_memory import assemble

log = logging.getLogger("npllm.awake")

_DECISION = """
INSERT INTO npllm.routing_decisions (interaction_id, mode, probabilities, chosen)
VALUES (%(id)s, %(mode)s, %(probabilities)s, %(chosen)s)
"""


@dataclass
class Answer:
    """What a chat request produced, with the metadata the API reports."""

    interaction_id: int
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    memories: list[dict[str, Any]]
    adapters: list[dict[str, Any]]
    timings: dict[str, float]
    cached: bool = False
    truncated: dict[str, int] = field(default_factory=dict)
    routing: dict[str, Any] = field(default_factory=dict)
    # The cerebellum's drafting in this answer: version, tokens proposed and accepted.
    cerebellum: dict[str, Any] | None = None

    def metadata(self) -> dict[str, Any]:
        """The `npllm` object of a completion."""
        return {
            "interaction_id": self.interaction_id,
            "memories": self.memories,
            "adapters": self.adapters,
            "routing": self.routing,
            "cerebellum": self.cerebellum,
            "timings": self.timings,
            "cached": self.cached,
            "truncated": self.truncated,
        }


@dataclass
class _Cached:
    generation: Generation
    embedding: np.ndarray
    recalled: list[Recalled]
    prompt_tokens: int
    decision: Decision
    used: list[dict[str, Any]]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


class AwakePath:
    """Answers chat requests with the frozen base LLM and the hippocampus."""

    def __init__(self, settings: Settings, pool: Any, engine: Engine, embedder: Embedder) -> None:
        self.settings = settings
        self.pool = pool
        self.engine = engine  # what runs the base LLM (npllm/engines)
        self.embedder = embedder
        self.memory = MemoryStore(pool, embedder, settings.memory)
        self.cache: ShortTermCache[_Cached] = ShortTermCache(settings.memory.cache_size)
        self.feedback = Feedback(
            pool,
            settings.feedback,
            load_tone_scorer(settings.feedback.tone_scorer),
            memory=self.memory,  # a correction corrects the hippocampus at once
            on_memory_change=self.cache.clear,  # and answers cached before it are stale
        )
        self.tagger = TopicTagger(embedder, settings.feedback)
        self.corrections = Corrections(embedder, settings.memory.correction_similarity)
        self.adapters = engine.adapters
        self.modulator = Modulator(settings.modulator)
        self.modulator_version: int | None = None  # the trained version routing, if any
        # Running canary trials by adapter (npllm/canary.py): which version each arm gets.
        self.trials: dict[str, Trial] = {}
        # The draft model (npllm/cerebellum.py), set by the daemon; None: no drafting.
        self.cerebellum: Cerebellum | None = None
        # Set by the daemon when it stops: answers cancelled from then on were not
        # abandoned by their user, so they say nothing about the answer.
        self.stopping = False

    def route(self, embedding: np.ndarray, requested: list[str] | None) -> Decision:
        """Which adapters answer: the request's own choice, or the modulator's."""
        if requested is None:
            if not any(self.modulator.names):
                return Decision("modulator", {NONE: 1.0})
            return self.modulator.decide(embedding)
        if not requested:
            return Decision("disabled")
        unknown = [name for name in requested if name not in self.adapters.alias]
        if unknown:
            served = ", ".join(sorted(self.adapters.alias)) or "none"
            raise RequestError(
                f"no served adapter named {unknown[0]!r} (served: {served}; stale adapters "
                "are not served until rebuilt)",
                param="npllm.adapters",
            )
        if len(requested) > 3:
            raise RequestError("pin at most 3 adapters", param="npllm.adapters")
        unique = list(dict.fromkeys(requested))
        weight = round(1 / len(unique), 3)
        return Decision("pinned", chosen=[(name, weight) for name in unique])

    def load_adapters(self, registry: Registry, held: list[Version] | None = None) -> list[Version]:
        """Load every active version for this base and route to them (at start-up), with
        the `held` ones (running canaries' controls) loaded beside."""
        active = [v for v, _ in registry.active()]
        served = {v.key for v in self.adapters.serve(active, held or [])}
        scopes = registry.scopes(self.settings.modulator)
        self.modulator, self.modulator_version = modulator_versions.routing(
            self.settings,
            self.pool,
            {v.adapter: scopes.get(v.adapter) for v in active if v.key in served},
        )
        return [v for v in active if v.key in served]

    def _learn_from_turn(
        self,
        interaction_id: int,
        messages: list[dict[str, str]],
        question: str,
        embedding: np.ndarray,
        finish_reason: str,
        stopped_by_user: bool = False,
    ) -> None:
        """Implicit feedback: what this turn says about the previous answer, and an
        abandoned stream (not one its user stopped on purpose — Ctrl-C in `npllm chat`
        says nothing about the answer; /bad does). A failure here is logged; the answer is
        already stored."""
        try:
            self.feedback.infer(interaction_id, messages, question, embedding)
            if finish_reason == "cancelled" and not self.stopping and not stopped_by_user:
                self.feedback.abandoned(interaction_id)
        except Exception:
            log.exception("implicit feedback for interaction %s failed", interaction_id)

    def answer(
        self,
        messages: list[dict[str, str]],
        params: GenerationParams,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        on_start: Callable[[], None] | None = None,
        adapters: list[str] | None = None,
        memory: bool = True,
    ) -> Answer:
        """Answer the conversation's latest user message; store the interaction.

        `on_start` is called once the request is known to fit (after the prompt is
        assembled), so a streaming caller can still turn earlier errors into 4xx.
        `adapters`: None lets the modulator choose, [] uses none, names pin those.
        `memory`: False answers without recalling memories (the adapters alone). `cancel`
        may carry `by_user = True` (services/api/service.py: Cancel): stopped on purpose."""
        started = time.perf_counter()
        for i, m in enumerate(messages):
            check_storable(m["content"], f"messages.{i}.content")
        if on_text is not None:
            shown = on_text
            on_text = lambda text: shown(storable(text))  # noqa: E731
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
        if question is None:
            raise RequestError("messages must contain a user message", param="messages")
        deterministic = params.temperature == 0 or params.seed is not None
        routing_key = {"adapters": adapters, "swaps": self.adapters.changes, "memory": memory}
        key = cache_key(messages, asdict(params) | routing_key) if deterministic else None
        hit = self.cache.get(key) if key else None
        timings: dict[str, float] = {}
        truncated: dict[str, int] = {}
        if hit is not None:
            gen, embedding, recalled = hit.generation, hit.embedding, hit.recalled
            decision, used = hit.decision, hit.used
            if on_start:
                on_start()
            if on_text and gen.text:
                on_text(gen.text)
            prompt_tokens = hit.prompt_tokens
            timings.update(embed_ms=0.0, retrieve_ms=0.0, prompt_ms=0.0, generate_ms=0.0)
        else:
            epoch = self.cache.epoch  # the memories this answer is computed from
            t = time.perf_counter()
            embedding = self.embedder.embed_one(question)
            timings["embed_ms"] = _ms(time.perf_counter() - t)
            t = time.perf_counter()
            recalled = self.memory.relevant(embedding) if memory else []
            verdicts = {
                m.id: v for m in recalled if (v := self.corrections.judge(m, embedding)) is not None
            }
            # A correction of a neighbouring question stays out of this one's context.
            recalled = [
                m for m in recalled if m.id not in verdicts or not verdicts[m.id].about_a_neighbour
            ]
            timings["retrieve_ms"] = _ms(time.perf_counter() - t)
            t = time.perf_counter()
            decision = self.route(embedding, adapters)
            used, lora = self._arms(decision, conversation_key(messages), embedding)
            timings["route_ms"] = _ms(time.perf_counter() - t)
            t = time.perf_counter()
            wm = assemble(
                self.engine,
                messages,
                recalled,
                self.settings.memory.system_prompt,
                self.settings.memory.recent_turns,
                params.max_new_tokens,
            )
            recalled = wm.memories
            prompt_tokens = len(wm.prompt_ids)
            truncated = {"turns": wm.dropped_turns, "memories": wm.dropped_memories}
            timings["prompt_ms"] = _ms(time.perf_counter() - t)
            if on_start:
                on_start()
            draft = None if self.cerebellum is None else self.cerebellum.draft
            taught = self._taught(recalled, verdicts, params)
            if taught is not None:  # the question the user corrected: their answer, as is
                gen = taught
                if on_text:
                    on_text(gen.text)
            else:
                gen = self.engine.generate(
                    wm.prompt_ids,
                    params,
                    on_text=on_text,
                    cancel=cancel,
                    adapters=lora,
                    draft=draft,
                )
            gen.text = storable(gen.text)
            if gen.draft is not None and draft is not None:
                gen.draft = {"version": draft.version.version, **gen.draft}
            timings["generate_ms"] = _ms(gen.seconds)
            timings["prompt_cached_tokens"] = float(gen.cached_tokens)
            if taught is not None:
                timings["from_correction"] = 1.0
            if gen.draft is not None and gen.draft["acceptance_rate"] is not None:
                timings["draft_acceptance_rate"] = gen.draft["acceptance_rate"]
            if key and gen.finish_reason != "cancelled":
                self.cache.put(
                    key, _Cached(gen, embedding, recalled, prompt_tokens, decision, used), epoch
                )
        timings["tokens_per_s"] = (
            round(gen.completion_tokens / gen.seconds, 2) if gen.seconds > 0 else 0.0
        )
        timings["total_ms"] = _ms(time.perf_counter() - started)
        item = Interaction(
            messages=messages,
            question=question,
            answer=gen.text,
            base_model=self.engine.model_id,
            question_embedding=embedding,
            memory_ids=[m.id for m in recalled],
            memory_scores=[round(float(m.score), 4) for m in recalled],
            timings=timings,
            prompt_tokens=prompt_tokens,
            completion_tokens=gen.completion_tokens,
            finish_reason=gen.finish_reason,
            params=asdict(params),
            adapters_used=used,
        )
        with self.pool.connection() as conn, conn.transaction():
            interaction_id = interactions.record(conn, item)
            replay.admit(conn, interaction_id, embedding, self.tagger.tags(embedding))
            conn.execute(
                _DECISION,
                {
                    "id": interaction_id,
                    "mode": decision.mode,
                    "probabilities": Jsonb(decision.probabilities),
                    "chosen": Jsonb(used),
                },
            )
        self._learn_from_turn(
            interaction_id,
            messages,
            question,
            embedding,
            gen.finish_reason,
            stopped_by_user=bool(getattr(cancel, "by_user", False)),
        )
        self.memory.mark_used([m.id for m in recalled])
        if self.settings.memory.store_exchanges and gen.text.strip() and hit is None:
            self.memory.add(
                f"Q: {question}\nA: {gen.text.strip()}",
                source=f"interaction:{interaction_id}",
                kind="exchange",
                interaction_id=interaction_id,
            )
        return Answer(
            interaction_id=interaction_id,
            text=gen.text,
            finish_reason=gen.finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=gen.completion_tokens,
            memories=[{"id": m.id, "score": round(float(m.score), 4)} for m in recalled],
            adapters=used,
            routing={"mode": decision.mode, "probabilities": decision.probabilities},
            timings=timings,
            cached=hit is not None,
            truncated=truncated,
            cerebellum=gen.draft,
        )

    def _arms(
        self, decision: Decision, conversation: str, embedding: np.ndarray
    ) -> tuple[list[dict[str, Any]], list[tuple[str, float]]]:
        """What answers: per chosen adapter its version (a canary trial's arm picks it) for
        the record, and the names the engine is given (a control arm: its version's key)."""
        used, lora = [], []
        for name, weight in decision.chosen:
            trial = self.trials.get(name)
            if trial is None:
                used.append({"name": name, "version": self.adapters.alias[name].version,
                             "weight": weight})  # fmt: skip
                lora.append((name, weight))
                continue
            arm = trial.arm(conversation, embedding)
            version = trial.version(arm)
            used.append({"name": name, "version": version.version, "weight": weight,
                         "canary": trial.id, "arm": arm})  # fmt: skip
            lora.append((version.key if arm == "control" else name, weight))
        return used, lora

    def _taught(
        self, recalled: list[Recalled], verdicts: dict[int, Verdict], params: GenerationParams
    ) -> Generation | None:
        """The user's own correction, as they wrote it, when this question is one it answers
        (npllm/corrections.py: as alike as ``memory.correction_similarity`` to a way of
        asking the corrected question, nearer that than any neighbouring question): a user
        who corrected an answer expects that answer, the same day. Its memory must be
        retrieved, so deleting the memory ends it."""
        found = [m for m in recalled if m.id in verdicts and verdicts[m.id].direct]
        if not found:
            return None
        best = max(found, key=lambda m: verdicts[m.id].alike)
        text = str(best.correction)
        tokens = self.engine.tokenizer.encode(text, add_special_tokens=False)
        finish = "stop"
        if len(tokens) > params.max_new_tokens:
            text = self.engine.tokenizer.decode(tokens[: params.max_new_tokens])
            tokens, finish = tokens[: params.max_new_tokens], "length"
        return Generation(text, 0, len(tokens), finish, seconds=0.0)

    def remember(self, text: str, source: str, kind: str) -> dict[str, Any]:
        """Store a memory (chunked if long); cached answers may now be stale."""
        document_id, chunks = self.memory.add(text, source=source, kind=kind)  # type: ignore[arg-type]
        self.cache.clear()
        return {
            "document_id": str(document_id) if document_id else None,
            "data": [
                {
                    "id": c.id,
                    "chunk_index": c.chunk_index,
                    "merged": c.merged,
                    "replaced": c.replaced,
                }
                for c in chunks
            ],
        }

    def forget(self, memory_id: int) -> bool:
        deleted = self.memory.delete(memory_id)
        if deleted:
            self.cache.clear()
        return deleted

    def status_counts(self) -> dict[str, int]:
        return {
            "memories": self.memory.count(),
            "interactions": interactions.count(self.pool),
            "cache_entries": len(self.cache),
        }
