"""DICOM SEG output through highdicom, referencing the source series.

A binary segmentation with one segment (the phrase as its label, "automatic" algorithm
``hybridgl``) whose frames reference the source images they were computed on: one frame
per source image of a series (or per frame of a multi-frame source) that holds the
object (highdicom leaves empty frames out). Radiology viewers (3D Slicer with
QuantitativeReporting, OHIF, most PACS) overlay it on the series.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import ImageError
from hybridgl.fileio import atomic_path
from hybridgl.medical._deps import require_highdicom
from hybridgl.medical.volume import Volume

__all__ = ["write_dicom_seg"]


def _frames(labels: np.ndarray, volume: Volume) -> np.ndarray:
    """The label volume as ``(frames, rows, columns)`` in the source's frame order."""
    k_count = labels.shape[2]
    out = np.zeros((k_count, labels.shape[1], labels.shape[0]), dtype=np.uint8)
    frame_of = volume.frame_of_slice or list(range(1, k_count + 1))
    multi = volume.dicom_headers is not None and len(volume.dicom_headers) == 1 and k_count > 1
    for k in range(k_count):
        f = frame_of[k] - 1 if multi else k
        out[f] = labels[:, :, k].T
    return out


def write_dicom_seg(
    labels: np.ndarray,
    volume: Volume,
    path: str | os.PathLike,
    *,
    label: str,
    series_description: str | None = None,
    series_number: int = 9901,
) -> Path:
    """Write ``labels`` (``(I, J, K)``, non-zero inside) as a DICOM SEG of ``volume``'s series.

    Args:
        labels: the label volume (the layout of ``volume.data``).
        volume: a volume read from DICOM (:func:`hybridgl.medical.read_volume`).
        path: the ``.dcm`` file to write (atomically).
        label: the segment's label (the phrase; cut to DICOM's 64 characters).
        series_description: the SEG series' description.
        series_number: the SEG series' number.

    Raises:
        ImageError: the volume is not from DICOM, or highdicom cannot build a SEG for it.
        ImportError: highdicom is missing (the ``medical`` extra).
    """
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    from hybridgl import __version__

    if volume.kind != "dicom" or not volume.dicom_headers:
        raise ImageError(f"a DICOM SEG needs a DICOM source; {volume.source} is {volume.kind}")
    if labels.shape != volume.shape:
        raise ValueError(f"labels {labels.shape} do not match the volume {volume.shape}")
    frames = _frames(np.asarray(labels) > 0, volume)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="hybridgl", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=_lo(label),
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    kwargs: dict[str, Any] = {
        "source_images": list(volume.dicom_headers),
        "pixel_array": frames
        if len(volume.dicom_headers) > 1 or frames.shape[0] > 1
        else frames[0],
        "segmentation_type": hd.seg.SegmentationTypeValues.BINARY,
        "segment_descriptions": [segment],
        "series_instance_uid": hd.UID(),
        "series_number": int(series_number),
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "manufacturer": "hybridgl",
        "manufacturer_model_name": "hybridgl",
        "software_versions": __version__,
        "device_serial_number": "0",
        "series_description": _lo(series_description or f"hybridgl: {label}"),
    }
    try:
        seg = hd.seg.Segmentation(**kwargs)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise ImageError(f"cannot build a DICOM SEG for {volume.source}: {e}") from None
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


def _lo(text: str) -> str:
    """A DICOM LO value: at most 64 characters, no backslash."""
    return str(text).replace("\\", "/")[:64]
