"""Mask formats: COCO RLE, COCO polygons, PNG, and the box convention.

Conventions (shared by the library, the CLI, the server and the evaluation):

* a mask is an ``(H, W)`` bool numpy array; pixel ``(row, col)`` covers the square
  ``[col, col + 1] x [row, row + 1]`` in image coordinates (COCO's convention);
* RLE is COCO *compressed* RLE, ``{"size": [H, W], "counts": str}``, as written by
  ``pycocotools.mask.encode`` with the counts decoded to ASCII so it is JSON-ready;
* polygons are COCO polygon lists ``[x1, y1, x2, y2, ...]`` tracing the *pixel corners*
  of each outer contour, so ``pycocotools.mask.frPyObjects`` (and :func:`polygons_to_mask`)
  rasterise them back to exactly the same pixels; holes are not represented (polygons in
  COCO are a union), so a mask with holes comes back filled;
* boxes are XYWH in pixels, SAM's ``bbox`` convention: ``x`` = min column, ``y`` = min row,
  ``w`` = max column - x, ``h`` = max row - y (a one-pixel mask has ``w = h = 0``);
  an empty mask gives ``(0, 0, 0, 0)``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.fileio import atomic_write_bytes

PathLike = str | os.PathLike

__all__ = [
    "as_proposal_masks",
    "mask_to_box",
    "mask_to_png_bytes",
    "mask_to_polygons",
    "mask_to_rle",
    "masks_to_boxes_xywh",
    "png_to_mask",
    "polygons_to_mask",
    "resize_masks",
    "rle_to_mask",
    "save_mask_png",
]


def _check_mask(mask: np.ndarray) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H, W) array, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        arr = arr != 0
    return arr


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode an ``(H, W)`` mask as COCO compressed RLE.

    Returns:
        ``{"size": [H, W], "counts": str}``, JSON-ready and accepted by
        ``pycocotools.mask.decode`` once ``counts`` is encoded back to bytes (which
        pycocotools also does itself for ``str`` counts).
    """
    from pycocotools import mask as mask_utils

    arr = _check_mask(mask)
    rle = mask_utils.encode(np.asfortranarray(arr.astype(np.uint8)))
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(arr.shape[0]), int(arr.shape[1])], "counts": counts}


def _checked_counts(counts: list[Any]) -> list[int]:
    """Uncompressed RLE counts: non-negative integers below 2**32 (pycocotools' uint)."""
    for c in counts:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < 1 << 32:
            raise ValueError(f"RLE counts must be integers in [0, 2**32), got {c!r}")
    return [int(c) for c in counts]


def _compressed_counts(counts: str | bytes) -> list[int]:
    """The counts of a compressed COCO RLE string (pycocotools' ``rleFrString``, read
    here so that they can be checked before decoding)."""
    data = counts.encode("ascii", "replace") if isinstance(counts, str) else bytes(counts)
    out: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("compressed RLE counts end in the middle of a number")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE counts hold an invalid character {data[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if k > 7:
                raise ValueError("compressed RLE counts hold a number over 32 bits")
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        if not 0 <= x < 1 << 32:
            raise ValueError(f"compressed RLE counts hold an invalid count {x}")
        out.append(x)
    return out


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode COCO RLE (compressed ``str``/``bytes`` counts or an uncompressed list).

    Returns:
        ``(H, W)`` bool mask.

    Every count is checked before pycocotools sees it (its decoder writes as many pixels
    as the counts say, whatever the size): non-negative integers summing to ``H * W``.

    Raises:
        ValueError: the dict is not a valid RLE (wrong types, a bad compressed string,
            counts that do not sum to ``H * W``).
    """
    from pycocotools import mask as mask_utils

    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("RLE must be a dict with 'size' and 'counts'")
    size = rle["size"]
    if not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
    ):
        raise ValueError(f"RLE size must be [H, W] integers, got {size!r}")
    h, w = int(size[0]), int(size[1])
    if h < 0 or w < 0 or h > 1 << 31 or w > 1 << 31:
        raise ValueError(f"RLE size must be non-negative 32-bit integers, got {size!r}")
    counts = rle["counts"]
    if isinstance(counts, list):
        values = _checked_counts(counts)
    elif isinstance(counts, (str, bytes)):
        values = _compressed_counts(counts)
    else:
        raise ValueError(f"RLE counts must be a str, bytes or list, got {type(counts).__name__}")
    if sum(values) != h * w:
        raise ValueError(f"RLE counts sum to {sum(values)}, not H * W = {h * w}")
    if h == 0 or w == 0:
        return np.zeros((h, w), dtype=bool)
    if isinstance(counts, list):
        coded = mask_utils.frPyObjects({"size": [h, w], "counts": values}, h, w)
    else:
        coded = {
            "size": [h, w],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
        }
    try:
        out = mask_utils.decode(coded)
    except Exception as e:  # pycocotools raises bare exceptions on garbage
        raise ValueError(f"invalid RLE: {e}") from None
    return out.astype(bool)


def _simplify_closed(points: np.ndarray) -> np.ndarray:
    """Drop repeated and collinear vertices of a closed integer polygon ``(K, 2)``."""
    if len(points) == 0:
        return points
    # consecutive duplicates (cyclic)
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    if not keep.any():
        return points[:1]
    points = points[keep]
    for _ in range(2):  # one more pass catches vertices exposed by the first
        if len(points) < 3:
            return points
        prev = np.roll(points, 1, axis=0)
        nxt = np.roll(points, -1, axis=0)
        d1 = points - prev
        d2 = nxt - points
        cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
        dot = (d1 * d2).sum(axis=1)
        # collinear and continuing in the same direction: redundant
        redundant = (cross == 0) & (dot > 0)
        if not redundant.any():
            break
        points = points[~redundant]
    return points


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Trace the outer contours of a mask as COCO polygons along pixel corners.

    Each polygon is ``[x1, y1, x2, y2, ...]`` with at least three vertices; the
    vertices are integer pixel corners, so rasterising with :func:`polygons_to_mask`
    (or pycocotools) gives back the mask exactly, except that holes come back filled
    and pixels that touch only diagonally may be decided by the rasteriser.

    Returns:
        One polygon per 8-connected component, largest first; ``[]`` for an empty mask.
    """
    import cv2

    arr = _check_mask(mask)
    if not arr.any():
        return []
    # Upsample by 2: every pixel becomes a 2x2 block, so an outer contour (traced at
    # pixel centres by OpenCV) runs on even coordinates at a block's top/left side and odd
    # coordinates at its bottom/right side. Mapping u -> ceil(u / 2) sends each of them to
    # the pixel corner it stands for.
    up = np.repeat(np.repeat(arr.astype(np.uint8), 2, axis=0), 2, axis=1)
    up = np.pad(up, 1)  # contours touching the border are traced like any other
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polys: list[tuple[int, list[float]]] = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.int64) - 1  # undo the padding; (x, y)
        pts = (pts + 1) // 2
        pts = _simplify_closed(pts)
        if len(pts) < 3:
            continue
        x, y = pts[:, 0].astype(np.float64), pts[:, 1].astype(np.float64)
        area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        polys.append((int(area), [float(v) for v in pts.reshape(-1)]))
    polys.sort(key=lambda p: -p[0])
    return [p for _, p in polys]


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons (union) to an ``(height, width)`` bool mask.

    Polygons with fewer than three vertices are ignored.

    Raises:
        ValueError: a polygon is not a flat list of numbers of even length.
    """
    from pycocotools import mask as mask_utils

    if height < 0 or width < 0:
        raise ValueError(f"size must be non-negative, got {height}x{width}")
    out = np.zeros((int(height), int(width)), dtype=bool)
    if height == 0 or width == 0:
        return out
    valid: list[list[float]] = []
    for poly in polygons:
        try:
            flat = [float(v) for v in poly]
        except (TypeError, ValueError):
            raise ValueError("each polygon must be a flat list of numbers") from None
        if len(flat) % 2:
            raise ValueError("a polygon must have an even number of coordinates")
        if len(flat) >= 6:
            valid.append(flat)
    if not valid:
        return out
    rles = mask_utils.frPyObjects(valid, int(height), int(width))
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def mask_to_png_bytes(mask: np.ndarray) -> bytes:
    """Encode a mask as an 8-bit grayscale PNG (0 background, 255 foreground)."""
    from PIL import Image

    arr = _check_mask(mask)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def png_to_mask(source: bytes | PathLike) -> np.ndarray:
    """Read a mask image (bytes or path): pixels brighter than 127 are foreground.

    Colour and palette images are converted to grayscale first.

    Raises:
        ValueError: the data is not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    src: Any = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source)
    try:
        with Image.open(src) as img:
            img.load()
            gray = img.convert("L")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read mask image: {e}") from None
    return np.asarray(gray) > 127


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """XYWH box of a mask in SAM's convention (``w = max col - min col``).

    Returns ``(0, 0, 0, 0)`` for an empty mask.
    """
    arr = _check_mask(mask)
    rows = np.flatnonzero(arr.any(axis=1))
    if rows.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    cols = np.flatnonzero(arr.any(axis=0))
    x0, x1 = int(cols[0]), int(cols[-1])
    y0, y1 = int(rows[0]), int(rows[-1])
    return (float(x0), float(y0), float(x1 - x0), float(y1 - y0))


def masks_to_boxes_xywh(masks: np.ndarray) -> np.ndarray:
    """XYWH boxes of ``(N, H, W)`` masks, :func:`mask_to_box`'s (SAM's) convention.

    ``x`` = min column, ``y`` = min row, ``w`` = max column - x, ``h`` = max row - y (so a
    one-pixel mask has w = h = 0). Empty masks get ``(0, 0, 0, 0)``.

    Returns:
        ``(N, 4)`` float64.
    """
    arr: np.ndarray = np.asarray(masks)
    if arr.ndim != 3:
        raise ValueError(f"masks must be an (N, H, W) array, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        arr = np.not_equal(arr, 0)
    boxes = np.zeros((arr.shape[0], 4), dtype=np.float64)
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        return boxes
    rows: np.ndarray = np.any(arr, axis=2)  # (N, H)
    cols: np.ndarray = np.any(arr, axis=1)  # (N, W)
    found: np.ndarray = np.any(rows, axis=1)
    y0 = rows.argmax(axis=1)
    y1 = arr.shape[1] - 1 - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = arr.shape[2] - 1 - cols[:, ::-1].argmax(axis=1)
    boxes[found] = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)[found]
    return boxes


def save_mask_png(mask: np.ndarray, path: PathLike) -> Path:
    """Write a mask as an 8-bit 0/255 PNG, atomically."""
    return atomic_write_bytes(path, mask_to_png_bytes(mask))


def as_proposal_masks(array: Any, height: int, width: int) -> np.ndarray:
    """The one binarisation rule for caller-supplied proposals (API, CLI and server).

    A bool array is used as is; a numeric one (integer or float) becomes ``array > 0.5``,
    so a soft mask keeps the pixels where it is more likely inside than not. A single
    ``(H, W)`` mask counts as ``N = 1``.

    Args:
        array: ``(N, H, W)`` or ``(H, W)`` masks (anything ``np.asarray`` accepts).
        height: H of the image the masks belong to.
        width: W of the image.

    Returns:
        ``(N, H, W)`` bool (the input itself when it is already such an array).

    Raises:
        ValueError: NaN values, a non-numeric dtype (strings, objects, complex), or a shape
            other than ``(N, height, width)`` / ``(height, width)``.
    """
    try:
        masks = np.asarray(array)
    except (TypeError, ValueError) as e:  # ragged nested lists, odd objects
        raise ValueError(f"proposals must be a numeric (N, H, W) array: {e}") from None
    if masks.dtype != np.bool_ and masks.dtype.kind not in "iuf":
        raise ValueError(
            f"proposals must be bool or numeric (N, H, W) masks, got dtype {masks.dtype}"
        )
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise ValueError(
            f"proposals must be (N, {height}, {width}) masks matching the image, "
            f"got shape {np.shape(array)}"
        )
    if masks.dtype == np.bool_:
        return masks
    if masks.dtype.kind == "f" and np.isnan(masks).any():
        raise ValueError("proposals contain NaN values")
    return masks > 0.5


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``(N, h, w)`` masks to ``(N, height, width)`` bool, one mask at a time.

    Each mask is resampled as float (area averaging when shrinking, bilinear when
    enlarging, OpenCV) and thresholded at 0.5, so a pixel is inside when more than half
    of what it covers was inside.

    Args:
        masks: ``(N, h, w)`` bool (or 0/1) masks.
        height: output H.
        width: output W.

    Returns:
        ``(N, height, width)`` bool.
    """
    import cv2

    n, h, w = masks.shape
    out = np.zeros((n, height, width), dtype=bool)
    if (h, w) == (height, width):
        out[:] = masks
        return out
    shrink = height * width < h * w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    for i in range(n):
        m = np.asarray(masks[i], dtype=np.float32)
        out[i] = cv2.resize(m, (width, height), interpolation=interp) > 0.5
    return out
