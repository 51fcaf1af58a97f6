"""Synthetic videos with a known mask on every frame (tests and benchmarks).

A virtual camera looks at one photo: it pans, zooms, or pans far enough that the object
leaves the view and comes back. Each frame is the photo seen through the camera (an affine
warp, grey outside the photo) and its mask is the object's mask seen the same way (nearest
neighbour), so every frame has an exact ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import cv2
import numpy as np

__all__ = ["MOTIONS", "camera_frames", "object_center"]

MOTIONS = ("pan", "zoom", "move", "leave")
"""``pan``: the view slides across the photo; ``zoom``: in and out on the object; ``move``:
the view follows a circle around the object (the object moves in the frame); ``leave``: the
view pans away until the object is out of sight, then back."""

_GREY = 114


def object_center(mask: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` of the mask's centre of mass (the image centre for an empty mask)."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return mask.shape[1] / 2.0, mask.shape[0] / 2.0
    return float(xs.mean()), float(ys.mean())


def _view(
    kind: str, t: float, cx: float, cy: float, w: float, h: float
) -> tuple[float, float, float]:
    """Camera centre ``(x, y)`` and scale (output pixels per photo pixel) at time ``t``."""
    if kind == "pan":
        return cx + (t - 0.5) * 0.3 * w, cy, 1.0
    if kind == "zoom":
        return cx, cy, 1.0 + 0.6 * math.sin(math.pi * t)
    if kind == "move":
        a = 2 * math.pi * t
        return cx + 0.15 * w * math.cos(a), cy + 0.15 * h * math.sin(a), 1.0
    if kind == "leave":  # out to 1.6 widths away (the object is out of view) and back
        return cx + 1.6 * w * math.sin(math.pi * t) ** 2, cy, 1.0
    raise ValueError(f"unknown motion {kind!r}; choose one of {', '.join(MOTIONS)}")


def camera_frames(
    image: np.ndarray,
    mask: np.ndarray,
    num_frames: int,
    size: tuple[int, int],
    motion: str = "pan",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(frame (h, w, 3) uint8, mask (h, w) bool)`` for each of ``num_frames`` frames.

    Args:
        image: the photo ``(H, W, 3)`` uint8.
        mask: the object's mask ``(H, W)`` bool.
        num_frames: length of the clip (>= 1).
        size: ``(h, w)`` of the frames; the photo is first scaled to fit it.
        motion: one of :data:`MOTIONS`.
    """
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    oh, ow = size
    H, W = mask.shape
    fit = min(ow / W, oh / H)
    cx, cy = object_center(mask)
    m8 = mask.astype(np.uint8)
    for i in range(num_frames):
        t = i / max(1, num_frames - 1)
        vx, vy, zoom = _view(motion, t, cx, cy, W, H)
        s = fit * zoom
        # output = s * (input - view centre) + output centre
        M = np.array([[s, 0.0, ow / 2.0 - s * vx], [0.0, s, oh / 2.0 - s * vy]], dtype=np.float64)
        frame = cv2.warpAffine(
            image, M, (ow, oh), flags=cv2.INTER_LINEAR, borderValue=(_GREY, _GREY, _GREY)
        )
        fm = cv2.warpAffine(m8, M, (ow, oh), flags=cv2.INTER_NEAREST, borderValue=0)
        yield np.ascontiguousarray(frame), fm.astype(bool)
