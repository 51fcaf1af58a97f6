"""Checking what a client sent, before any model work (no FastAPI needed).

Each function raises :class:`~hybridgl.server.errors.ApiError` with the status and code
docs/SERVER.md lists, never a bare exception.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
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
    """Check an upload from its bytes and headers only (nothing is decoded).

    Every frame of the file is bounded from its format's own headers
    (:func:`hybridgl.imageheader.read_header`); formats whose size cannot be read that
    way are refused. The service runs this on an image thread, under the same
    ``images_in_flight`` bound as decoding (:meth:`ModelService.inspect`).

    Raises:
        ApiError: 415 ``invalid_image`` (empty, not an image in an accepted format,
            corrupt header), 413 ``payload_too_large`` (file over ``max_upload_bytes``)
            or 413 ``image_too_large`` (the canvas or any frame has more pixels than the
            limit).
    """
    from hybridgl.errors import ImageError
    from hybridgl.imageheader import read_header

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
        info = read_header(data)
    except ImageError as e:
        raise ApiError(415, "invalid_image", f"the upload is not a readable image: {e}") from None
    for width, height in ((info.width, info.height), info.largest):
        if width * height > limit:
            raise too_large(width, height, limit)
    if info.defect:
        raise ApiError(415, "invalid_image", f"the upload is not a readable image: {info.defect}")
    return Upload(data, hashlib.sha256(data).hexdigest(), info.width, info.height)


def decode_upload(upload: Upload, settings: ServerSettings) -> np.ndarray:
    """Decode a checked upload to ``(H, W, 3)`` uint8 RGB; 415 when it is corrupt."""
    from hybridgl.errors import ImageError
    from hybridgl.images import load_image

    try:
        return load_image(upload.data, max_pixels=settings.pixel_limit)
    except ImageError as e:
        raise ApiError(415, "invalid_image", str(e)) from None


#: Builds caller proposals ``(N, H, W)`` bool for a decoded image of ``H x W`` pixels.
ProposalsBuilder = Callable[[int, int], np.ndarray]


def _rle_proposals(text: bytes, height: int, width: int, settings: ServerSettings) -> np.ndarray:
    """``(N, H, W)`` bool from a JSON list of COCO RLEs, checked before decoding any."""
    from hybridgl.masks import rle_to_mask

    try:
        items = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"proposals are neither a .npy file nor a JSON list of RLEs: {e}"
        ) from None
    except RecursionError:
        raise ValueError("the proposals JSON is nested too deeply") from None
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise ValueError(
            'proposals JSON must be a list of COCO RLEs {"size": [H, W], "counts": ...}'
        )
    if len(items) > settings.max_proposals:
        raise ValueError(f"{len(items)} proposals; at most {settings.max_proposals} per request")
    for i, rle in enumerate(items):
        if list(rle.get("size", [])) != [height, width]:
            raise ValueError(
                f"proposal {i} has size {rle.get('size')!r}; the image is [{height}, {width}] "
                "(H, W after EXIF rotation)"
            )
    if len(items) * height * width > settings.image_memory_bytes:
        raise ValueError(
            f"{len(items)} masks of {width}x{height} pixels exceed the image memory budget "
            f"of {settings.image_memory_bytes} bytes"
        )
    if not items:
        return np.zeros((0, height, width), dtype=bool)
    return np.stack([rle_to_mask(rle) for rle in items])


def proposals_builder(part: bytes, settings: ServerSettings) -> ProposalsBuilder:
    """Caller proposals from a request part: a ``.npy`` array or a JSON list of COCO RLEs.

    Nothing is decoded here: the returned builder runs after the image is decoded (under
    the same memory bound) and checks everything against the image's size first. Its
    errors are 422 ``invalid_proposals``.
    """
    if not part:
        raise ApiError(422, "invalid_proposals", "the proposals part is empty")

    def build(height: int, width: int) -> np.ndarray:
        from hybridgl.masks import as_proposal_masks
        from hybridgl.proposal_files import read_proposals_npy

        try:
            if part[:6] == b"\x93NUMPY":
                masks = read_proposals_npy(
                    part,
                    height,
                    width,
                    max_proposals=settings.max_proposals,
                    max_bytes=settings.image_memory_bytes,
                )
            else:
                masks = _rle_proposals(part, height, width, settings)
            return as_proposal_masks(masks, height, width)  # the package's one rule
        except ValueError as e:
            raise ApiError(422, "invalid_proposals", str(e)) from None

    return build
