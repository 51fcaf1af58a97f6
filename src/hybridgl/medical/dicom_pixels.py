"""DICOM pixel data: decoder checks, modality rescale, colour, stored windows, facts.

The helpers :mod:`hybridgl.medical.dicom` reads frames with: every one works on a pydicom
dataset and names the file in its errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import ImageError
from hybridgl.medical.dicom_geometry import first_item
from hybridgl.medical.window import Window


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def check_decoder(ds: Any, path: Path) -> Any:
    from pydicom.pixels import get_decoder

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        raise ImageError(f"cannot decode DICOM {path}: the file names no transfer syntax")
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise ImageError(
            f"cannot decode DICOM {path}: transfer syntax {ts.name} ({ts}) is not supported by pydicom"
        ) from None
    if not decoder.is_available:
        raise ImageError(
            f"cannot decode DICOM {path}: transfer syntax {ts.name} needs a decoder that is not "
            f"installed: {'; or '.join(decoder.missing_dependencies)} (pip install it)"
        )
    return decoder


def decode_error(e: BaseException, path: Path, decoder: Any) -> ImageError:
    msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())[:400]
    missing = getattr(decoder, "missing_dependencies", None)
    extra = f" (decoders not installed: {'; '.join(missing)})" if missing else ""
    return ImageError(f"cannot decode pixel data of DICOM {path}: {msg}{extra}")


DECODE_ERRORS = (
    ValueError,
    RuntimeError,
    NotImplementedError,
    AttributeError,
    KeyError,
    TypeError,
    OSError,
    EOFError,
)


def read_full(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as e:
        raise ImageError(f"cannot read DICOM {path}: {first_line(e)}") from None


def to_rgb8(ds: Any, frame: np.ndarray, path: Path) -> np.ndarray:
    """A decoded colour or palette frame -> ``(rows, cols, 3)`` uint8."""
    from pydicom.pixels import apply_color_lut

    pi = str(ds.get("PhotometricInterpretation", "")).upper()
    if pi == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
        bits = 16 if frame.dtype.itemsize > 1 else 8
    else:
        bits = int(ds.get("BitsStored", 8) or 8)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ImageError(f"{path}: photometric interpretation {pi} gave shape {frame.shape}")
    if frame.dtype == np.uint8 and bits <= 8:
        return frame
    top = float((1 << min(bits, 32)) - 1)
    return np.rint(np.clip(frame.astype(np.float64), 0, top) * (255.0 / top)).astype(np.uint8)


def rescaled(ds: Any, frame: np.ndarray, per_frame: Any | None, shared: Any | None) -> np.ndarray:
    """Stored values -> output values (HU for CT) by the modality LUT, as float32."""
    from pydicom.pixels import apply_modality_lut

    item = None
    for group in (per_frame, shared):
        if group is not None and item is None:
            item = first_item(group, "PixelValueTransformationSequence")
    if item is not None:
        slope = float(item.get("RescaleSlope", 1) or 1)
        intercept = float(item.get("RescaleIntercept", 0) or 0)
        return (frame.astype(np.float64) * slope + intercept).astype(np.float32)
    out = apply_modality_lut(frame, ds)
    scale = ds.get("DoseGridScaling") if str(ds.get("Modality", "")) == "RTDOSE" else None
    if scale is not None and "RescaleSlope" not in ds:
        out = out * float(scale)
    return np.asarray(out, dtype=np.float32)


def photometric_of(ds: Any, path: Path) -> str:
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if pi in ("MONOCHROME1", "MONOCHROME2") and samples == 1:
        return pi
    if pi == "PALETTE COLOR" or (samples == 3 and (pi == "RGB" or pi.startswith("YBR"))):
        return "RGB"
    raise ImageError(f"{path}: unsupported photometric interpretation {pi} ({samples} samples)")


def first_number(value: Any) -> float:
    """A DS/IS value, or the first of a multi-valued one, as a float."""
    if not isinstance(value, (str, bytes, int, float)) and hasattr(value, "__getitem__"):
        value = value[0]
    return float(value)


def file_window(ds: Any, shared: Any | None = None) -> Window | None:
    src = ds
    if "WindowCenter" not in ds and shared is not None:
        src = first_item(shared, "FrameVOILUTSequence")
    if src is None or "WindowCenter" not in src or "WindowWidth" not in src:
        return None
    try:
        return Window(first_number(src.WindowCenter), first_number(src.WindowWidth), "dicom")
    except (TypeError, ValueError, IndexError):
        return None  # a malformed stored window is ignored (auto falls back to percentiles)


def dataset_info(ds: Any, path: Path) -> dict[str, Any]:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return {
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "series_description": str(ds.get("SeriesDescription", "")),
        "transfer_syntax": ts.name if ts is not None else None,
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
    }
