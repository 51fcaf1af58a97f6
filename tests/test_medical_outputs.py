"""Outputs of a volume segmentation: NIfTI labels (affine round trip), DICOM SEG (read back
by highdicom, frames referencing the right source images), overlays and the JSON summary;
and the ``segment-volume`` / ``segment`` commands on DICOM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from medical_support import dicom_file, nibabel, nibabel_data, pydicom, write_series

from hybridgl.cli.common import EXIT_INPUT, EXIT_OK, EXIT_USAGE
from hybridgl.cli.main import main
from hybridgl.errors import ImageError
from hybridgl.medical.load import read_volume
from hybridgl.medical.nifti import write_nifti_labels
from hybridgl.medical.outputs import overlay_png, write_outputs
from hybridgl.medical.propagate import SliceRecord, VolumeResult
from hybridgl.medical.window import Window

hd = pytest.importorskip("highdicom")


def _result(vol, labels: np.ndarray, window: Window | None = None) -> VolumeResult:
    found = [int(k) for k in np.where(labels.any((0, 1)))[0]]
    records = [SliceRecord(k, True, "grounding", int(labels[:, :, k].sum()), 0.5) for k in found]
    return VolumeResult(
        labels,
        "the liver",
        2,
        found[0] if found else None,
        {},
        window,
        records,
        vol.voxel_volume_mm3,
    )


@pytest.mark.parametrize("source", ["series", "nifti"])
def test_nifti_labels_keep_the_affine(tmp_path: Path, source: str) -> None:
    if source == "series":
        write_series(tmp_path / "s", n=4, spacing=3.0)
        vol = read_volume(tmp_path / "s")
    else:
        vol = read_volume(nibabel_data("anatomical.nii"))
    labels = np.zeros(vol.shape, np.uint8)
    labels[5:20, 6:30, 1:3] = 1
    out = write_nifti_labels(labels, vol.affine, tmp_path / "labels.nii.gz", like=vol)
    back = nibabel.load(out)
    assert back.shape == vol.shape
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels)
    assert back.get_data_dtype() == np.uint8
    # the label volume re-read through hybridgl lines up voxel for voxel
    again = read_volume(out)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-5)


@pytest.mark.slow
def test_dicom_seg_references_the_source_images(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n=5, spacing=2.0)
    vol = read_volume(tmp_path / "s")
    labels = np.zeros(vol.shape, np.uint8)
    labels[10:40, 20:70, 1] = 1
    labels[15:45, 25:60, 3] = 1
    doc = write_outputs(
        _result(vol, labels), vol, json_path=tmp_path / "s.json", seg=tmp_path / "seg.dcm"
    )
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG" and int(seg.NumberOfFrames) == 2  # empty slices left out
    assert seg.SegmentSequence[0].SegmentLabel == "the liver"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.info["series_instance_uid"]
    by_uid = {h.SOPInstanceUID: k for k, h in enumerate(vol.dicom_headers)}
    pixels = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    seen = set()
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = by_uid[uid]
        seen.add(k)
        np.testing.assert_array_equal(pixels[f], labels[:, :, k].T)
        # the frame sits where its source image is
        pos = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert pos == pytest.approx([float(v) for v in vol.dicom_headers[k].ImagePositionPatient])
    assert seen == {1, 3}
    assert doc["outputs"]["seg"] == str(tmp_path / "seg.dcm")
    with pytest.raises(ImageError, match="needs a DICOM source"):
        write_outputs(
            _result(vol, labels),
            read_volume(nibabel_data("anatomical.nii")),
            seg=tmp_path / "x.dcm",
        )


def test_summary_volume_in_ml_and_window(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n=3, spacing=5.0)
    vol = read_volume(tmp_path / "s")
    labels = np.zeros(vol.shape, np.uint8)
    labels[0:10, 0:10, 0:2] = 1  # 200 voxels of 0.661468 x 0.661468 x 5 mm
    win = vol.resolve_window("liver")
    doc = write_outputs(_result(vol, labels, win), vol, json_path=tmp_path / "summary.json")
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == doc
    assert saved["voxels"] == 200
    assert saved["volume_ml"] == pytest.approx(200 * 0.661468**2 * 5.0 / 1000, rel=1e-5)
    assert saved["window"]["level"] == 30 and saved["window"]["width"] == 150
    assert saved["window"]["source"] == "preset:liver"
    assert saved["extent"] == [0, 1] and "not a diagnostic device" in saved["note"]


def test_overlay_png_records_the_window() -> None:
    from PIL import Image

    image = np.zeros((20, 30, 3), np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:10] = True
    data = overlay_png(
        image, mask, SliceRecord(4, True, "key", 25), "the liver", Window(50, 400, "preset:abdomen")
    )
    import io

    img = Image.open(io.BytesIO(data))
    assert img.size == (30, 20)
    assert json.loads(img.text["hybridgl:window"])["source"] == "preset:abdomen"
    assert json.loads(img.text["hybridgl:slice"])["index"] == 4


# ---------------------------------------------------------------------- CLI
@pytest.fixture
def tiny_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_tiny_segmenters: dict) -> None:
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")
    monkeypatch.setenv("HYBRIDGL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HYBRIDGL_WEIGHTS_DIR", raising=False)


def test_cli_bad_input_fails_before_models(tmp_path: Path, tiny_env: None, capsys) -> None:
    write_series(tmp_path / "s", n=2)
    out = str(tmp_path / "o")
    assert (
        main(["segment-volume", str(tmp_path / "s"), "x", "--out", out, "--window", "nope"])
        == EXIT_USAGE
    )
    nii = nibabel_data("anatomical.nii")
    assert (
        main(["segment-volume", nii, "x", "--out", out, "--seg", str(tmp_path / "a.dcm")])
        == EXIT_USAGE
    )
    assert (
        main(["segment-volume", nii, "x", "--out", out, "--nifti", str(tmp_path / "a.png")])
        == EXIT_USAGE
    )
    assert main(["segment-volume", nii, "x", "--out", out, "--keyslice", "99"]) == EXIT_USAGE
    assert main(["segment-volume", str(tmp_path / "missing"), "x", "--out", out]) == EXIT_INPUT
    assert main(["segment-volume", dicom_file("MR_truncated.dcm"), "x", "--out", out]) == EXIT_INPUT
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 5000
    ds.save_as(tmp_path / "huge.dcm")
    assert main(["segment-volume", str(tmp_path / "huge.dcm"), "x", "--out", out]) == EXIT_INPUT
    assert main(["segment", str(tmp_path / "huge.dcm"), "x"]) == EXIT_INPUT
    assert main(["segment", dicom_file("CT_small.dcm"), "x", "--window", "p5"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "huge.dcm" in err and "MR_truncated.dcm" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_segment_volume_and_segment_on_dicom(tmp_path: Path, tiny_env: None, capsys) -> None:
    write_series(tmp_path / "s", n=3, spacing=2.0)
    out = tmp_path / "o"
    code = main(
        [
            "segment-volume",
            str(tmp_path / "s"),
            "the liver",
            "--out",
            str(out),
            "--window",
            "abdomen",
            "--seg",
            str(out / "seg.dcm"),
            "--keyslice",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert code == EXIT_OK
    err = capsys.readouterr().err
    assert "slice 1 (1 visited of 3): key found" in err
    doc = json.loads((out / "summary.json").read_text())
    assert doc["key_slice"] == 1 and doc["window"]["source"] == "preset:abdomen"
    vol = read_volume(tmp_path / "s")
    labels = nibabel.load(out / "labels.nii.gz")
    np.testing.assert_allclose(labels.affine, vol.affine, atol=1e-5)
    assert int(np.asarray(labels.dataobj).sum()) == doc["voxels"]
    assert len(doc["outputs"]["overlays"]) == len(doc["slices"])
    assert hd.seg.segread(out / "seg.dcm").Modality == "SEG"
    js = tmp_path / "one.json"
    assert (
        main(
            [
                "segment",
                dicom_file("CT_small.dcm"),
                "the left kidney",
                "--window",
                "40,400",
                "--json",
                str(js),
                "--device",
                "cpu",
            ]
        )
        == EXIT_OK
    )
    rec = json.loads(js.read_text())
    assert rec["medical"]["window"]["source"] == "explicit" and rec["medical"]["modality"] == "CT"
    # a 4D NIfTI, one time point
    nii = nibabel_data("functional.nii")
    out2 = tmp_path / "n"
    code = main(
        [
            "segment-volume",
            nii,
            "the bright part",
            "--out",
            str(out2),
            "--timepoint",
            "0",
            "--keyslice",
            "1",
            "--window",
            "p1-99",
            "--no-overlays",
            "--device",
            "cpu",
        ]
    )
    assert code == EXIT_OK
    doc = json.loads((out2 / "summary.json").read_text())
    assert doc["axis"] == 2 and doc["key_slice"] == 1 and doc["outputs"]["overlays"] == []
    assert doc["window"]["source"] == "percentile:1-99" and doc["shape"] == [17, 21, 3]
    back = nibabel.load(out2 / "labels.nii.gz")
    np.testing.assert_allclose(back.affine, nibabel.load(nii).affine, atol=1e-5)
    assert back.shape == (17, 21, 3) and int(np.asarray(back.dataobj).sum()) == doc["voxels"]


def test_cli_without_the_medical_extra_is_a_usage_error(
    tmp_path: Path, tiny_env: None, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    out = str(tmp_path / "o")
    assert main(["segment-volume", dicom_file("CT_small.dcm"), "x", "--out", out]) == EXIT_USAGE
    assert main(["segment", dicom_file("CT_small.dcm"), "x"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count('pip install "hybridgl[medical]"') == 2 and "Traceback" not in err
