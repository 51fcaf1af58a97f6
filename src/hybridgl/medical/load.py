"""One entry point for scans: a path -> :class:`Volume`, or one windowed slice -> RGB."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import ImageError
from hybridgl.limits import DEFAULT_MAX_PIXELS
from hybridgl.medical.volume import DEFAULT_MAX_VOXELS, Volume
from hybridgl.medical.window import Window

__all__ = ["load_medical_image", "read_volume", "window_spec"]


def read_volume(
    path: str | os.PathLike,
    *,
    timepoint: int | None = None,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Volume:
    """Read a DICOM file, a DICOM series folder or a NIfTI file (``.nii``, ``.nii.gz``).

    Args:
        path: the file or folder.
        timepoint: the volume of a 4D NIfTI file.
        max_voxels: the largest volume accepted (checked from the headers first).
        max_pixels: the largest slice accepted (``rows x columns``).

    Raises:
        ImageError: unreadable, unsupported or too large; the message names the file.
        ImportError: the ``medical`` extra is missing.
    """
    from hybridgl.medical.dicom import is_dicom_file, read_dicom
    from hybridgl.medical.nifti import is_nifti_path, read_nifti

    p = Path(path)
    if p.is_dir():
        return read_dicom(p, max_voxels=max_voxels, max_pixels=max_pixels)
    if not p.exists():
        raise ImageError(f"scan not found: {p}")
    if is_nifti_path(p):
        return read_nifti(p, timepoint=timepoint, max_voxels=max_voxels, max_pixels=max_pixels)
    if timepoint is not None:
        raise ImageError(f"{p}: a timepoint applies to 4D NIfTI files only")
    if is_dicom_file(p) or p.suffix.lower() in (".dcm", ".dicom"):
        return read_dicom(p, max_voxels=max_voxels, max_pixels=max_pixels)
    raise ImageError(f"{p} is neither DICOM nor NIfTI (.nii, .nii.gz)")


def window_spec(window: Any) -> Any:
    """``window`` as given by a caller, checked (strings parsed) before any file is read."""
    from hybridgl.medical.window import parse_window

    if window is None or isinstance(window, Window):
        return window
    if isinstance(window, str):
        parse_window(window)
        return window
    level, width = window
    return (float(level), float(width))


def load_medical_image(
    path: str | os.PathLike,
    *,
    window: str | tuple[float, float] | Window | None = None,
    slice_index: int | None = None,
    axis: int = 2,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One slice of a scan, windowed, as the ``(H, W, 3)`` uint8 image the method takes.

    A single-slice file (one DICOM image) needs no ``slice_index``; a volume does.

    Returns:
        ``(image, info)``: ``info`` records the source, the slice, the modality and the
        window used (``Window.to_dict``, None for colour data), for the outputs.
    """
    window = window_spec(window)
    vol = read_volume(path, max_voxels=max_voxels, max_pixels=max_pixels)
    n = vol.num_slices(axis)
    if slice_index is None:
        if n > 1:
            raise ImageError(
                f"{path} holds {n} slices; segment a volume with `hybridgl segment-volume` "
                "(or choose a slice)"
            )
        slice_index = 0
    if not 0 <= slice_index < n:
        raise ImageError(f"{path}: slice {slice_index} is outside 0..{n - 1}")
    win = vol.resolve_window(window)
    image = vol.slice_rgb(slice_index, axis, win)
    info = {
        "source": str(path),
        "kind": vol.kind,
        "modality": vol.modality,
        "photometric": vol.photometric,
        "slice": int(slice_index),
        "axis": int(axis),
        "window": win.to_dict() if win is not None else None,
    }
    return image, info
