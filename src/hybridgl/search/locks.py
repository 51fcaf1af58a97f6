"""Who may write an index: an exclusive ``flock`` on a local folder, and the constants of
the best-effort writer lease on object stores (kept in the ``meta`` table by
:class:`hybridgl.search.store.Store`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from hybridgl.search.errors import IndexBusyError

LOCK_NAME = ".hybridgl-index.lock"
LEASE_SECONDS = 600.0  # an object-store writer lease older than this is stale


class FileLock:
    """An exclusive, non-blocking ``flock`` held for the life of a writer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, db: str) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock on this platform
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            who = f" ({holder})" if holder else ""
            raise IndexBusyError(
                f"another index run is writing to {db}{who}; wait for it to finish "
                "(two runs on one index are refused so they cannot corrupt it)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None
