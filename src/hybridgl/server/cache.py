"""A small thread-safe LRU cache of per-image work, keyed by the SHA-256 of the image bytes.

The server stores one :class:`~hybridgl.state.ImageState` per distinct upload, so that a
second phrase on the same image skips SAM and the CLIP image encoder entirely.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (the cache key of an uploaded image)."""
    return hashlib.sha256(data).hexdigest()


def _default_sizeof(value: Any) -> int:
    nbytes = getattr(value, "nbytes", 0)
    try:
        return int(nbytes() if callable(nbytes) else nbytes)
    except (TypeError, ValueError):
        return 0


class LRUCache(Generic[V]):
    """Bounded least-recently-used map with hit/miss counters.

    Args:
        capacity: most entries kept; ``0`` disables caching (every ``get`` misses and
            ``put`` stores nothing).
        max_bytes: optional bound on the summed ``sizeof`` of the entries; the least
            recently used ones go first (the newest entry is always kept).
        sizeof: bytes held by a value (default: its ``nbytes()`` method or attribute, else 0).
    """

    def __init__(
        self,
        capacity: int,
        max_bytes: int | None = None,
        sizeof: Callable[[Any], int] | None = None,
    ) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.max_bytes = max_bytes
        self._sizeof = sizeof or _default_sizeof
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self._data: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str) -> V | None:
        """Return the value for ``key`` (marking it most recently used), or None."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def peek(self, key: str) -> V | None:
        """The value for ``key`` or None, without counting a hit or miss or reordering."""
        with self._lock:
            return self._data.get(key)

    def put(self, key: str, value: V) -> None:
        """Store ``value`` under ``key``, evicting the least recently used entries."""
        if self.capacity == 0:
            return
        size = int(self._sizeof(value))
        with self._lock:
            if key in self._data:
                self._bytes -= self._sizes.pop(key, 0)
            self._data[key] = value
            self._data.move_to_end(key)
            self._sizes[key] = size
            self._bytes += size
            while len(self._data) > self.capacity or (
                self.max_bytes is not None and self._bytes > self.max_bytes and len(self._data) > 1
            ):
                old, _ = self._data.popitem(last=False)
                self._bytes -= self._sizes.pop(old, 0)
                self.evictions += 1

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self._bytes = 0

    def info(self) -> dict[str, Any]:
        """Counters for ``/health``: size, capacity, hits, misses, evictions."""
        with self._lock:
            return {
                "size": len(self._data),
                "capacity": self.capacity,
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }
