"""Overlays: a prediction drawn on its image, for people to look at."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PathLike = str | os.PathLike

__all__ = ["overlay", "save_image"]


def overlay(
    image: np.ndarray,
    mask: np.ndarray | None,
    box: Sequence[float] | None = None,
    label: str | None = None,
    color: tuple[int, int, int] = (255, 64, 64),
    alpha: float = 0.5,
) -> np.ndarray:
    """Draw a mask, its box and a label on a copy of an image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` bool (or 0/1) mask, tinted with ``color`` at opacity ``alpha``
            and outlined; ``None`` draws no mask.
        box: XYWH in pixels, SAM convention (the outline runs through columns ``x`` and
            ``x + w`` and rows ``y`` and ``y + h``); ``None`` or an all-zero box draws none.
        label: text drawn at the box's top-left corner (top-left of the image without a
            box) with PIL's default font on a dark background.
        color: RGB tint of the mask and colour of the box.
        alpha: mask opacity in ``[0, 1]``.

    Returns:
        A new ``(H, W, 3)`` uint8 array; the input is not modified.

    Raises:
        ValueError: shapes do not match or ``alpha`` is out of range.
    """
    from PIL import Image, ImageDraw, ImageFont

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {img.dtype} {img.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = img.shape[:2]
    out = img.astype(np.float32)
    tint = np.asarray(color, dtype=np.float32).reshape(1, 3)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != (h, w):
            raise ValueError(f"mask shape {m.shape} does not match image shape {(h, w)}")
        m = m.astype(bool)
        if m.any():
            out[m] = out[m] * (1.0 - alpha) + tint * alpha
            # outline: mask pixels with a 4-neighbour outside the mask
            padded = np.pad(m, 1)
            interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
            edge = m & ~interior
            out[edge] = tint
    result = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(result)
    width = max(1, round(min(h, w) / 200))
    anchor = (2, 2)
    if box is not None and any(float(v) != 0.0 for v in box):
        x, y, bw, bh = (float(v) for v in box)
        draw.rectangle([x, y, x + bw, y + bh], outline=tuple(color), width=width)
        anchor = (int(x), int(y))
    if label:
        font = ImageFont.load_default()
        text = " ".join(str(label).split())  # one line
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        tx = min(max(anchor[0], 0), max(w - tw, 0))
        ty = anchor[1] - th if anchor[1] - th >= 0 else min(anchor[1], max(h - th, 0))
        draw.rectangle([tx, ty, tx + tw - 1, ty + th - 1], fill=(0, 0, 0))
        draw.text((tx + 2 - left, ty + 2 - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(result, dtype=np.uint8).copy()


def save_image(image: np.ndarray, path: PathLike, quality: int = 90) -> Path:
    """Write an ``(H, W, 3)`` uint8 image atomically; the format follows the extension.

    Raises:
        ValueError: the extension is not an image format PIL can write.
    """
    from PIL import Image

    from hybridgl.fileio import atomic_write_bytes

    target = Path(path)
    ext = target.suffix.lower()
    formats = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}
    if ext not in formats:
        raise ValueError(
            f"cannot write image {target}: unknown extension {ext!r} "
            f"(use one of {', '.join(sorted(formats))})"
        )
    buf = io.BytesIO()
    kwargs = {"quality": quality} if formats[ext] in ("JPEG", "WEBP") else {}
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="RGB").save(
        buf, format=formats[ext], **kwargs
    )
    return atomic_write_bytes(target, buf.getvalue())
