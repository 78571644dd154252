"""One queued answer as a route sees it: the text the model thread emits, the switch that
stops it, and the answer to come. Routes of every API format (OpenAI's, Ollama's) queue
their answers through Service.chat; this is what they do with what it gives back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from npllm.generation import GenerationParams

if TYPE_CHECKING:
    from services.api.service import Cancel, Service


@dataclass
class PendingAnswer:
    service: Service
    response_id: str
    events: asyncio.Queue[tuple[str, str]]  # (kind, text): "start", "text", "done"
    cancel: Cancel
    future: asyncio.Future[Any]  # an Answer (chat) or a Completion (raw prompt)
    kind: str = "chat"  # chat | completion (the metrics' label)
    queued_at: float = 0.0  # time.perf_counter() when it was queued
    first_text: float | None = None

    @classmethod
    def submit(
        cls,
        service: Service,
        response_id: str,
        messages: list[dict[str, str]],
        params: GenerationParams,
        adapters: list[str] | None,
        stream: bool,
        memory: bool = True,
    ) -> PendingAnswer:
        """Queue the answer (QueueFull when every slot is taken)."""

        def queue(emit: Callable[..., None], cancel: Cancel) -> asyncio.Future[Any]:
            return service.chat(
                response_id, messages, params, adapters, emit, cancel, stream, memory=memory
            )

        return cls._queued(service, response_id, queue, "chat")

    @classmethod
    def submit_completion(
        cls,
        service: Service,
        response_id: str,
        prompt: str,
        suffix: str | None,
        params: GenerationParams,
        adapters: list[str] | None,
        stream: bool,
    ) -> PendingAnswer:
        """Queue a raw completion (npllm/completion.py: no template, no memory, not stored)."""

        def queue(emit: Callable[..., None], cancel: Cancel) -> asyncio.Future[Any]:
            return service.complete(
                response_id, prompt, suffix, params, adapters, emit, cancel, stream
            )

        return cls._queued(service, response_id, queue, "completion")

    @classmethod
    def _queued(
        cls,
        service: Service,
        response_id: str,
        queue: Callable[[Callable[..., None], Cancel], asyncio.Future[Any]],
        kind: str,
    ) -> PendingAnswer:
        from services.api.service import Cancel

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        cancel = Cancel()

        def emit(kind: str, text: str = "") -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, text))

        started = time.perf_counter()
        future = queue(emit, cancel)
        pending = cls(service, response_id, events, cancel, future, kind, started)
        future.add_done_callback(pending._measured)
        return pending

    def _measured(self, future: asyncio.Future[Any]) -> None:
        """A finished answer's tokens and rate, and its time to first text if streamed."""
        if future.cancelled() or future.exception() is not None:
            return
        metrics = self.service.metrics
        metrics.observe_answer(self.kind, future.result())
        if self.first_text is not None:
            metrics.first_token.labels(self.kind).observe(self.first_text - self.queued_at)

    async def whole(self) -> Any:
        """The finished answer (not streamed)."""
        try:
            return await self.future
        except asyncio.CancelledError:
            # Nobody will read this answer (the daemon is stopping and its grace period is
            # over): stop generating it at the next token.
            self.cancel.set()
            raise
        finally:
            self.service.in_flight.pop(self.response_id, None)

    async def started(self) -> None:
        """Wait until the prompt is assembled, so that an error up to then (a prompt too
        long, an unknown adapter) is raised here, before a streamed answer's 200."""
        kind, text = await self.events.get()
        if kind == "done":
            self.service.in_flight.pop(self.response_id, None)
            await self.future  # raises the RequestError (or other)
            self.events.put_nowait((kind, text))

    async def pieces(self) -> AsyncIterator[str]:
        """The text as the model thread emits it, until the answer is done."""
        while True:
            kind, text = await self.events.get()
            if kind == "done":
                return
            if kind == "text":
                if self.first_text is None:
                    self.first_text = time.perf_counter()
                yield text

    def close(self) -> None:
        """The client went away or the answer is sent: stop generating for it."""
        self.cancel.set()
        self.service.in_flight.pop(self.response_id, None)
