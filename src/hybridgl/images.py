"""Image loading: paths, bytes, PIL images and arrays to ``(H, W, 3)`` uint8 RGB.

One set of rules for every kind of input (a file, its bytes, a PIL image, an array):

* **Size**: at most ``max_pixels`` pixels (:data:`DEFAULT_MAX_PIXELS` unless told
  otherwise). For files and bytes the canvas and *every frame* are read from the format's
  own headers (:mod:`hybridgl.imageheader`) before Pillow sees the file, so a 39 KB PNG
  that claims 18000 x 18000 pixels, or an icon whose 16 x 16 entry holds a huge PNG, is
  refused at once and with flat memory; formats whose size cannot be read that way are
  refused. Pillow then opens the file with that format's plugin only. Pillow's
  process-wide ``Image.MAX_IMAGE_PIXELS`` is never changed; its decompression-bomb error
  (over twice that limit, about 179 MP by default) is reported as an
  :class:`~hybridgl.errors.ImageTooLargeError` too, and its warning never reaches the user.
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

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from hybridgl.errors import ImageError, ImageTooLargeError
from hybridgl.imageheader import read_header
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
    if (
        np.issubdtype(arr.dtype, np.integer)
        and arr.dtype not in (np.uint8, np.uint16)
        and arr.size
        and 0 <= int(np.min(arr))
        and int(np.max(arr)) <= 255
    ):
        # e.g. np.array(pil_image, dtype=int) or a sum of uint8 arrays: as 16-bit it would
        # come out black, as 8-bit it might be a dark 16-bit picture: refuse, never guess
        raise ImageError(
            f"image array of dtype {arr.dtype} has values in [0, 255], which is ambiguous: "
            "convert it to uint8 for 8-bit pixels (arr.astype(np.uint8)) or to uint16 for "
            "16-bit pixels"
        )
    arr = to_uint8(arr, what=f"image array of dtype {arr.dtype}")
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    mode = "LA" if arr.shape[2] == 2 else "RGBA"
    # through Pillow, so that alpha is composited exactly as for an RGBA file
    return _pil_to_rgb(Image.fromarray(np.ascontiguousarray(arr), mode=mode))


def _open(source: Any, name: str, max_pixels: int | None) -> np.ndarray:
    """Bound every frame from the format's own headers, then let only that format's
    plugin open and decode the file (:mod:`hybridgl.imageheader`)."""
    try:
        info = read_header(source)
    except ImageError as e:
        raise ImageError(f"cannot read image {name}: {e}") from None
    except OSError as e:
        raise ImageError(f"cannot read image {name}: {e.strerror or e}") from None
    check_pixels(info.height, info.width, max_pixels, name=f"image {name}")
    width, height = info.largest
    check_pixels(height, width, max_pixels, name=f"a frame of image {name}")
    if info.defect:
        raise ImageError(f"cannot read image {name}: {info.defect}")
    try:
        with warnings.catch_warnings():
            # the size was checked against max_pixels above, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source, formats=[info.format])
    except Image.DecompressionBombError:
        # over twice Pillow's own limit (only reached with max_pixels=None or above it)
        raise ImageTooLargeError(
            f"image {name} is too large: {width} x {height} = {width * height:,} pixels, "
            f"more than Pillow can open (twice PIL.Image.MAX_IMAGE_PIXELS)",
            height=height,
            width=width,
        ) from None
    except Exception as e:  # noqa: BLE001 - a hostile file: any decoder error is bad input
        raise ImageError(f"cannot read image {name}: {_message(e, source, name)}") from None
    with img:
        if img.size[0] * img.size[1] > width * height:  # pragma: no cover - defence
            raise ImageError(
                f"cannot read image {name}: Pillow reads a size of {img.size[0]} x "
                f"{img.size[1]}, larger than its headers say ({width} x {height})"
            )
        return _decode(img, f"image {name}", max_pixels)


def _is_medical(path: str | os.PathLike) -> bool:
    from hybridgl.medical import is_medical_path

    return is_medical_path(path)


def _message(error: BaseException, source: Any, name: str) -> str:
    """A decoder's message, with the repr of an in-memory file replaced by its name."""
    text = str(error).strip() or type(error).__name__
    if source is not None and not isinstance(source, (str, os.PathLike)):
        text = text.replace(repr(source), name)
    return text


def _decode(img: Image.Image, name: str, max_pixels: int | None) -> np.ndarray:
    """Check the size (known before decoding), decode, apply EXIF orientation, convert."""
    width, height = img.size
    check_pixels(height, width, max_pixels, name=name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            upright = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as e:  # a frame larger than the size Pillow read
        raise ImageTooLargeError(f"{name} is too large: {e}", limit=max_pixels) from None
    except Exception as e:  # noqa: BLE001 - a hostile file: any decoder error is bad input
        raise ImageError(
            f"cannot read {name}: {_message(e, getattr(img, 'fp', None), name)}"
        ) from None
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


def scan_image_folder(
    folder: Path, on_error: Callable[[Path, OSError], None] | None = None
) -> list[Path]:
    """Every image file under ``folder`` (recursively), sorted: the one folder scan.

    A subfolder that cannot be read (permissions) is passed to ``on_error`` with the
    error (an index run records it as a failure), or skipped when it is None.
    """

    def unreadable(e: OSError) -> None:
        if on_error is not None:
            on_error(Path(e.filename if e.filename is not None else folder), e)

    found = []
    for root, _dirs, names in os.walk(folder, onerror=unreadable):
        for name in names:
            p = Path(root) / name
            if is_image_name(p) and p.is_file():
                found.append(p)
    return sorted(found)
