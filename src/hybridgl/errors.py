"""Exceptions with messages meant for people. The CLI maps each to an exit code."""

from __future__ import annotations


class HybridGLError(Exception):
    """Base class of every error this package raises on purpose."""


class ImageError(HybridGLError, ValueError):
    """An image could not be read or has an unsupported layout."""


class ExpressionError(HybridGLError, ValueError):
    """A referring expression is empty or not a string."""


class WeightsError(HybridGLError, FileNotFoundError):
    """A checkpoint is missing, corrupt or could not be downloaded."""
