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
    """Thread-safe LRU; size 0 disables it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: str, value: V) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget everything, e.g. when memories change and old answers may be stale."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
