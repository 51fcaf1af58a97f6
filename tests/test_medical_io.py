"""DICOM and NIfTI reading, windows and hostile files, with the files pydicom and nibabel
ship (through their own data helpers) and synthetic series built from them."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
from medical_support import dicom_file, nibabel, nibabel_data, pydicom, write_series

from hybridgl.errors import ImageError, ImageTooLargeError
from hybridgl.medical.load import load_medical_image, read_volume
from hybridgl.medical.window import (
    CT_PRESETS,
    Window,
    apply_window,
    parse_window,
    percentile_window,
    resolve_window,
)


def _stored_plane(vol, k: int = 0) -> np.ndarray:
    """Slice k in the DICOM image layout (rows, columns)."""
    return vol.slice_values(k, axis=2)


# ---------------------------------------------------------------------- values
def test_ct_hu_equal_pydicom_modality_lut() -> None:
    from pydicom.pixels import apply_modality_lut

    path = dicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds)
    vol = read_volume(path)
    assert vol.shape == (128, 128, 1) and vol.modality == "CT"
    assert float(ds.RescaleIntercept) == -1024  # so the check below is a real rescale
    np.testing.assert_array_equal(_stored_plane(vol), expected.astype(np.float32))
    # geometry: pixel spacing and slice thickness, RAS (LPS with x and y negated)
    assert vol.spacing == pytest.approx((0.661468, 0.661468, 5.0))
    ipp = [float(v) for v in ds.ImagePositionPatient]
    np.testing.assert_allclose(vol.affine[:3, 3], [-ipp[0], -ipp[1], ipp[2]])


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
    ],
)
def test_compressed_and_big_endian_equal_the_uncompressed_file(name: str) -> None:
    ref = read_volume(dicom_file("MR_small.dcm"))
    try:
        vol = read_volume(dicom_file(name))
    except ImageError as e:  # a decoder that is not installed here
        if "not installed" in str(e):
            pytest.skip(str(e))
        raise
    np.testing.assert_array_equal(vol.data, ref.data)
    np.testing.assert_allclose(vol.affine, ref.affine)
    assert vol.file_window == Window(600, 1600, "dicom")


def test_missing_decoder_is_one_error_naming_it_and_the_file() -> None:
    from pydicom.pixels import get_decoder

    path = dicom_file("SC_rgb_jpeg_gdcm.dcm")  # JPEG Lossless, process 14
    if get_decoder(
        pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    ).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    with pytest.raises(ImageError, match="pylibjpeg") as info:
        read_volume(path)
    assert "SC_rgb_jpeg_gdcm.dcm" in str(info.value) and "JPEG Lossless" in str(info.value)
    assert "\n" not in str(info.value)


def test_multiframe_rtdose_frames_by_position() -> None:
    path = dicom_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    vol = read_volume(path)
    assert vol.shape == (10, 10, 15) and vol.frame_of_slice is not None
    frames = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
    offsets = [float(v) for v in ds.GridFrameOffsetVector]
    for k, f in enumerate(vol.frame_of_slice):
        np.testing.assert_allclose(_stored_plane(vol, k), frames[f - 1], rtol=1e-6)
    # slices go up along the normal, by the grid offsets' step
    z = [offsets[f - 1] for f in vol.frame_of_slice]
    assert z == sorted(z)
    assert vol.spacing[2] == pytest.approx(abs(offsets[1] - offsets[0]))


def test_rgb_ybr_and_palette_become_rgb() -> None:
    rgb = read_volume(dicom_file("SC_rgb_rle_2frame.dcm"))
    ds = pydicom.dcmread(dicom_file("SC_rgb_rle_2frame.dcm"))
    assert rgb.is_rgb and rgb.shape == (100, 100, 2)
    np.testing.assert_array_equal(rgb.slice_values(1), ds.pixel_array[1])
    ybr = read_volume(
        dicom_file("examples_ybr_color.dcm")
    )  # JPEG baseline, YBR_FULL_422, 30 frames
    assert ybr.is_rgb and ybr.shape == (320, 240, 30)
    # 16-bit colour is scaled by its stored bits, not cut to a high byte
    rgb16 = read_volume(dicom_file("SC_rgb_rle_16bit.dcm"))
    raw = pydicom.dcmread(dicom_file("SC_rgb_rle_16bit.dcm")).pixel_array.astype(np.float64)
    np.testing.assert_array_equal(
        rgb16.slice_values(0), np.rint(raw * 255 / 65535).astype(np.uint8)
    )
    pal = read_volume(dicom_file("examples_palette.dcm"))
    assert pal.is_rgb and pal.data.dtype == np.uint8
    with pytest.raises(ImageError, match="takes no window"):
        rgb.resolve_window("abdomen")


def test_monochrome1_windows_inverted(tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    m1 = read_volume(tmp_path / "m1.dcm")
    m2 = read_volume(dicom_file("CT_small.dcm"))
    w1 = m1.resolve_window("abdomen")
    assert w1.invert and not m2.resolve_window("abdomen").invert
    np.testing.assert_array_equal(
        m1.slice_rgb(0, 2, w1), 255 - m2.slice_rgb(0, 2, m2.resolve_window("abdomen"))
    )


# ---------------------------------------------------------------------- series
def test_series_sorted_by_position_not_file_name(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    z = write_series(folder, n=6, spacing=2.5, shuffle=True)
    (folder / "notes.txt").write_text("not DICOM")  # ignored
    vol = read_volume(folder)
    base = pydicom.dcmread(dicom_file("CT_small.dcm")).pixel_array.astype(np.float32) - 1024
    assert vol.shape == (128, 128, 6)
    for k in range(6):
        np.testing.assert_array_equal(_stored_plane(vol, k), base + 100 * k)
    assert vol.spacing[2] == pytest.approx(2.5)
    assert vol.affine[2, 3] == pytest.approx(z[0])
    # the headers (SEG references) follow the same order
    assert [float(h.ImagePositionPatient[2]) for h in vol.dicom_headers] == pytest.approx(z)


def test_series_tilted_orientation_sorted_along_the_normal(tmp_path: Path) -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    orient = (1, 0, 0, 0, c, s)  # rows along x, columns tilted in y-z
    folder = tmp_path / "tilted"
    write_series(folder, n=4, spacing=3.0, orientation=orient)
    vol = read_volume(folder)
    base = pydicom.dcmread(dicom_file("CT_small.dcm")).pixel_array.astype(np.float32) - 1024
    for k in range(4):
        np.testing.assert_array_equal(_stored_plane(vol, k), base + 100 * k)
    assert vol.spacing[2] == pytest.approx(3.0)


def test_mixed_series_refused_naming_them(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_series(folder / "a", n=2, series_uid="1.2.3.4.1")
    write_series(folder / "b", n=2, series_uid="1.2.3.4.2", z0=100)
    for sub in ("a", "b"):
        for f in (folder / sub).iterdir():
            f.rename(folder / f"{sub}_{f.name}")
    with pytest.raises(ImageError, match="mixes 2 series") as info:
        read_volume(folder)
    assert "1.2.3.4.1" in str(info.value) and "1.2.3.4.2" in str(info.value)


def test_repeated_positions_and_gaps_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "dup", n=3, spacing=0.0)
    with pytest.raises(ImageError, match="share a slice position"):
        read_volume(tmp_path / "dup")
    write_series(tmp_path / "gap", n=4)
    files = sorted(
        (tmp_path / "gap").iterdir(),
        key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]),
    )
    files[1].unlink()
    with pytest.raises(ImageError, match="slice spacing varies"):
        read_volume(tmp_path / "gap")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no DICOM images"):
        read_volume(tmp_path / "empty")


# ---------------------------------------------------------------------- hostile files
def test_header_declaring_a_huge_volume_is_refused_before_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 5000
    path = tmp_path / "huge.dcm"
    ds.save_as(path)
    assert path.stat().st_size < 100_000
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="huge.dcm"):
        read_volume(path)
    with pytest.raises(ImageTooLargeError, match="voxels"):  # per-slice limit off: the volume one
        read_volume(path, max_pixels=None)
    assert time.perf_counter() - t0 < 5


def test_truncated_and_corrupt_dicom_are_one_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="MR_truncated.dcm.*less than expected"):
        read_volume(dicom_file("MR_truncated.dcm"))
    data = Path(dicom_file("CT_small.dcm")).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 9000])
    with pytest.raises(ImageError, match="cut.dcm"):
        read_volume(cut)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    with pytest.raises(ImageError, match="junk.dcm"):
        read_volume(junk)
    with pytest.raises(ImageError, match="no pixel data"):
        read_volume(dicom_file("rtplan.dcm"))


def test_file_larger_than_its_declared_image_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.Rows, ds.Columns = 4, 4
    ds.PixelData = bytes(17 << 20)  # 17 MB behind a 4 x 4 image header
    ds.save_as(tmp_path / "liar.dcm")
    with pytest.raises(ImageError, match="more than its declared"):
        read_volume(tmp_path / "liar.dcm", max_voxels=None)


# ---------------------------------------------------------------------- NIfTI
def test_nifti_values_and_affine() -> None:
    path = nibabel_data("anatomical.nii")
    img = nibabel.load(path)
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.data, img.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(vol.affine, img.affine)
    assert vol.kind == "nifti" and vol.spacing == pytest.approx((2.0, 2.0, 2.0))


def test_nifti_4d_needs_a_timepoint() -> None:
    path = nibabel_data("example4d.nii.gz")
    with pytest.raises(ImageError, match="4D with 2 volumes"):
        read_volume(path)
    vol = read_volume(path, timepoint=1)
    np.testing.assert_array_equal(vol.data, nibabel.load(path).get_fdata(dtype=np.float32)[..., 1])
    with pytest.raises(ImageError, match="outside"):
        read_volume(path, timepoint=2)


def test_nifti_absurd_dim_and_truncation(tmp_path: Path) -> None:
    header = nibabel.Nifti1Header()
    header.set_data_dtype(np.int16)
    raw = bytearray(header.binaryblock)
    dims = np.array([3, 30000, 30000, 30000, 1, 1, 1, 1], dtype="<i2")
    raw[40:56] = dims.tobytes()
    bomb = tmp_path / "bomb.nii"
    bomb.write_bytes(bytes(raw) + b"\0" * 4 + b"\0" * 64)
    with pytest.raises(ImageTooLargeError, match="bomb.nii"):
        read_volume(bomb)
    neg = tmp_path / "neg.nii"
    raw[40:56] = np.array([3, -5, 10, 10, 1, 1, 1, 1], dtype="<i2").tobytes()
    neg.write_bytes(bytes(raw) + b"\0" * 68)
    with pytest.raises(ImageError, match="neg.nii"):
        read_volume(neg)
    data = Path(nibabel_data("anatomical.nii")).read_bytes()
    (tmp_path / "short.nii").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="short.nii.*truncated"):
        read_volume(tmp_path / "short.nii")
    gz = gzip.compress(data)
    (tmp_path / "short.nii.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(ImageError, match="short.nii.gz"):
        read_volume(tmp_path / "short.nii.gz")


# ---------------------------------------------------------------------- windows
def test_window_hand_computed_pixels() -> None:
    w = Window(40, 80)  # brain
    # c - 0.5 = 39.5, w - 1 = 79: black at or below 0, white above 79
    x = np.array([-1000, 0, 0.5, 40, 78.9, 79, 79.01, 3000], dtype=np.float32)
    expected = [0, 0, 2, 129, 255, 255, 255, 255]
    # 0.5 -> ((0.5 - 39.5) / 79 + 0.5) * 255 = 1.61 -> 2; 40 -> 129.11 -> 129;
    # 78.9 -> 254.68 -> 255
    np.testing.assert_array_equal(apply_window(x, w), expected)
    assert apply_window(x, Window(40, 80, invert=True)).tolist() == [255 - v for v in expected]
    # a 1-wide window is a threshold at c - 0.5
    assert apply_window(np.array([9.4, 9.5, 9.6]), Window(10, 1)).tolist() == [0, 0, 255]


def test_sixteen_bit_values_are_windowed_not_truncated() -> None:
    # values 30000..30255 have only the high bytes 117 and 118; the window with
    # c - 0.5 = 30127.5 and w - 1 = 255 maps x to exactly x - 30000
    x = np.arange(30000, 30256, dtype=np.uint16)
    out = apply_window(x, Window(30128, 256))
    np.testing.assert_array_equal(out, (x - 30000).astype(np.uint8))
    assert len(np.unique(x >> 8)) == 2


def test_percentile_window_and_presets() -> None:
    w = percentile_window(np.arange(1001, dtype=np.float32), 0.5, 99.5)
    assert (w.level, w.width, w.source) == (500.0, 990.0, "percentile:0.5-99.5")
    assert resolve_window("lung", np.zeros(3)) == Window(-600, 1500, "preset:lung")
    assert CT_PRESETS["abdomen"] == (50.0, 400.0) and CT_PRESETS["bone"] == (400.0, 1800.0)
    assert CT_PRESETS["brain"] == (40.0, 80.0) and CT_PRESETS["liver"] == (30.0, 150.0)
    assert resolve_window("40,400", np.zeros(3)) == Window(40, 400, "explicit")
    assert resolve_window("p1-99", np.arange(101.0)).source == "percentile:1-99"
    assert resolve_window(None, np.zeros(3), file_window=Window(1, 2)) == Window(1, 2, "dicom")
    assert parse_window("Soft-Tissue") == "soft_tissue"
    for bad in ("nope", "40,0", "p99-1", "40,"):
        with pytest.raises(ImageError):
            parse_window(bad)
    with pytest.raises(ImageError, match="no Window Center"):
        resolve_window("dicom", np.zeros(3))


# ---------------------------------------------------------------------- load_image / segment
def test_load_image_reads_dicom_through_a_window(tmp_path: Path) -> None:
    from hybridgl.images import load_image

    path = dicom_file("CT_small.dcm")
    img = load_image(path, window="abdomen")
    vol = read_volume(path)
    expected = apply_window(_stored_plane(vol), Window(50, 400))
    assert img.shape == (128, 128, 3)
    np.testing.assert_array_equal(img[:, :, 1], expected)
    image, info = load_medical_image(path, window="bone")
    assert info["window"]["source"] == "preset:bone" and info["modality"] == "CT"
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(img).save(png)
    with pytest.raises(ImageError, match="DICOM and NIfTI files only"):
        load_image(png, window="abdomen")
    with pytest.raises(ImageError, match="15 slices"):
        load_image(dicom_file("rtdose.dcm"))


def _mutations(data: bytes, start: int, count: int, seed: int):
    import random

    rng = random.Random(seed)
    for t in range(count):
        d = bytearray(data)
        if t % 3 == 0:
            for _ in range(rng.randint(1, 20)):
                d[rng.randrange(start, len(d))] = rng.randrange(256)
        elif t % 3 == 1:
            d = d[: rng.randrange(start, len(d))]
        else:  # somewhere in the header
            i = rng.randrange(start, min(len(d), start + 1400))
            d[i : i + 4] = bytes(rng.randrange(256) for _ in range(4))
        yield bytes(d)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_mutated_files_only_ever_give_image_errors(tmp_path: Path) -> None:
    """Corrupted copies (bytes flipped, cut short, header values garbled) of real files:
    every failure is an ImageError naming the file, never another exception."""
    sources = [
        (dicom_file("CT_small.dcm"), 132),
        (dicom_file("MR_small_RLE.dcm"), 132),
        (dicom_file("rtdose.dcm"), 132),
        (nibabel_data("anatomical.nii"), 0),
        (nibabel_data("example4d.nii.gz"), 0),
    ]
    for n, (src, start) in enumerate(sources):
        suffix = ".nii.gz" if src.endswith(".gz") else Path(src).suffix
        for t, data in enumerate(_mutations(Path(src).read_bytes(), start, 30, n)):
            path = tmp_path / f"m{n}_{t}{suffix}"
            path.write_bytes(data)
            try:
                read_volume(path, timepoint=0 if src.endswith(".gz") else None)
            except ImageError as e:
                assert path.name in str(e)
