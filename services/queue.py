"""The bounded generation queue: one model worker, a fixed number of waiting requests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from npllm.errors import QueueFull

T = TypeVar("T")


class GenerationQueue:
    """Runs generations one at a time off the event loop; refuses work beyond `size` waiting."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="npllm-generate")
        self._pending = 0  # running + waiting
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        return min(self._pending, 1)

    @property
    def waiting(self) -> int:
        return max(0, self._pending - 1)

    def submit(self, fn: Callable[[], T], always: bool = False) -> Future[T]:
        """Run `fn` on the model thread; `always` skips the size limit (adapter swaps)."""
        with self._lock:
            if not always and self._pending >= self.size + 1:
                raise QueueFull(f"{self.waiting} requests are already waiting (server.queue_size)")
            self._pending += 1
        future = self._executor.submit(fn)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future[T]) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        """Drop waiting work and wait for the running generation (cancel it first)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
