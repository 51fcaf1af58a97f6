"""The model service's counters: an admitted request's :class:`Ticket` (its place in the
queue, held until every job it started has finished) and a :class:`Gauge` of work in
progress (how many now, the peak, the total), as ``/v1/health`` reports them."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Ticket:
    """An admitted request's place in the queue; see :meth:`ModelService.admit`."""

    def __init__(self, on_release: Callable[[], None]) -> None:
        self._on_release = on_release
        self._refs = 1
        self._lock = threading.Lock()

    def hold(self, fut: concurrent.futures.Future) -> None:
        """Keep the ticket until ``fut`` is done, even if the request gives up on it."""
        with self._lock:
            self._refs += 1
        fut.add_done_callback(lambda _: self.release())

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            done = self._refs == 0
        if done:
            self._on_release()


class Gauge:
    """A thread-safe count of things in progress, with its peak and total."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.total = 0

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            self.active += 1
            self.total += 1
            self.peak = max(self.peak, self.active)
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1

    def info(self) -> dict[str, int]:
        with self._lock:
            return {"active": self.active, "peak": self.peak, "total": self.total}
