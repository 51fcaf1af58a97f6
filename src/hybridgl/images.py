"""Image loading: paths, PIL images and arrays to ``(H, W, 3)`` uint8 RGB."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hybridgl.errors import ImageError

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray

# A guard against decompression bombs; large but finite (about 180 MP).
Image.MAX_IMAGE_PIXELS = 180_000_000


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        # composite on white rather than dropping alpha onto undefined colours
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").split()[-1])
        img = background
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def load_image(image: ImageInput) -> np.ndarray:
    """Return the image as a C-contiguous ``(H, W, 3)`` uint8 RGB array.

    Accepts a path, encoded bytes, a PIL image or an array (``HxWx3`` uint8; ``HxW``
    grayscale and ``HxWx4`` RGBA are converted). EXIF orientation is applied to
    files and PIL images; grayscale, RGBA and palette images become RGB.

    Raises:
        ImageError: the input cannot be read or has an unsupported shape or dtype.
    """
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            raise ImageError(f"image array must be uint8, got {arr.dtype}")
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[:, :, :3]
        elif arr.ndim == 3 and arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ImageError(f"image array must be HxWx3, got shape {image.shape}")
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ImageError(f"image is empty: shape {image.shape}")
        return np.ascontiguousarray(arr)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, (bytes, bytearray)):
        source: object = io.BytesIO(image)
        name = "<bytes>"
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"image not found: {path}")
        source = path
        name = str(path)
    else:
        raise ImageError(f"unsupported image type {type(image).__name__}")
    try:
        with Image.open(source) as img:  # type: ignore[arg-type]
            img.load()
            return _pil_to_rgb(img)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {name}: {e}") from None
