"""Exceptions with messages meant for people. The CLI maps each to an exit code."""

from __future__ import annotations


class HybridGLError(Exception):
    """Base class of every error this package raises on purpose."""


class ImageError(HybridGLError, ValueError):
    """An image could not be read or has an unsupported layout."""


class ImageTooLargeError(ImageError):
    """An image has more pixels than the limit (``max_pixels``), found before decoding.

    Attributes:
        height, width: the image's size (None when only Pillow's own limit knew it).
        limit: the pixel limit that was exceeded (None for Pillow's own).
    """

    def __init__(
        self,
        message: str,
        height: int | None = None,
        width: int | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__(message)
        self.height, self.width, self.limit = height, width, limit


class ExpressionError(HybridGLError, ValueError):
    """A referring expression is empty or not a string."""


class WeightsError(HybridGLError, FileNotFoundError):
    """A checkpoint is missing, corrupt or could not be downloaded."""
