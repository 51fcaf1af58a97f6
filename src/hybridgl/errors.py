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


class UsageError(HybridGLError):
    """A combination of options or arguments that cannot work (CLI exit code 2)."""


class InputError(HybridGLError, ValueError):
    """Bad input found outside the image and expression checks, e.g. a malformed data
    file, a conflicting run folder or index (CLI exit code 3)."""


class DataError(HybridGLError, ValueError):
    """A dataset file is missing or unreadable, or a record in it is invalid (the
    evaluation readers of :mod:`hybridgl.eval`; CLI exit code 3)."""


class MissingExtraError(HybridGLError, ImportError):
    """An optional extra is not installed (CLI exit code 2, one line in every command).

    The message always ends with the command that fixes it:
    ``<what> needs the optional extra: pip install "hybridgl[<extra>]"``.

    Attributes:
        extra: the extra's name in pyproject.toml (``ray``, ``search``, ``transformers``...).
    """

    def __init__(self, what: str, extra: str, detail: str | None = None) -> None:
        self.extra = extra
        why = f" ({detail})" if detail else ""
        super().__init__(f'{what} needs the optional extra{why}: pip install "hybridgl[{extra}]"')


#: Every ``error_kind`` a failed record can carry, with its meaning: the one list that
#: batch, evaluate, index and the HTTP API use (docs/FORMATS.md prints it).
ERROR_KINDS: dict[str, str] = {
    "missing_image": "the image file does not exist",
    "bad_image": "the image cannot be read or decoded, or has an unsupported layout",
    "image_too_large": "the image has more pixels than the limit (--max-pixels)",
    "size_mismatch": "the image size differs from what the dataset file says",
    "bad_expression": "the expression is empty or not text",
    "bad_proposals": "caller proposals that cannot be read or do not fit the image",
    "bad_record": "an input row or data record that cannot be understood",
    "unknown_image": "an image id the dataset's annotations do not list",
    "unknown_ann": "an annotation id the dataset's annotations do not list",
    "bad_annotation": "an annotation whose mask cannot be decoded or is empty",
    "prediction_failed": "the model raised on this image or expression",
    "missing_video": "the video file or frame folder does not exist",
    "bad_video": "the video cannot be opened or decoded (corrupt, truncated, no frames)",
    "internal": "anything else (the message carries the exception)",
}

# exception class -> kind, first match wins (for errors raised rather than named)
_KIND_OF_CLASS: tuple[tuple[type[BaseException], str], ...] = (
    (ImageTooLargeError, "image_too_large"),
    (ImageError, "bad_image"),
    (ExpressionError, "bad_expression"),
    (FileNotFoundError, "missing_image"),
    (InputError, "bad_record"),
    (ValueError, "bad_record"),
)


def error_kind(exc: BaseException) -> str:
    """The ``error_kind`` (a key of :data:`ERROR_KINDS`) of an exception a row failed with."""
    for cls, kind in _KIND_OF_CLASS:
        if isinstance(exc, cls):
            return kind
    return "internal"


def error_record_fields(exc: BaseException | str, kind: str | None = None) -> dict[str, str]:
    """``{"error": one-line message, "error_kind": kind}`` of a failed row (every job).

    Raises:
        ValueError: ``kind`` is not in :data:`ERROR_KINDS` (a programming error).
    """
    if isinstance(exc, BaseException):
        message = str(exc).strip() or type(exc).__name__
        kind = kind or error_kind(exc)
    else:
        message, kind = str(exc), kind or "bad_record"
    if kind not in ERROR_KINDS:
        raise ValueError(f"unknown error_kind {kind!r}")
    return {"error": message, "error_kind": kind}


class VideoError(HybridGLError, ValueError):
    """A video, frame folder, stream or camera could not be read (CLI exit code 3).

    Attributes:
        frame: the index of the frame at fault in the source (None when the source could
            not be opened at all). Frames before it were read and may have been used.
    """

    def __init__(self, message: str, frame: int | None = None) -> None:
        super().__init__(message)
        self.frame = frame
