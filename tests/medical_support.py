"""Helpers for the medical tests: the real files pydicom and nibabel ship, and synthetic
series built from them in a temporary folder (nothing is copied into the repository)."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip(
    "pydicom", reason='needs the medical extra: pip install "hybridgl[medical]"'
)
nibabel = pytest.importorskip(
    "nibabel", reason='needs the medical extra: pip install "hybridgl[medical]"'
)

from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402


def dicom_file(name: str) -> str:
    """A file pydicom ships, through its own data helper (skip when it is not installed)."""
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not available")
    return str(path)


def nibabel_data(name: str) -> str:
    from nibabel.testing import data_path

    path = Path(data_path) / name
    if not path.is_file():
        pytest.skip(f"nibabel test file {name} is not available")
    return str(path)


def write_series(
    folder: Path,
    n: int = 6,
    spacing: float = 2.5,
    shuffle: bool = True,
    series_uid: str | None = None,
    values: list[np.ndarray] | None = None,
    z0: float = -40.0,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
) -> list[float]:
    """A synthetic CT series built from CT_small: slice ``k`` at ``z0 + k * spacing`` along
    the normal, stored value ``k * 100 + original`` (so the order can be checked), written
    under shuffled file names. Returns the z position of each slice k."""
    base = pydicom.dcmread(dicom_file("CT_small.dcm"))
    uid = series_uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"IMG{i:04d}.dcm" for i in range(n)]
    if shuffle:
        random.Random(7).shuffle(names)
    row = np.asarray(orientation[:3], float)
    col = np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    positions = []
    for k in range(n):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n - k  # deliberately the opposite of the position order
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        pos = np.asarray([-158.0, -179.0, 0.0]) + (z0 + k * spacing) * normal
        ds.ImagePositionPatient = [float(v) for v in pos]
        positions.append(z0 + k * spacing)
        arr = base.pixel_array.astype(np.int16) + np.int16(k * 100) if values is None else values[k]
        ds.PixelData = np.ascontiguousarray(arr.astype(np.int16)).tobytes()
        ds.save_as(folder / names[k], enforce_file_format=True)
    return positions
