"""The in-memory volume every medical reader returns and every output writes from.

Layout (the NIfTI / nibabel convention, so that the NIfTI output is the array itself):
``data[i, j, k]`` with ``i`` the column of a DICOM image, ``j`` its row and ``k`` the
slice, and ``affine`` mapping ``(i, j, k, 1)`` to RAS+ millimetres (+x toward the patient's
right, +y anterior, +z superior, as NIfTI defines it). DICOM's LPS patient coordinates
are converted by negating x and y.

A 2D slice for segmentation is ``data`` at one index along ``axis``, shown with the
lower remaining axis as columns and the higher as rows: for ``axis=2`` (the default)
that is exactly the stored DICOM image (rows = ``j``, columns = ``i``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybridgl.errors import ImageError, ImageTooLargeError
from hybridgl.medical.window import Window, apply_window, resolve_window

__all__ = ["DEFAULT_MAX_VOXELS", "Volume", "check_voxels"]

DEFAULT_MAX_VOXELS = 1 << 28
"""Largest volume read by default: 268,435,456 voxels (e.g. 512 x 512 x 1024).

Values are held as float32, so this is 1 GiB of memory; the size is read from the
header (DICOM Rows, Columns, Number of Frames and the file count; NIfTI ``dim``) before
any pixel data. Raise it with ``max_voxels`` / ``--max-voxels``."""


def check_voxels(shape: tuple[int, ...], max_voxels: int | None, name: str) -> None:
    """Refuse a volume whose declared ``shape`` has more than ``max_voxels`` voxels."""
    if max_voxels is None:
        return
    total = 1
    for s in shape:
        total *= int(s)
    if total > max_voxels:
        dims = " x ".join(str(int(s)) for s in shape)
        raise ImageTooLargeError(
            f"{name} is too large: {dims} = {total:,} voxels, above the limit of "
            f"{max_voxels:,} (max_voxels; the CLI's --max-voxels)",
            limit=int(max_voxels),
        )


@dataclass
class Volume:
    """A scan: voxel values, their geometry and where they came from.

    Attributes:
        data: ``(I, J, K)`` float32 values after the modality rescale (Hounsfield units
            for CT), or ``(I, J, K, 3)`` uint8 for colour (RGB) data.
        affine: ``(4, 4)`` float64, voxel index -> RAS+ millimetres.
        source: the file or folder read.
        kind: ``"dicom"``, ``"nifti"`` or ``"array"``.
        modality: DICOM Modality (``CT``, ``MR``, ...) when known.
        photometric: ``MONOCHROME1``, ``MONOCHROME2`` or ``RGB``.
        file_window: the window stored in the file (DICOM Window Center/Width), if any.
        geometry_known: False when the file has no patient geometry (the affine is then
            only the pixel spacing, or 1 mm).
        dicom_headers: for DICOM, the source datasets without pixel data: one per slice
            ``k`` of a series, or a single one for a multi-frame file (what DICOM SEG
            references).
        frame_of_slice: for a multi-frame DICOM file, the 1-based frame number of each
            slice ``k``.
        mm_per_unit: millimetres per unit of the affine (1 unless a NIfTI header says
            metres or microns).
        info: other facts worth recording (series UID, transfer syntax, ...).
    """

    data: np.ndarray
    affine: np.ndarray
    source: str = "<array>"
    kind: str = "array"
    modality: str | None = None
    photometric: str = "MONOCHROME2"
    file_window: Window | None = None
    geometry_known: bool = True
    dicom_headers: list[Any] | None = None
    frame_of_slice: list[int] | None = None
    mm_per_unit: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d = self.data
        if not (d.ndim == 3 or (d.ndim == 4 and d.shape[3] == 3)):
            raise ImageError(f"volume data must be (I, J, K) or (I, J, K, 3), got {d.shape}")
        if min(d.shape[:3]) < 1:
            raise ImageError(f"volume is empty: shape {d.shape}")
        a = np.asarray(self.affine, dtype=np.float64)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)):
            raise ImageError(f"affine must be a finite 4 x 4 matrix, got shape {a.shape}")
        self.affine = a

    @classmethod
    def from_array(
        cls,
        data: np.ndarray,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        affine: np.ndarray | None = None,
        modality: str | None = None,
    ) -> Volume:
        """A volume from an ``(I, J, K)`` array (values as given, e.g. HU) and its spacing."""
        arr = np.asarray(data)
        if arr.ndim == 4 and arr.shape[3] == 3 and arr.dtype == np.uint8:
            values = arr
            photometric = "RGB"
        else:
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                raise ImageError(f"volume array must be numeric, got {arr.dtype}")
            values = arr.astype(np.float32, copy=False)
            photometric = "MONOCHROME2"
        if affine is None:
            affine = np.diag([float(spacing[0]), float(spacing[1]), float(spacing[2]), 1.0])
        return cls(
            values, np.asarray(affine, dtype=np.float64), modality=modality, photometric=photometric
        )

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(I, J, K)``."""
        return (int(self.data.shape[0]), int(self.data.shape[1]), int(self.data.shape[2]))

    @property
    def is_rgb(self) -> bool:
        return self.data.ndim == 4

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``i``, ``j``, ``k`` (the affine's column norms)."""
        cols = np.linalg.norm(self.affine[:3, :3], axis=0) * self.mm_per_unit
        return (float(cols[0]), float(cols[1]), float(cols[2]))

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm^3 (``|det|`` of the affine's 3 x 3 part)."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) * self.mm_per_unit**3

    def num_slices(self, axis: int = 2) -> int:
        check_axis(axis)
        return self.shape[axis]

    # ------------------------------------------------------------------ slices
    def slice_values(self, index: int, axis: int = 2) -> np.ndarray:
        """The values of slice ``index`` along ``axis`` as an image: ``(rows, cols[, 3])``."""
        n = self.num_slices(axis)
        if not 0 <= index < n:
            raise IndexError(f"slice {index} is outside 0..{n - 1} along axis {axis}")
        plane = np.take(self.data, index, axis=axis)  # (p, q[, 3]), p < q remaining axes
        return np.ascontiguousarray(np.swapaxes(plane, 0, 1))

    def resolve_window(self, spec: str | tuple[float, float] | Window | None) -> Window | None:
        """The window for this volume (None for RGB data, which is shown as stored)."""
        if self.is_rgb:
            if spec not in (None, "auto"):
                raise ImageError(f"{self.source}: colour (RGB) data takes no window")
            return None
        return resolve_window(
            spec,
            self.data,
            file_window=self.file_window,
            invert=self.photometric == "MONOCHROME1",
        )

    def slice_rgb(self, index: int, axis: int, window: Window | None) -> np.ndarray:
        """Slice ``index`` windowed to an ``(rows, cols, 3)`` uint8 RGB image."""
        values = self.slice_values(index, axis)
        if self.is_rgb:
            return values
        if window is None:
            raise ImageError("gray data needs a window")
        gray = apply_window(values, window)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))

    def mask_to_plane(self, mask: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`slice_values`' layout: an image-shaped mask -> ``(p, q)``."""
        return np.swapaxes(np.asarray(mask), 0, 1)


def check_axis(axis: int) -> None:
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
