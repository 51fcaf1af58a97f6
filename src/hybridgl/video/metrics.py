"""Video object segmentation measures exactly as the DAVIS 2017 evaluation defines them.

- **Region similarity J**: the Jaccard index ``|M & G| / |M | G|`` of the predicted mask M
  and the ground truth G; 1 when both are empty.
- **Boundary accuracy F**: the boundaries of M and G (one-pixel boundary maps: a pixel is on
  the boundary when it differs from its right, lower or lower-right neighbour, the DAVIS
  ``seg2bmap`` rule), each dilated by a disk of radius ``ceil(0.008 * image diagonal)``;
  precision = boundary pixels of M within the dilated boundary of G / boundary pixels of M,
  recall = boundary pixels of G within the dilated boundary of M / boundary pixels of G,
  ``F = 2PR / (P + R)`` (0 when both are 0). Empty boundaries: both empty -> P = R = 1;
  only M's empty -> P = 1, R = 0; only G's empty -> P = 0, R = 1.
- **J&F**: the mean of the mean J and the mean F over the frames (of an object, then of a
  dataset: the DAVIS 2017 figure).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np

__all__ = [
    "BOUNDARY_THRESHOLD",
    "boundary_f",
    "boundary_map",
    "disk",
    "j_and_f",
    "region_j",
]

BOUNDARY_THRESHOLD = 0.008
"""Boundary tolerance as a fraction of the image diagonal (DAVIS 2017's ``bound_th``)."""


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"masks must be two (H, W) arrays of one size, got {a.shape}, {b.shape}")
    return a, b


def region_j(mask: np.ndarray, truth: np.ndarray) -> float:
    """Jaccard index of two ``(H, W)`` masks (1.0 when both are empty)."""
    m, g = _check(mask, truth)
    union = np.count_nonzero(m | g)
    if union == 0:
        return 1.0
    return np.count_nonzero(m & g) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a mask, DAVIS's ``seg2bmap`` at the mask's own size."""
    seg = np.asarray(mask, dtype=bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    b[-1, :] = seg[-1, :] ^ east[-1, :]
    b[:, -1] = seg[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """A disk structuring element: ``x^2 + y^2 <= r^2`` on a ``(2r+1)^2`` grid, uint8."""
    r = int(radius)
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y <= r * r).astype(np.uint8)


def boundary_f(mask: np.ndarray, truth: np.ndarray, bound_th: float = BOUNDARY_THRESHOLD) -> float:
    """DAVIS boundary F-measure of two ``(H, W)`` masks (see the module docstring).

    ``bound_th`` >= 1 is a radius in pixels, below 1 a fraction of the diagonal.
    """
    m, g = _check(mask, truth)
    h, w = m.shape
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(h, w))
    fg = boundary_map(m)
    gt = boundary_map(g)
    kernel = disk(int(radius))
    fg_dil = cv2.dilate(fg.astype(np.uint8), kernel).astype(bool)
    gt_dil = cv2.dilate(gt.astype(np.uint8), kernel).astype(bool)
    n_fg = int(np.count_nonzero(fg))
    n_gt = int(np.count_nonzero(gt))
    if n_fg == 0 and n_gt == 0:
        precision = recall = 1.0
    elif n_fg == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = np.count_nonzero(fg & gt_dil) / n_fg
        recall = np.count_nonzero(gt & fg_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def j_and_f(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean J, mean F and J&F over ``(mask, truth)`` pairs (the frames of one object).

    Returns:
        ``{"J": ..., "F": ..., "J&F": ..., "frames": n}``.

    Raises:
        ValueError: no pairs.
    """
    js, fs = [], []
    for m, g in pairs:
        js.append(region_j(m, g))
        fs.append(boundary_f(m, g))
    if not js:
        raise ValueError("j_and_f needs at least one frame")
    j, f = float(np.mean(js)), float(np.mean(fs))
    return {"J": j, "F": f, "J&F": (j + f) / 2, "frames": float(len(js))}
