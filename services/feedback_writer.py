"""Group commit for feedback: one writer thread applies queued events in batches.

A feedback request is answered only after its row is committed (nothing acknowledged
is ever lost), but each commit costs an fsync of a few milliseconds. So requests wait
in a queue and the writer takes everything queued — up to `max_batch` — into one
transaction: under load one fsync covers hundreds of events; alone, an event is
committed at once. Results go back to the event loop in one callback per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from typing import Any

from npllm.feedback import Feedback, Pending, Result

log = logging.getLogger("npllm.feedback")

_STOP = object()
_Item = tuple[Pending, "asyncio.Future[Result]"]


class FeedbackWriter:
    """Applies feedback in batches on its own thread; `submit` is awaited on the loop."""

    def __init__(self, feedback: Feedback, max_batch: int = 512) -> None:
        self.feedback = feedback
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="npllm-feedback", daemon=True)
        self._thread.start()

    async def submit(self, pending: Pending) -> Result:
        """Queue `pending` and wait until it is committed (or refused)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._queue.put((pending, future))
        return await future

    def close(self, timeout: float = 10.0) -> None:
        """Apply what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            stop = item is _STOP
            batch: list[_Item] = [] if stop else [item]
            while not stop and len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                else:
                    batch.append(more)
            if batch:
                self._write(batch)
            if stop:
                return

    def _write(self, batch: list[_Item]) -> None:
        outcomes: list[Result | Exception]
        try:
            outcomes = list(self.feedback.apply([pending for pending, _ in batch]))
        except Exception as exc:  # the whole transaction failed: every caller hears why
            log.exception("feedback batch of %d failed", len(batch))
            outcomes = [exc] * len(batch)
        loop = batch[0][1].get_loop()
        # A closed loop means the daemon is stopping and nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, [f for _, f in batch], outcomes)


def _settle(futures: list[asyncio.Future[Result]], outcomes: list[Result | Exception]) -> None:
    for future, outcome in zip(futures, outcomes, strict=True):
        if future.done():  # the client went away and its request was cancelled
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
