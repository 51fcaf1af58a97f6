"""NIfTI in and out (``.nii``, ``.nii.gz``) through nibabel, keeping the affine.

Reading checks the header's ``dim`` field against ``max_voxels`` / ``max_pixels`` and,
for an uncompressed file, that the file really holds the bytes the header declares,
before any voxel is read. A 4D file needs the volume (time point) to use. Values are
nibabel's scaled values (``scl_slope`` / ``scl_inter`` applied) as float32; RGB24 files
become colour volumes.

Writing produces a label volume (uint8, or uint16 above 255 labels) with the input's
affine in both the sform and the qform, so that viewers (3D Slicer, ITK-SNAP) overlay it
on the scan; the file is written atomically.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import ImageError
from hybridgl.fileio import atomic_write_bytes
from hybridgl.limits import DEFAULT_MAX_PIXELS, check_pixels
from hybridgl.medical._deps import require_nibabel
from hybridgl.medical.volume import DEFAULT_MAX_VOXELS, Volume, check_voxels

__all__ = ["is_nifti_path", "read_nifti", "write_nifti_labels"]

_UNIT_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}
_READ_ERRORS = (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, MemoryError)


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True for names ending in ``.nii`` or ``.nii.gz``."""
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def read_nifti(
    path: str | os.PathLike,
    *,
    timepoint: int | None = None,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Volume:
    """Read a NIfTI-1 or NIfTI-2 file as a :class:`Volume`.

    Args:
        path: ``.nii`` or ``.nii.gz``.
        timepoint: the volume of a 4D file to read (0-based); required for 4D files
            with more than one volume.
        max_voxels, max_pixels: size limits, checked from the header first.

    Raises:
        ImageError: unreadable, too large, truncated, or not 3D (the message names the file).
        ImportError: nibabel is missing (the ``medical`` extra).
    """
    require_nibabel()
    try:
        return _read_nifti(path, timepoint, max_voxels, max_pixels)
    except (ImageError, ImportError):
        raise
    except Exception as e:  # a malformed header value nibabel met: name the input
        raise ImageError(
            f"cannot read NIfTI {path}: {type(e).__name__}: {_first_line(e)}"
        ) from None


def _read_nifti(
    path: str | os.PathLike,
    timepoint: int | None,
    max_voxels: int | None,
    max_pixels: int | None,
) -> Volume:
    nib = require_nibabel()
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"NIfTI file not found: {p}")
    name = f"NIfTI {p}"
    try:
        img = nib.load(str(p))
    except _READ_ERRORS as e:
        raise ImageError(f"cannot read {name}: {_first_line(e)}") from None
    except Exception as e:  # nibabel's own header errors (HeaderDataError, ImageFileError)
        raise ImageError(f"cannot read {name}: {_first_line(e)}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageError(f"{p} is not a NIfTI image ({type(img).__name__})")
    header = img.header
    dim = [int(d) for d in header["dim"]]
    ndim = dim[0]
    if not 2 <= ndim <= 7 or any(d < 1 for d in dim[1 : ndim + 1]):
        raise ImageError(f"{name}: invalid dim field {dim}")
    shape = tuple(dim[1 : ndim + 1])
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) > 4:
        raise ImageError(
            f"{name}: {len(shape)}D data ({shape}) is not supported; give a 3D or 4D file"
        )
    check_pixels(shape[1], shape[0], max_pixels, name=name)
    check_voxels(shape[:3], max_voxels, name)
    n_volumes = shape[3] if len(shape) == 4 else 1
    if timepoint is None and n_volumes > 1:
        raise ImageError(
            f"{name} is 4D with {n_volumes} volumes; choose one (timepoint=, --timepoint)"
        )
    t = 0 if timepoint is None else int(timepoint)
    if not 0 <= t < n_volumes:
        raise ImageError(f"{name}: timepoint {t} is outside 0..{n_volumes - 1}")
    dtype = header.get_data_dtype()
    if not p.name.lower().endswith(".gz"):
        need = (
            int(header.get("vox_offset", 0) or 0)
            + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        )
        size = p.stat().st_size
        if size < need:
            raise ImageError(f"{name} is truncated: {size:,} bytes, the header declares {need:,}")
    try:
        proxy = img.dataobj
        raw = np.asarray(proxy[:, :, :, t] if n_volumes > 1 else proxy[...])
    except _READ_ERRORS as e:
        raise ImageError(
            f"cannot read voxels of {name} (truncated or corrupt?): {_first_line(e)}"
        ) from None
    except Exception as e:  # zlib.error and nibabel's own
        raise ImageError(
            f"cannot read voxels of {name} (truncated or corrupt?): {_first_line(e)}"
        ) from None
    raw = raw.reshape(shape[:3])  # drops trailing dimensions of size 1
    if raw.dtype.names is not None:  # RGB24 / RGBA32
        if raw.dtype.names[:3] != ("R", "G", "B"):
            raise ImageError(f"{name}: unsupported voxel type {raw.dtype}")
        data = np.stack([raw["R"], raw["G"], raw["B"]], axis=-1).astype(np.uint8)
        photometric = "RGB"
    else:
        if not np.issubdtype(raw.dtype, np.number) or np.iscomplexobj(raw):
            raise ImageError(f"{name}: unsupported voxel type {raw.dtype}")
        data = np.asarray(raw, dtype=np.float32)
        photometric = "MONOCHROME2"
    unit = header.get_xyzt_units()[0]
    sform, scode = img.get_sform(coded=True)
    qform, qcode = img.get_qform(coded=True)
    return Volume(
        data,
        np.asarray(img.affine, dtype=np.float64),
        source=str(p),
        kind="nifti",
        photometric=photometric,
        geometry_known=bool(int(scode or 0) or int(qcode or 0)),
        mm_per_unit=_UNIT_MM.get(unit, 1.0),
        info={
            "nifti_version": 2 if isinstance(img, nib.Nifti2Image) else 1,
            "sform_code": int(scode or 0),
            "qform_code": int(qcode or 0),
            "spatial_unit": unit,
            "volumes": n_volumes,
            "timepoint": t,
        },
    )


def write_nifti_labels(
    labels: np.ndarray, affine: np.ndarray, path: str | os.PathLike, *, like: Volume | None = None
) -> Path:
    """Write an ``(I, J, K)`` label volume as ``.nii`` / ``.nii.gz``, atomically.

    The affine goes into both the sform and the qform (with the source's codes when
    ``like`` is a NIfTI volume, else "scanner", 1), and the spatial unit is the source's
    (mm otherwise), so the file lines up with the scan it was computed from.
    """
    nib = require_nibabel()
    p = Path(path)
    if not is_nifti_path(p):
        raise ValueError(f"a NIfTI output must end in .nii or .nii.gz, got {p}")
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise ValueError(f"labels must be (I, J, K), got shape {arr.shape}")
    dtype = np.uint8 if int(arr.max(initial=0)) <= 255 else np.uint16
    img = nib.Nifti1Image(arr.astype(dtype, copy=False), np.asarray(affine, dtype=np.float64))
    info: dict[str, Any] = like.info if like is not None else {}
    img.set_sform(affine, code=int(info.get("sform_code") or 1))
    img.set_qform(affine, code=int(info.get("qform_code") or 1))
    img.header.set_xyzt_units(xyz=str(info.get("spatial_unit") or "mm").replace("unknown", "mm"))
    img.header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    data = img.to_bytes()
    if p.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return atomic_write_bytes(p, data)
