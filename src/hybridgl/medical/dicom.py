"""DICOM in: single files, multi-frame files and series folders, into a :class:`Volume`.

Rules (docs/MEDICAL.md, "Formats"):

* **Size first.** Rows, Columns, Number of Frames and the number of files are read from
  the headers (``stop_before_pixels``, large values deferred) and checked against
  ``max_pixels`` (per slice) and ``max_voxels`` (per volume) before any pixel data is
  read; a file larger than the pixel data it could hold is refused too.
* **Series order** is the position along the slice normal (Image Position Patient
  projected on the cross product of the Image Orientation Patient directions), never the
  file name. A folder with several series, orientations, image sizes or repeated
  positions is refused, naming the series.
* **Values**: the modality rescale (Rescale Slope / Intercept, or a Modality LUT) is
  applied through pydicom's ``apply_modality_lut`` (per frame for enhanced multi-frame
  files): CT values are Hounsfield units. MONOCHROME1 is marked so that windows invert
  it; YBR data is converted to RGB by pydicom's decoders, palette colour through its
  LUT.
* **Compressed** transfer syntaxes decode through the plugins pydicom documents (Pillow,
  pyjpegls, pylibjpeg, GDCM); a syntax whose decoders are not installed is one error
  naming them.
* Every failure (not DICOM, truncated pixel data, undecodable) is an
  :class:`~hybridgl.errors.ImageError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import ImageError
from hybridgl.limits import DEFAULT_MAX_PIXELS, check_pixels
from hybridgl.medical._deps import require_pydicom
from hybridgl.medical.dicom_geometry import (
    affine_from,
    first_item,
    floats,
    orientation,
    pixel_spacing,
    stack_geometry,
    thickness,
)
from hybridgl.medical.dicom_pixels import (
    DECODE_ERRORS,
    check_decoder,
    dataset_info,
    decode_error,
    file_window,
    first_line,
    photometric_of,
    read_full,
    rescaled,
    to_rgb8,
)
from hybridgl.medical.volume import DEFAULT_MAX_VOXELS, Volume, check_voxels

__all__ = ["MAX_SERIES_FILES", "is_dicom_file", "read_dicom"]

#: Most files read from one series folder (headers are read before any pixel data).
MAX_SERIES_FILES = 10_000

_DEFER = 1 << 20  # values over 1 MB stay on disk while headers are read


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(
    path: str | os.PathLike,
    *,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Volume:
    """Read a DICOM file (single- or multi-frame) or a series folder as a :class:`Volume`.

    Raises:
        ImageError: not DICOM, no image, mixed series, too large
            (:class:`~hybridgl.errors.ImageTooLargeError`), truncated or undecodable
            pixel data; the message names the file or folder.
        ImportError: pydicom is missing (the ``medical`` extra).
    """
    require_pydicom()
    p = Path(path)
    try:
        if p.is_dir():
            return _read_series(p, max_voxels, max_pixels)
        if not p.is_file():
            raise ImageError(f"DICOM file or folder not found: {p}")
        header = _header(p)
        if header is None:
            raise ImageError(f"cannot read DICOM {p}: no pixel data (not an image)")
        return _read_file(p, header, max_voxels, max_pixels)
    except (ImageError, ImportError):
        raise
    except Exception as e:  # a malformed value pydicom met while parsing: name the input
        raise ImageError(f"cannot read DICOM {p}: {type(e).__name__}: {first_line(e)}") from None


# ---------------------------------------------------------------------- headers
def _header(path: Path, *, quiet: bool = False) -> Any | None:
    """The dataset up to the pixel data, or None when the file holds no image."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=_DEFER)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as e:
        if quiet:
            return None
        raise ImageError(f"cannot read DICOM {path}: {first_line(e)}") from None
    if "Rows" not in ds or "Columns" not in ds:
        return None
    return ds


def _int(ds: Any, keyword: str, default: int | None, path: Path) -> int:
    value = ds.get(keyword, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageError(f"{path}: {keyword} is not a number ({value!r})") from None


def _dims(ds: Any, path: Path) -> tuple[int, int, int, int, int]:
    """``(rows, cols, frames, samples, bits_allocated)`` from a header, validated."""
    rows = _int(ds, "Rows", None, path)
    cols = _int(ds, "Columns", None, path)
    frames = _int(ds, "NumberOfFrames", 1, path) or 1
    samples = _int(ds, "SamplesPerPixel", 1, path)
    bits = _int(ds, "BitsAllocated", 16, path)
    if rows < 1 or cols < 1 or frames < 1 or samples not in (1, 3) or bits not in (1, 8, 16, 32):
        raise ImageError(
            f"{path}: unsupported image layout: {rows} rows, {cols} columns, {frames} "
            f"frames, {samples} samples per pixel, {bits} bits allocated"
        )
    return rows, cols, frames, samples, bits


def _check_size(
    ds: Any, path: Path, n_files: int, max_voxels: int | None, max_pixels: int | None
) -> None:
    rows, cols, frames, samples, bits = _dims(ds, path)
    check_pixels(rows, cols, max_pixels, name=f"DICOM {path}")
    check_voxels((cols, rows, frames * n_files), max_voxels, f"DICOM {path}")
    # the file itself is read into memory: it may not be larger than its pixel data
    # could be (uncompressed) plus room for the header
    limit = rows * cols * frames * samples * max(bits, 8) // 8 + (16 << 20)
    size = path.stat().st_size
    if size > limit:
        raise ImageError(
            f"DICOM {path} is {size:,} bytes, more than its declared {cols} x {rows} x "
            f"{frames} image could need ({limit:,} bytes)"
        )


# ---------------------------------------------------------------------- readers
def _alloc(cols: int, rows: int, n: int, rgb: bool) -> np.ndarray:
    return np.empty((cols, rows, n, 3) if rgb else (cols, rows, n), np.uint8 if rgb else np.float32)


def _store(
    out: np.ndarray,
    k: int,
    frame: np.ndarray,
    ds: Any,
    path: Path,
    rgb: bool,
    per_frame: Any | None = None,
    shared: Any | None = None,
) -> None:
    if rgb:
        if frame.ndim == 2:  # palette colour: indices, one sample
            frame = to_rgb8(ds, frame, path)
        elif frame.shape[-1] == 3:
            frame = to_rgb8(ds, frame, path)
        out[:, :, k] = frame.transpose(1, 0, 2)
    else:
        if frame.ndim != 2:
            raise ImageError(
                f"{path}: decoded frame has shape {frame.shape}, expected one sample per pixel"
            )
        out[:, :, k] = rescaled(ds, frame, per_frame, shared).T


def _read_file(path: Path, header: Any, max_voxels: int | None, max_pixels: int | None) -> Volume:
    from pydicom.pixels import iter_pixels

    _check_size(header, path, 1, max_voxels, max_pixels)
    rows, cols, frames, _samples, _bits = _dims(header, path)
    photometric = photometric_of(header, path)
    decoder = check_decoder(header, path)
    ds = read_full(path)
    if "PixelData" not in ds:
        raise ImageError(f"cannot read DICOM {path}: no pixel data (not an image)")
    shared = first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or None
    if per_frame is not None and len(per_frame) != frames:
        per_frame = None
    orient = orientation(ds, shared)
    spacing = pixel_spacing(ds, shared)
    positions: list[np.ndarray] | None = None
    if per_frame is not None:
        found = [first_item(item, "PlanePositionSequence") for item in per_frame]
        pos = [floats(f.get("ImagePositionPatient"), 3) if f is not None else None for f in found]
        positions = None if any(p is None for p in pos) else [p for p in pos if p is not None]
    else:
        ipp = floats(ds.get("ImagePositionPatient"), 3) if "ImagePositionPatient" in ds else None
        offsets = ds.get("GridFrameOffsetVector")
        if ipp is not None and frames == 1:
            positions = [ipp]
        elif (
            ipp is not None
            and orient is not None
            and offsets is not None
            and len(offsets) == frames
        ):
            normal = np.cross(*orient)
            positions = [ipp + float(o) * normal for o in offsets]
    if orient is not None and positions is not None:
        order, step = stack_geometry(positions, orient[0], orient[1], f"DICOM {path}")
        if frames == 1:
            step = step * thickness(ds, shared)
        affine = affine_from(orient[0], orient[1], spacing or (1.0, 1.0), positions[order[0]], step)
        known = spacing is not None
    else:  # no patient geometry (ultrasound cine, secondary capture): frames as stored
        order = list(range(frames))
        dr, dc = spacing or (1.0, 1.0)
        affine = np.diag([dc, dr, thickness(ds, shared), 1.0])
        known = False
    slot = {f: k for k, f in enumerate(order)}
    rgb = photometric == "RGB"
    out = _alloc(cols, rows, frames, rgb)
    try:
        for f, frame in enumerate(iter_pixels(ds)):
            if f >= frames:
                break
            pf = per_frame[f] if per_frame is not None else None
            _store(out, slot[f], frame, ds, path, rgb, pf, shared)
    except ImageError:
        raise
    except DECODE_ERRORS as e:
        raise decode_error(e, path, decoder) from None
    header_only = _header(path)
    return Volume(
        out,
        affine,
        source=str(path),
        kind="dicom",
        modality=str(ds.get("Modality", "")) or None,
        photometric="RGB" if rgb else photometric,
        file_window=None if rgb else file_window(ds, shared),
        geometry_known=known,
        dicom_headers=[header_only] if header_only is not None else None,
        frame_of_slice=[f + 1 for f in order],
        info={**dataset_info(ds, path), "frames": frames},
    )


def _read_series(folder: Path, max_voxels: int | None, max_pixels: int | None) -> Volume:
    from pydicom.pixels import pixel_array

    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    if len(files) > MAX_SERIES_FILES:
        raise ImageError(
            f"DICOM folder {folder} has {len(files):,} files, above {MAX_SERIES_FILES:,}"
        )
    found = [(f, h) for f in files if (h := _header(f, quiet=True)) is not None]
    if not found:
        raise ImageError(f"no DICOM images in folder {folder}")
    series: dict[str, list[tuple[Path, Any]]] = {}
    for f, h in found:
        series.setdefault(str(h.get("SeriesInstanceUID", "?")), []).append((f, h))
    if len(series) > 1:
        parts = [
            f"{uid} ({str(items[0][1].get('SeriesDescription', '')) or 'no description'}, {len(items)} files)"
            for uid, items in series.items()
        ]
        raise ImageError(
            f"DICOM folder {folder} mixes {len(series)} series: {'; '.join(parts)}; put one series per folder"
        )
    uid = next(iter(series))
    if len(found) == 1:
        return _read_file(found[0][0], found[0][1], max_voxels, max_pixels)
    what = f"DICOM series {uid} in {folder}"
    dims = {_dims(h, f)[:3] for f, h in found}
    if len(dims) > 1 or next(iter(dims))[2] != 1:
        raise ImageError(
            f"{what}: images differ in size or are multi-frame ({sorted(dims)}); read a multi-frame file on its own"
        )
    _check_size(found[0][1], found[0][0], len(found), max_voxels, max_pixels)
    rows, cols, _frames = next(iter(dims))
    photometric = {photometric_of(h, f) for f, h in found}
    if len(photometric) > 1:
        raise ImageError(f"{what}: mixes photometric interpretations {sorted(photometric)}")
    orients = [orientation(h) for _f, h in found]
    positions = [
        floats(h.get("ImagePositionPatient"), 3) if "ImagePositionPatient" in h else None
        for _f, h in found
    ]
    first = orients[0]
    geometric = first is not None and all(o is not None for o in orients)
    geometric = geometric and all(p is not None for p in positions)
    if geometric and first is not None:
        if not all(
            o is not None
            and np.allclose(o[0], first[0], atol=1e-3)
            and np.allclose(o[1], first[1], atol=1e-3)
            for o in orients
        ):
            raise ImageError(f"{what}: images have different orientations (several stacks?)")
        pos = [p for p in positions if p is not None]
        order, step = stack_geometry(pos, first[0], first[1], what)
        spacing = pixel_spacing(found[0][1])
        affine = affine_from(first[0], first[1], spacing or (1.0, 1.0), pos[order[0]], step)
        known = spacing is not None
    else:  # no geometry: Instance Number order
        order = sorted(
            range(len(found)), key=lambda i: int(found[i][1].get("InstanceNumber", 0) or 0)
        )
        dr, dc = pixel_spacing(found[0][1]) or (1.0, 1.0)
        affine = np.diag([dc, dr, thickness(found[0][1]), 1.0])
        known = False
    rgb = photometric == {"RGB"}
    out = _alloc(cols, rows, len(found), rgb)
    for k, i in enumerate(order):
        path, header = found[i]
        decoder = check_decoder(header, path)
        ds = read_full(path)
        try:
            frame = pixel_array(ds)
            _store(out, k, frame, ds, path, rgb)
        except ImageError:
            raise
        except DECODE_ERRORS as e:
            raise decode_error(e, path, decoder) from None
        del ds
    ref = found[order[0]][1]
    return Volume(
        out,
        affine,
        source=str(folder),
        kind="dicom",
        modality=str(ref.get("Modality", "")) or None,
        photometric="RGB" if rgb else next(iter(photometric)),
        file_window=None if rgb else file_window(ref),
        geometry_known=known,
        dicom_headers=[found[i][1] for i in order],
        info={
            **dataset_info(ref, folder),
            "files": len(found),
            "order": "position" if known else "instance_number",
        },
    )
