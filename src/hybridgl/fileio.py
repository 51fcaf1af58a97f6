"""Atomic file writes: the one place in the package that writes files "all or nothing".

Every writer here works the same way: the data goes to a hidden temporary file in the
target's own folder (so the final rename never crosses a file system), is flushed and
``fsync``-ed, and is renamed over the target with :func:`os.replace`. A reader therefore
sees either the old file or the complete new one, never a half-written file, and a crash
or an exception leaves no temporary file behind.

Details that hold for every function:

* the parent folder is created when missing;
* the new file gets the permissions an ordinary ``open(path, "w")`` would give it
  (``0o666`` minus the process umask), not the ``0o600`` of :func:`tempfile.mkstemp`;
* an ``OSError`` (full disk, read-only folder, ...) names the *target* path, never the
  hidden temporary file, and keeps its type (``PermissionError`` stays one);
* the temporary name keeps the target's suffix (``.out.k3j2.tmp.png`` for ``out.png``),
  so writers that choose the format from the extension (PIL, ``numpy.save``) work on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike

__all__ = [
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
]

_umask_lock = threading.Lock()
_umask: int | None = None


def _current_umask() -> int:
    """The process umask, read once (from /proc where possible, which changes nothing)."""
    global _umask
    with _umask_lock:
        if _umask is None:
            value: int | None = None
            try:
                with open("/proc/self/status", encoding="ascii", errors="replace") as f:
                    for line in f:
                        if line.startswith("Umask:"):
                            value = int(line.split()[1], 8)
                            break
            except (OSError, ValueError, IndexError):
                value = None
            if value is None:  # no /proc (macOS): the only portable way is set-and-restore
                value = os.umask(0o022)
                os.umask(value)
            _umask = value
        return _umask


def _reword(exc: OSError, target: Path) -> OSError:
    """The same kind of error, naming the target instead of a temporary file."""
    if exc.errno is None:
        return OSError(f"cannot write {target}: {exc}")
    return OSError(exc.errno, f"cannot write file: {exc.strerror}", str(target))


def _names(exc: OSError, tmp: Path) -> bool:
    return str(tmp) in (str(exc.filename), str(exc.filename2)) or str(tmp) in str(exc)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable where the platform allows it (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mktemp(target: Path) -> tuple[int, Path]:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
    except (OSError, AttributeError):  # AttributeError: no fchmod on Windows
        pass
    return fd, Path(tmp)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path that replaces ``path`` when the block ends without error.

    Use it with writers that want a file name rather than bytes::

        with atomic_path("out.npy") as tmp:
            np.save(tmp, array)

    The temporary file exists (empty) when the block starts; the writer may overwrite or
    replace it. On success it is fsync-ed and renamed over ``path``; on any exception it
    is removed and the exception propagates unchanged, except that an ``OSError`` naming
    the temporary file is reworded to name ``path``.

    Yields:
        The temporary file's path, in the same folder as ``path``.
    """
    target = Path(path)
    try:
        fd, tmp = _mktemp(target)
        os.close(fd)
    except OSError as e:
        raise _reword(e, target) from None
    try:
        yield tmp
    except OSError as e:
        _unlink_quietly(tmp)
        if _names(e, tmp):  # the writer failed on our temporary file: name the target
            raise _reword(e, target) from None
        raise  # anything else (e.g. an error subclassing OSError) is the caller's own
    except BaseException:
        _unlink_quietly(tmp)
        raise
    try:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        _unlink_quietly(tmp)
        raise _reword(e, target) from None
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temporary folder that replaces the folder ``path`` when the block succeeds.

    For results made of several files (e.g. a model snapshot): fill the yielded folder;
    on success it is renamed to ``path``; on any exception it is removed with everything
    in it and ``path`` is left as it was. An existing folder at ``path`` is first renamed
    aside and removed only after the new one is in place (a folder cannot be swapped in
    one step, so for an instant ``path`` is absent; it is never half-filled).

    Yields:
        The temporary folder, beside ``path`` (same file system).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        os.chmod(tmp, 0o777 & ~_current_umask())
    except OSError as e:
        raise _reword(e, target) from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    try:
        if target.exists() or target.is_symlink():
            old = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
            )
            os.replace(target, old)
        os.replace(tmp, target)
    except OSError as e:
        if old is not None and not target.exists():
            os.replace(old, target)  # put the previous folder back
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise _reword(e, target) from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the file cannot be written; the message names ``path``.
    """
    target = Path(path)
    try:
        fd, tmp = _mktemp(target)
    except OSError as e:
        raise _reword(e, target) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        _unlink_quietly(tmp)
        raise _reword(e, target) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8 by default, newlines as given)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (strict: NaN and infinities are refused) plus a final newline.

    Raises:
        ValueError: ``obj`` holds a NaN or an infinity (JSON has no such numbers); nothing
            is written.
        TypeError: ``obj`` holds something JSON cannot represent; nothing is written.
    """
    text = json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=False)
    return atomic_write_text(path, text + "\n")
