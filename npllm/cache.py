"""The short-term cache: a bounded LRU of recent (request -> answer), in process only."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Generic, TypeVar

V = TypeVar("V")


def cache_key(messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    """The same conversation with the same sampling settings gives the same key."""
    return json.dumps([messages, params], sort_keys=True, ensure_ascii=False)


class ShortTermCache(Generic[V]):
    """Thread-safe LRU; size 0 disables it.

    Its `epoch` counts the clears: an answer computed from the memories of one epoch is put
    only if no clear came since (``put(..., epoch=...)``), so a correction that lands while
    an answer is being generated cannot be undone by that answer."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """Read before computing an answer; pass it to :meth:`put`."""
        return self._epoch

    def get(self, key: str) -> V | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: str, value: V, epoch: int | None = None) -> None:
        """Keep `value` under `key`; dropped when the cache was cleared since `epoch`."""
        if self.size == 0:
            return
        with self._lock:
            if epoch is not None and epoch != self._epoch:
                return
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget everything, e.g. when memories change and old answers may be stale."""
        with self._lock:
            self._items.clear()
            self._epoch += 1

    def __len__(self) -> int:
        return len(self._items)
