"""Image loading: paths, bytes, PIL images and arrays to ``(H, W, 3)`` uint8 RGB.

One set of rules for every kind of input (a file, its bytes, a PIL image, an array):

* **Size**: at most ``max_pixels`` pixels (:data:`DEFAULT_MAX_PIXELS` unless told
  otherwise). For files and bytes the size is read from the header, before any pixel is
  decoded, so a 39 KB PNG that claims 18000 x 18000 pixels is refused at once and with
  flat memory. Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` is never changed; its
  decompression-bomb error (over twice that limit, about 179 MP by default) is reported
  as an :class:`~hybridgl.errors.ImageError` too, and its warning never reaches the user.
* **Orientation**: the EXIF orientation of files and PIL images is applied.
* **8 bits**: uint8 data is used as is. **16-bit** data (``I;16`` images, uint16 arrays)
  keeps its high byte, ``v >> 8``: it is what Pillow itself does when it reads a 16-bit
  colour PNG, so a 16-bit picture gives the same pixels whether it is stored as gray or
  colour, and the standard 8-to-16-bit expansion ``v * 257`` comes back exactly.
  32-bit integer images (mode ``I``) are read the same way when every value is in
  ``[0, 65535]`` and refused otherwise. **Float** data (mode ``F``, float arrays) must lie
  in ``[0, 1]`` and becomes ``round(v * 255)``; anything outside (or NaN) is refused
  with an error naming the mode and the range found, never clipped.
* **Channels**: gray (``HxW``, ``HxWx1``, modes ``1``/``L``/``I``/``F``) is repeated
  to RGB; gray + alpha (``HxWx2``, ``LA``) and RGBA (``HxWx4``, ``RGBA``, palette
  images with transparency) are composited on white, the same way for arrays and files;
  every other Pillow mode (CMYK, YCbCr, palette, ...) is converted by Pillow.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hybridgl.errors import ImageError, ImageTooLargeError
from hybridgl.limits import DEFAULT_MAX_PIXELS, check_pixels

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray

__all__ = ["DEFAULT_MAX_PIXELS", "ImageInput", "check_pixels", "load_image", "to_uint8"]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _float_to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.size:
        lo, hi = float(np.min(arr)), float(np.max(arr))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ImageError(f"{what} holds NaN or infinite values; float images must be in [0, 1]")
        if lo < 0.0 or hi > 1.0:
            raise ImageError(
                f"{what} has values in [{lo:g}, {hi:g}]; float images must be in [0, 1] "
                "(scale them, or convert to uint8 or uint16 yourself)"
            )
    return np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)


def to_uint8(arr: np.ndarray, what: str = "image array") -> np.ndarray:
    """Scale pixel values to uint8 by the module's rules (shape unchanged).

    uint8 as is; bool as 0/255; uint16 ``v >> 8``; floats in ``[0, 1]`` as
    ``round(v * 255)``; signed or 32-bit integers only when every value is in
    ``[0, 65535]`` (then as 16-bit).

    Raises:
        ImageError: values outside the documented range, or an unsupported dtype;
            the message names ``what`` (the dtype or Pillow mode) and the range found.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        return _float_to_uint8(arr, what)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size:
            lo, hi = int(np.min(arr)), int(np.max(arr))
            if lo < 0 or hi > 65535:
                raise ImageError(
                    f"{what} has values in [{lo}, {hi}]; integer images must be 8-bit "
                    "[0, 255] (uint8) or 16-bit [0, 65535]"
                )
        return (arr.astype(np.uint16) >> 8).astype(np.uint8)
    raise ImageError(f"{what}: unsupported pixel type {arr.dtype} (use uint8, uint16 or float)")


def _composite_on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGB", img.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.split()[-1])
    return background


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """An 8-bit-or-deeper PIL image (EXIF already applied) to ``(H, W, 3)`` uint8."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        gray = to_uint8(np.asarray(img), what=f"image mode {mode}")
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    try:
        if mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            img = _composite_on_white(img)
        elif img.mode != "RGB":
            img = img.convert("RGB")
    except ValueError as e:  # e.g. "conversion from LAB to RGB not supported"
        raise ImageError(f"unsupported image mode {mode}: {e}") from None
    return np.asarray(img, dtype=np.uint8).copy()


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (2, 3, 4))):
        raise ImageError(
            f"image array must be HxW, HxWx1 (gray), HxWx2 (gray+alpha), HxWx3 (RGB) "
            f"or HxWx4 (RGBA), got shape {arr.shape}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"image is empty: shape {arr.shape}")
    arr = to_uint8(arr, what=f"image array of dtype {arr.dtype}")
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    mode = "LA" if arr.shape[2] == 2 else "RGBA"
    # through Pillow, so that alpha is composited exactly as for an RGBA file
    return _pil_to_rgb(Image.fromarray(np.ascontiguousarray(arr), mode=mode))


def _open(source: Any, name: str, max_pixels: int | None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # the size is checked against max_pixels below, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
    except Image.DecompressionBombError:
        # over twice Pillow's own limit: Pillow will not open it, so read the size from
        # the header with the format plugin and refuse it by OUR limit, like any other
        size = _header_size(source)
        if size is None:  # pragma: no cover - Pillow found a size, so a plugin can too
            raise ImageTooLargeError(
                f"image {name} is too large: above twice Pillow's limit of "
                f"{Image.MAX_IMAGE_PIXELS:,} pixels, so above the limit of "
                f"{max_pixels or 0:,} (max_pixels; the CLI's --max-pixels)",
                limit=max_pixels,
            ) from None
        width, height = size
        check_pixels(height, width, max_pixels, name=f"image {name}")
        raise ImageTooLargeError(
            f"image {name} is too large: {width} x {height} = {width * height:,} pixels, "
            f"more than Pillow can open (twice PIL.Image.MAX_IMAGE_PIXELS)",
            height=height,
            width=width,
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"cannot read image {name}: {e}") from None
    with img:
        return _decode(img, f"image {name}", max_pixels)


def _header_size(source: Any) -> tuple[int, int] | None:
    """``(width, height)`` from the header, by the format plugins, without Pillow's bomb check.

    Only called after Pillow refused the image as a decompression bomb, to report its size
    against our limit; nothing is decoded.
    """
    Image.init()
    with open(source, "rb") if isinstance(source, (str, os.PathLike)) else _rewound(source) as fp:
        prefix = fp.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            found = accept(prefix) if accept else True
            if not found or isinstance(found, str):  # a str: a warning, not a match
                continue
            try:
                fp.seek(0)
                with factory(fp, "") as im:
                    return int(im.size[0]), int(im.size[1])
            except (SyntaxError, IndexError, TypeError, ValueError, OSError):
                continue
    return None


def _is_medical(path: str | os.PathLike) -> bool:
    from hybridgl.medical import is_medical_path

    return is_medical_path(path)


def _rewound(fp: Any) -> Any:
    fp.seek(0)
    return contextlib.nullcontext(fp)


def _decode(img: Image.Image, name: str, max_pixels: int | None) -> np.ndarray:
    """Check the size (known before decoding), decode, apply EXIF orientation, convert."""
    width, height = img.size
    check_pixels(height, width, max_pixels, name=name)
    try:
        img.load()
        upright = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot read {name}: {e}") from None
    return _pil_to_rgb(upright)


def load_image(
    image: ImageInput,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    *,
    window: Any = None,
) -> np.ndarray:
    """Return the image as a C-contiguous ``(H, W, 3)`` uint8 RGB array.

    Accepts a path, encoded bytes, a PIL image or an array, all by the rules of this
    module's docstring (16-bit as ``v >> 8``, floats in ``[0, 1]``, alpha composited on
    white, gray to RGB, EXIF orientation applied to files and PIL images).

    A path to a single-slice DICOM file (or NIfTI) is read by :mod:`hybridgl.medical`
    instead (extra ``hybridgl[medical]``): its values (HU for CT) are shown through a
    display window, never reduced to a high byte.

    Args:
        image: the image.
        max_pixels: largest accepted ``height * width``; None accepts any size. Files
            and bytes are checked from their header, before decoding.
        window: DICOM / NIfTI only: the display window (a CT preset such as
            ``"abdomen"``, ``(level, width)``, ``"p1-99"``; None: the file's own window,
            else percentiles; see :mod:`hybridgl.medical.window`).

    Raises:
        ImageError: the input cannot be read, is too large (the subclass
            :class:`~hybridgl.errors.ImageTooLargeError`), or has an unsupported shape,
            dtype, mode or value range.
    """
    if window is not None and not (isinstance(image, (str, os.PathLike)) and _is_medical(image)):
        raise ImageError("a display window applies to DICOM and NIfTI files only")
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            check_pixels(image.shape[0], image.shape[1], max_pixels, name="image array")
        return _array_to_rgb(image)
    if isinstance(image, Image.Image):
        return _decode(image, "image", max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _open(io.BytesIO(bytes(image)), "<bytes>", max_pixels)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"image not found: {path}")
        if _is_medical(path):
            from hybridgl.medical.load import load_medical_image

            return load_medical_image(path, window=window, max_pixels=max_pixels)[0]
        return _open(path, str(path), max_pixels)
    raise ImageError(f"unsupported image type {type(image).__name__}")


#: File suffixes taken as images when a folder is scanned (batch, index).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def is_image_name(path: Path) -> bool:
    """True for a file name with one of :data:`IMAGE_EXTENSIONS` (any letter case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def scan_image_folder(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), sorted: the one folder scan."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_name(p))
