"""Medical images and volumes: DICOM and NIfTI in, windows, volume segmentation, outputs.

An annotation assistant, **not a diagnostic device** (docs/MEDICAL.md): it proposes a
text-prompted segmentation for a person to review in a radiology viewer.

Needs the optional extra ``pip install "hybridgl[medical]"`` (pydicom, nibabel,
highdicom). Importing this package is cheap: the extra's packages are imported by the
functions that use them. The public names:

* :func:`read_volume` (DICOM file, multi-frame file, series folder, NIfTI) ->
  :class:`Volume`; :func:`load_medical_image` (one windowed slice for ``segment``);
* :class:`Window`, :data:`CT_PRESETS`, :func:`apply_window`, :func:`resolve_window`;
* :func:`segment_volume` -> :class:`VolumeResult`, :class:`SliceTracker` (the protocol a
  sequence tracker implements);
* :func:`write_nifti_labels`, :func:`write_dicom_seg`, :func:`write_outputs`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__all__ = [
    "CT_PRESETS",
    "SliceTracker",
    "Volume",
    "VolumeResult",
    "Window",
    "apply_window",
    "is_medical_path",
    "load_medical_image",
    "read_volume",
    "resolve_window",
    "segment_volume",
    "write_dicom_seg",
    "write_nifti_labels",
    "write_outputs",
]

_LAZY = {
    "CT_PRESETS": "window",
    "Window": "window",
    "apply_window": "window",
    "resolve_window": "window",
    "Volume": "volume",
    "read_volume": "load",
    "load_medical_image": "load",
    "segment_volume": "propagate",
    "VolumeResult": "propagate",
    "SliceTracker": "tracking",
    "write_nifti_labels": "nifti",
    "write_dicom_seg": "seg",
    "write_outputs": "outputs",
}


def is_medical_path(path: str | os.PathLike) -> bool:
    """True for a DICOM file (``.dcm`` or the ``DICM`` preamble) or a NIfTI name.

    Cheap (a name check and at most 132 bytes read) and imports no extra: the image
    loader uses it to send such files here.
    """
    name = str(path).lower()
    if name.endswith((".dcm", ".dicom", ".nii", ".nii.gz")):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hybridgl.medical' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hybridgl.medical.{module}"), name)
