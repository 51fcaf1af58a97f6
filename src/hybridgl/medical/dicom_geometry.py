"""DICOM patient geometry: slice order along the normal and the voxel-to-RAS affine.

DICOM places each image by Image Position Patient (the centre of its first pixel, in
LPS millimetres) and Image Orientation Patient (the directions of a row and of a column);
Pixel Spacing is (between rows, between columns). The volume's affine maps
``(i = column, j = row, k = slice)`` to RAS+ millimetres, LPS with x and y negated
(PS3.3 C.7.6.2.1.1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hybridgl.errors import ImageError


def floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def first_item(ds: Any, *path: str) -> Any | None:
    """``ds.A[0].B[0]...`` for sequence keywords, or None."""
    cur = ds
    for kw in path:
        seq = cur.get(kw) if cur is not None else None
        if not seq:
            return None
        cur = seq[0]
    return cur


def orientation(ds: Any, shared: Any | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None and shared is not None:
        item = first_item(shared, "PlaneOrientationSequence")
        iop = item.get("ImageOrientationPatient") if item is not None else None
    v = floats(iop, 6) if iop is not None else None
    if v is None:
        return None
    row, col = v[:3], v[3:]
    if np.linalg.norm(row) < 1e-6 or np.linalg.norm(col) < 1e-6:
        return None
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def pixel_spacing(ds: Any, shared: Any | None = None) -> tuple[float, float] | None:
    ps = ds.get("PixelSpacing")
    if ps is None and shared is not None:
        item = first_item(shared, "PixelMeasuresSequence")
        ps = item.get("PixelSpacing") if item is not None else None
    v = floats(ps, 2) if ps is not None else None
    if v is None or np.any(v <= 0):
        return None
    return float(v[0]), float(v[1])  # (between rows, between columns)


def thickness(ds: Any, shared: Any | None = None) -> float:
    for source in (
        ds,
        first_item(shared, "PixelMeasuresSequence") if shared is not None else None,
    ):
        if source is None:
            continue
        for kw in ("SpacingBetweenSlices", "SliceThickness"):
            try:
                v = float(source.get(kw) or 0)
            except (TypeError, ValueError):
                v = 0.0
            if v > 0 and np.isfinite(v):
                return v
    return 1.0


def affine_from(
    row: np.ndarray,
    col: np.ndarray,
    spacing: tuple[float, float],
    origin: np.ndarray,
    step: np.ndarray,
) -> np.ndarray:
    """Voxel ``(i=column, j=row, k=slice)`` -> RAS+ mm (DICOM LPS with x and y negated)."""
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[1]
    lps[:3, 1] = col * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def stack_geometry(
    positions: list[np.ndarray], row: np.ndarray, col: np.ndarray, what: str
) -> tuple[list[int], np.ndarray]:
    """Order of the slices along the normal, and the step vector between them."""
    normal = np.cross(row, col)
    dist = np.asarray([float(p @ normal) for p in positions])
    order = [int(i) for i in np.argsort(dist, kind="stable")]
    if len(order) == 1:
        return order, normal
    d = np.diff(dist[order])
    if np.any(d < 1e-3):
        raise ImageError(
            f"{what}: {int(np.sum(d < 1e-3)) + 1} images share a slice position; it holds "
            "more than one acquisition (put one stack per folder)"
        )
    mean = float(d.mean())
    if float(np.max(np.abs(d - mean))) > 0.05 * mean + 0.01:
        raise ImageError(
            f"{what}: slice spacing varies from {d.min():.3g} to {d.max():.3g} mm "
            "(missing slices?); a volume needs evenly spaced slices"
        )
    step = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    return order, step
