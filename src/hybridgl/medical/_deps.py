"""The optional packages of the ``medical`` extra, imported only when needed.

``import hybridgl`` (and ``import hybridgl.medical``) never imports pydicom, nibabel or
highdicom; the functions that need one call the matching ``require_*`` first, which
raises :class:`~hybridgl.errors.MissingExtraError` (an ImportError; CLI exit 2) with the
one-line install command when it is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hybridgl.errors import MissingExtraError


def _require(module: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(what, "medical", detail=f"{module} is not installed") from None


def require_pydicom() -> ModuleType:
    """``pydicom`` (DICOM files and series)."""
    return _require("pydicom", "reading DICOM")


def require_nibabel() -> ModuleType:
    """``nibabel`` (NIfTI volumes)."""
    return _require("nibabel", "reading and writing NIfTI")


def require_highdicom() -> ModuleType:
    """``highdicom`` (DICOM SEG output)."""
    return _require("highdicom", "writing DICOM SEG")
