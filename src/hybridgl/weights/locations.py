"""Where checkpoints are looked for and cached, and whether downloads are allowed
(the ``HYBRIDGL_*`` environment variables)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "HYBRIDGL_CACHE_DIR"
WEIGHTS_DIR_ENV = "HYBRIDGL_WEIGHTS_DIR"
OFFLINE_ENV = "HYBRIDGL_OFFLINE"
URL_BASE_ENV = "HYBRIDGL_WEIGHTS_URL_BASE"
_TRUE_VALUES = {"1", "true", "yes"}


def _env(name: str) -> str | None:
    """Return an environment variable stripped, or None when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def offline() -> bool:
    """Tell whether downloads are forbidden.

    Returns:
        True when ``HYBRIDGL_OFFLINE`` is ``1``, ``true`` or ``yes`` (any letter case).
    """
    value = _env(OFFLINE_ENV)
    return value is not None and value.lower() in _TRUE_VALUES


def cache_dir() -> Path:
    """Return the download cache directory (not created here).

    Returns:
        ``$HYBRIDGL_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/hybridgl``, else
        ``~/.cache/hybridgl``.
    """
    explicit = _env(CACHE_DIR_ENV)
    if explicit is not None:
        return Path(explicit).expanduser()
    xdg = _env("XDG_CACHE_HOME")
    if xdg is not None:
        return Path(xdg).expanduser() / "hybridgl"
    return Path.home() / ".cache" / "hybridgl"


def search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """Return the directories searched for checkpoints, first match wins.

    Args:
        weights_dir: Directory given by the caller; searched first.

    Returns:
        ``weights_dir``, the directories in ``$HYBRIDGL_WEIGHTS_DIR`` (``os.pathsep``
        separated) and :func:`cache_dir`, in that order, without duplicates.
    """
    dirs: list[Path] = []
    if weights_dir is not None and str(weights_dir).strip():
        dirs.append(Path(weights_dir).expanduser())
    env_dirs = _env(WEIGHTS_DIR_ENV)
    if env_dirs is not None:
        dirs.extend(Path(p).expanduser() for p in env_dirs.split(os.pathsep) if p.strip())
    dirs.append(cache_dir())
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique
