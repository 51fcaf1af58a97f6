"""Checking what a client sent, before any model work (no FastAPI needed).

Each function raises :class:`~hybridgl.server.errors.ApiError` with the status and code
docs/SERVER.md lists, never a bare exception.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridgl.server.errors import ApiError
from hybridgl.server.settings import ServerSettings


@dataclass(frozen=True)
class Upload:
    """An uploaded image, checked from its header: its bytes, SHA-256 and size."""

    data: bytes
    sha256: str
    width: int
    height: int


def parse_expressions(
    expression: list[str] | None, expressions: str | None, settings: ServerSettings
) -> list[str]:
    """The request's expressions: the ``expression`` fields, then the ``expressions`` list.

    Whitespace is collapsed; empty, over-long or too many expressions are a 422.
    """
    items: list[Any] = list(expression or [])
    if expressions is not None and expressions.strip():
        try:
            parsed = json.loads(expressions)
        except json.JSONDecodeError as e:
            raise ApiError(
                422, "invalid_expressions", f"'expressions' must be a JSON list of strings: {e}"
            ) from None
        except RecursionError:  # e.g. 100 000 nested brackets
            raise ApiError(
                422, "invalid_expressions", "'expressions' is nested too deeply; send a flat list"
            ) from None
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise ApiError(
                422, "invalid_expressions", "'expressions' must be a JSON list of strings"
            )
        items.extend(parsed)
    if not items:
        raise ApiError(
            422,
            "missing_field",
            "expression: give at least one 'expression' field (or 'expressions' as a JSON list)",
        )
    if len(items) > settings.max_expressions:
        raise ApiError(
            422,
            "too_many_expressions",
            f"{len(items)} expressions given; at most {settings.max_expressions} per request",
        )
    out = []
    for i, text in enumerate(items):
        text = " ".join(str(text).split())
        if not text:
            raise ApiError(422, "empty_expression", f"expression {i} is empty")
        if len(text) > settings.max_expression_chars:
            raise ApiError(
                422,
                "expression_too_long",
                f"expression {i} has {len(text)} characters; "
                f"at most {settings.max_expression_chars} allowed",
            )
        out.append(text)
    return out


def check_top_k(top_k: int | None, settings: ServerSettings) -> int:
    """The request's ``top_k`` (the server's default when None); 422 above ``max_top_k``."""
    k = settings.top_k if top_k is None else int(top_k)
    if k > settings.max_top_k:
        raise ApiError(422, "invalid_parameter", f"top_k must be <= {settings.max_top_k}")
    return k


def too_large(width: int, height: int, limit: int) -> ApiError:
    return ApiError(
        413,
        "image_too_large",
        f"image is {width}x{height} = {width * height} pixels; the limit is {limit} pixels",
    )


def inspect_upload(data: bytes, settings: ServerSettings) -> Upload:
    """Check an upload from its bytes and header only (nothing is decoded).

    Raises:
        ApiError: 415 ``invalid_image`` (empty, not an image), 413 ``payload_too_large``
            (file over ``max_upload_bytes``) or 413 ``image_too_large`` (more pixels than
            the limit, whatever the format).
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(415, "invalid_image", "the image file is empty")
    if len(data) > settings.max_upload_bytes:
        raise ApiError(
            413,
            "payload_too_large",
            f"image is {len(data)} bytes; the limit is {settings.max_upload_bytes} bytes",
        )
    limit = settings.pixel_limit
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        # Pillow refuses to even open images over twice its own bomb limit
        # (Image.MAX_IMAGE_PIXELS): far over any pixel limit the server allows
        raise ApiError(
            413,
            "image_too_large",
            f"image has more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels; "
            f"the limit is {limit} pixels",
        ) from None
    except UnidentifiedImageError:
        raise ApiError(
            415, "invalid_image", "the upload is not an image in a readable format (JPEG, PNG, ...)"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ApiError(415, "invalid_image", f"not a readable image: {e}") from None
    if width * height > limit:
        raise too_large(width, height, limit)
    return Upload(data, hashlib.sha256(data).hexdigest(), int(width), int(height))


def decode_upload(upload: Upload, settings: ServerSettings) -> np.ndarray:
    """Decode a checked upload to ``(H, W, 3)`` uint8 RGB; 415 when it is corrupt."""
    from hybridgl.errors import ImageError
    from hybridgl.images import load_image

    try:
        return load_image(upload.data)
    except ImageError as e:
        raise ApiError(415, "invalid_image", str(e)) from None
