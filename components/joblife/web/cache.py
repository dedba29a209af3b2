"""Page data shared by every open browser: each key is computed at most once per refresh
interval, whatever the number of browsers polling it (the others wait for that one
computation and get its result)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from cachetools import TTLCache

T = TypeVar("T")


class SharedCache:
    """A time-to-live cache whose misses are computed once: concurrent callers of a key
    being computed wait for it rather than querying the database too."""

    def __init__(self, ttl_seconds: float, max_entries: int = 1024) -> None:
        self._values: TTLCache[Hashable, Any] = TTLCache(max_entries, ttl_seconds)
        self._lock = threading.Lock()
        self._computing: dict[Hashable, threading.Lock] = {}
        #: How many times a value was computed (for tests and the benchmark).
        self.computed = 0

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The cached value of ``key``, or ``compute()``'s, kept for the TTL. An exception
        of ``compute`` is not cached."""
        with self._lock:
            if key in self._values:
                return self._values[key]
            key_lock = self._computing.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._values:  # computed by the caller we waited for
                    return self._values[key]
            try:
                value = compute()
            except BaseException:
                with self._lock:
                    self._computing.pop(key, None)
                raise
            with self._lock:
                self._values[key] = value
                self._computing.pop(key, None)
                self.computed += 1
            return value

    def clear(self) -> None:
        """Forget every value (after an action changed the data)."""
        with self._lock:
            self._values.clear()
