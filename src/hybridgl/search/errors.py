"""Errors of the search index, and the one check for the optional LanceDB extra."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from hybridgl.errors import HybridGLError, MissingExtraError

__all__ = [
    "FingerprintMismatch",
    "IndexBusyError",
    "IndexStoreError",
    "MissingExtraError",
    "lancedb_available",
    "require_lancedb",
]


class IndexStoreError(HybridGLError, ValueError):
    """The ``--db`` location is missing, not an index, or unusable (CLI exit code 3)."""


class FingerprintMismatch(IndexStoreError):
    """The index was built with other models or feature options than this run uses."""


class IndexBusyError(IndexStoreError):
    """Another index run is writing to the same database."""


def lancedb_available() -> bool:
    """True when LanceDB can be imported (without importing it)."""
    return importlib.util.find_spec("lancedb") is not None


def require_lancedb() -> Any:
    """Import and return :mod:`lancedb`, or raise one line naming the extra to install."""
    try:
        return importlib.import_module("lancedb")
    except ImportError as e:
        raise MissingExtraError(
            "collection search", "search", detail=f"{e.name or 'lancedb'} is not installed"
        ) from None
