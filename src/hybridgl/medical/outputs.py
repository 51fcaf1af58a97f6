"""Results of a volume segmentation as files: per-slice overlays, NIfTI, DICOM SEG, JSON.

Every output records the window the slices were shown through (the JSON summary; the
overlays' PNG text chunks ``hybridgl:window`` and their label).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.fileio import atomic_write_bytes, atomic_write_json
from hybridgl.medical.propagate import SliceRecord, VolumeResult
from hybridgl.medical.volume import Volume
from hybridgl.medical.window import Window

__all__ = ["DISCLAIMER", "overlay_png", "summary", "write_outputs"]

DISCLAIMER = (
    "hybridgl is an annotation assistant, not a diagnostic device: every result is a "
    "proposal for a qualified person to review."
)


def overlay_png(
    image: np.ndarray, mask: np.ndarray, record: SliceRecord, expression: str, window: Window | None
) -> bytes:
    """One slice with its mask drawn, as PNG bytes carrying the window in a text chunk."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from hybridgl.viz import overlay

    state = "found" if record.found else "absent"
    label = f"{expression} | slice {record.index} | {state}"
    if window is not None:
        label += f" | L {window.level:g} W {window.width:g}"
    drawn = overlay(image, mask if record.found else None, label=label)
    meta = PngInfo()
    meta.add_text("hybridgl:window", json.dumps(window.to_dict() if window is not None else None))
    meta.add_text("hybridgl:slice", json.dumps(record.to_dict()))
    meta.add_text("hybridgl:note", DISCLAIMER)
    buf = io.BytesIO()
    Image.fromarray(drawn).save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()


def summary(
    result: VolumeResult, volume: Volume, outputs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON summary: the result, the scan's geometry, the window and the outputs."""
    return {
        "note": DISCLAIMER,
        "source": volume.source,
        "kind": volume.kind,
        "modality": volume.modality,
        "shape": list(volume.shape),
        "spacing_mm": [float(s) for s in volume.spacing],
        "affine": [[float(v) for v in row] for row in volume.affine],
        "geometry_known": volume.geometry_known,
        "series_instance_uid": volume.info.get("series_instance_uid"),
        **result.to_dict(),
        "outputs": outputs or {},
    }


def write_outputs(
    result: VolumeResult,
    volume: Volume,
    *,
    json_path: str | os.PathLike | None = None,
    nifti: str | os.PathLike | None = None,
    seg: str | os.PathLike | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the NIfTI labels, the DICOM SEG and the JSON summary (each atomically).

    Returns:
        The summary written (or that would be written when ``json_path`` is None).
    """
    from hybridgl.medical.nifti import write_nifti_labels

    outputs: dict[str, Any] = dict(extra or {})
    if nifti is not None:
        outputs["nifti"] = str(write_nifti_labels(result.labels, volume.affine, nifti, like=volume))
    if seg is not None:
        from hybridgl.medical.seg import write_dicom_seg

        outputs["seg"] = str(write_dicom_seg(result.labels, volume, seg, label=result.expression))
    doc = summary(result, volume, outputs)
    if json_path is not None:
        atomic_write_json(json_path, doc)
    return doc


def write_overlay(
    path: str | os.PathLike,
    image: np.ndarray,
    mask: np.ndarray,
    record: SliceRecord,
    expression: str,
    window: Window | None,
) -> Path:
    """:func:`overlay_png` written to ``path`` atomically."""
    return atomic_write_bytes(path, overlay_png(image, mask, record, expression, window))
