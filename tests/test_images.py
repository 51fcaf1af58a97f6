"""Image loading: one set of rules for files, bytes, PIL images and arrays."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybridgl.errors import ImageError, ImageTooLargeError
from hybridgl.images import DEFAULT_MAX_PIXELS, load_image

REPO = Path(__file__).resolve().parents[1]


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def blank_png(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG of any size, compressed row by row (a few KB per 100 MP)."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
    )


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _all_kinds(img: Image.Image, fmt: str, tmp_path: Path) -> dict[str, object]:
    """The same picture as a path, a str path, bytes and a PIL image."""
    data = _encode(img, fmt)
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(data)
    return {"path": path, "str": str(path), "bytes": data, "pil": Image.open(io.BytesIO(data))}


def _rgb(gray: list[int]) -> np.ndarray:
    g = np.array([gray], dtype=np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


# ---------------------------------------------------------------- 16-bit


SIXTEEN = [0, 0x12FF, 0xFFFF, 257 * 100, 255]
# v >> 8: the high byte (Pillow reads 16-bit colour PNGs this way: 0x12ff -> 0x12 = 18)
SIXTEEN_8BIT = [0, 18, 255, 100, 0]


def test_sixteen_bit_gray_is_scaled_for_every_input_kind(tmp_path: Path) -> None:
    arr16 = np.array([SIXTEEN], dtype=np.uint16)
    img = Image.fromarray(arr16)
    assert img.mode == "I;16"
    expected = _rgb(SIXTEEN_8BIT)
    inputs = {**_all_kinds(img, "PNG", tmp_path), "array": arr16, "array_hw1": arr16[:, :, None]}
    tiff = tmp_path / "img.tiff"
    img.save(tiff)
    inputs["tiff"] = tiff
    for kind, source in inputs.items():
        got = load_image(source)  # type: ignore[arg-type]
        np.testing.assert_array_equal(got, expected, err_msg=kind)


def test_sixteen_bit_gray_and_colour_pngs_agree() -> None:
    # a 16-bit RGB PNG is read by Pillow itself (high byte); our gray rule must match it
    raw = b"\x00" + struct.pack(">3H", 0x12FF, 0x12FF, 0x12FF)
    ihdr = struct.pack(">IIBBBBB", 1, 1, 16, 2, 0, 0, 0)
    colour = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
    colour += _chunk(b"IEND", b"")
    gray = load_image(np.array([[0x12FF]], dtype=np.uint16))
    np.testing.assert_array_equal(load_image(colour), gray)
    assert gray[0, 0, 0] == 18


def test_int32_mode_i_in_16_bit_range_and_refused_outside() -> None:
    img = Image.fromarray(np.array([SIXTEEN], dtype=np.int32))
    assert img.mode == "I"
    np.testing.assert_array_equal(load_image(img), _rgb(SIXTEEN_8BIT))
    bad = Image.fromarray(np.array([[0, 70000]], dtype=np.int32))
    with pytest.raises(ImageError, match=r"mode I.*\[0, 70000\]"):
        load_image(bad)
    with pytest.raises(ImageError, match=r"int64.*\[-1, 3\]"):
        load_image(np.array([[-1, 3]], dtype=np.int64))


# ---------------------------------------------------------------- float


FLOATS = [0.0, 0.5, 1.0, 0.25, 0.75]
FLOATS_8BIT = [0, 128, 255, 64, 191]  # round(v * 255): 127.5 -> 128, 63.75 -> 64, 191.25 -> 191


def test_float_images_in_0_1_are_scaled_for_every_input_kind(tmp_path: Path) -> None:
    arr = np.array([FLOATS], dtype=np.float32)
    img = Image.fromarray(arr)
    assert img.mode == "F"
    expected = _rgb(FLOATS_8BIT)
    inputs = {
        **_all_kinds(img, "TIFF", tmp_path),
        "float32": arr,
        "float64": arr.astype(np.float64),
        "float16_hw1": arr.astype(np.float16)[:, :, None],
        "float_rgb": np.repeat(arr[:, :, None], 3, axis=2),
    }
    for kind, source in inputs.items():
        np.testing.assert_array_equal(load_image(source), expected, err_msg=kind)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [[0.0, 1.5], [-0.25, 0.5], [0.0, float("nan")]])
def test_float_outside_0_1_is_refused_not_clipped(bad: list[float], tmp_path: Path) -> None:
    arr = np.array([bad], dtype=np.float32)
    with pytest.raises(ImageError, match=r"float32.*\[0, 1\]"):
        load_image(arr)
    path = tmp_path / "f.tiff"
    Image.fromarray(arr).save(path)
    with pytest.raises(ImageError, match=r"mode F.*\[0, 1\]"):
        load_image(path)


def test_float_error_names_the_range_found() -> None:
    with pytest.raises(ImageError, match=r"\[0, 255\]"):
        load_image(np.array([[0.0, 255.0]], dtype=np.float64))


# ---------------------------------------------------------------- channels


def test_rgba_array_is_composited_on_white_like_an_rgba_file(tmp_path: Path) -> None:
    rgba = np.array([[[200, 100, 50, 128], [10, 20, 30, 0], [10, 20, 30, 255]]], np.uint8)
    # hand-computed: c * a / 255 + 255 * (1 - a / 255), rounded
    #   a = 128: 200 -> 227.39 -> 227, 100 -> 177.20 -> 177, 50 -> 152.10 -> 152
    #   a = 0 -> white; a = 255 -> the colour itself
    expected = np.array([[[227, 177, 152], [255, 255, 255], [10, 20, 30]]], np.uint8)
    inputs = {**_all_kinds(Image.fromarray(rgba, mode="RGBA"), "PNG", tmp_path), "array": rgba}
    inputs["array16"] = rgba.astype(np.uint16) * 257
    for kind, source in inputs.items():
        np.testing.assert_array_equal(load_image(source), expected, err_msg=kind)  # type: ignore[arg-type]


def test_gray_alpha_array_like_an_la_file(tmp_path: Path) -> None:
    la = np.array([[[100, 255], [100, 0], [0, 128]]], np.uint8)
    expected = _rgb([100, 255, 127])  # 0 * 128/255 + 255 * 127/255 = 127
    inputs = {**_all_kinds(Image.fromarray(la, mode="LA"), "PNG", tmp_path), "array": la}
    for kind, source in inputs.items():
        np.testing.assert_array_equal(load_image(source), expected, err_msg=kind)  # type: ignore[arg-type]


def test_gray_arrays_and_bool_become_rgb() -> None:
    g = np.array([[0, 7, 255]], np.uint8)
    for arr in (g, g[:, :, None]):
        np.testing.assert_array_equal(load_image(arr), _rgb([0, 7, 255]))
    np.testing.assert_array_equal(load_image(np.array([[True, False]])), _rgb([255, 0]))


def test_uint8_rgb_array_is_returned_unchanged() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(arr), arr)


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((4, 5, 5), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((0, 5, 3), np.uint8),
        np.zeros((4, 5, 3), np.complex64),
        np.zeros((4, 5, 3), object),
    ],
)
def test_unsupported_arrays(arr: np.ndarray) -> None:
    with pytest.raises(ImageError):
        load_image(arr)


# ---------------------------------------------------------------- size limits


def test_default_limit_is_the_servers() -> None:
    from hybridgl.server.settings import ServerSettings

    assert DEFAULT_MAX_PIXELS == ServerSettings().pixel_limit == 44_739_242


@pytest.mark.parametrize("kind", ["path", "bytes", "pil", "array"])
def test_max_pixels_for_every_input_kind(kind: str, tmp_path: Path) -> None:
    arr = np.zeros((10, 12, 3), np.uint8)
    source: object
    if kind == "array":
        source = arr
    elif kind == "pil":
        source = Image.fromarray(arr)
    else:
        data = _encode(Image.fromarray(arr), "PNG")
        source = data if kind == "bytes" else tmp_path / "a.png"
        if kind == "path":
            (tmp_path / "a.png").write_bytes(data)
    assert load_image(source, max_pixels=120).shape == (10, 12, 3)  # type: ignore[arg-type]
    with pytest.raises(ImageTooLargeError, match=r"12 x 10 = 120 pixels.*limit of 119") as info:
        load_image(source, max_pixels=119)  # type: ignore[arg-type]
    assert (info.value.height, info.value.width, info.value.limit) == (10, 12, 119)
    assert isinstance(info.value, ImageError)
    assert load_image(source, max_pixels=None).shape == (10, 12, 3)  # type: ignore[arg-type]


def test_huge_png_is_refused_from_its_header_with_flat_memory(tmp_path: Path) -> None:
    data = blank_png(18000, 18000)
    assert len(data) < 60_000  # the 39 KB file
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    # a fresh interpreter, so the peak RSS measures this load only
    script = f"""
import resource
from hybridgl.errors import ImageError, ImageTooLargeError
from hybridgl.images import load_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_image({str(path)!r})
    print("loaded")
except ImageError as e:
    print("ImageError", e)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    env = {"PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    first, growth = proc.stdout.strip().splitlines()
    assert first.startswith("ImageError") and "too large" in first
    assert int(growth) < 50 * 1024  # KiB: decoding would take 324 MB (1 byte per pixel)


def test_pillow_bomb_warning_becomes_image_error(tmp_path: Path) -> None:
    # 10000 x 10000 = 100 MP: between Pillow's warning (89 MP) and error (179 MP) limits
    data = blank_png(10000, 10000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLargeError, match="too large"):
            load_image(data)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_import_does_not_change_pillow_limit() -> None:
    script = (
        "from PIL import Image; before = Image.MAX_IMAGE_PIXELS\n"
        "import hybridgl, hybridgl.images, hybridgl.cli.segment\n"
        "print(before, Image.MAX_IMAGE_PIXELS)"
    )
    env = {"PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    before, after = proc.stdout.split()
    assert before == after == str(Image.MAX_IMAGE_PIXELS)


def test_pillow_bomb_error_states_our_limit_and_the_size(tmp_path: Path) -> None:
    """Over twice Pillow's limit (20000 x 20000 = 400 MP > 179 MP) Pillow refuses to open
    the image at all; the error must still be ours: the size and OUR max_pixels."""
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    for source, limit in ((data, DEFAULT_MAX_PIXELS), (path, 1000)):
        with pytest.raises(ImageTooLargeError) as err:
            load_image(source, max_pixels=limit)
        msg = str(err.value)
        assert "20000 x 20000 = 400,000,000 pixels" in msg
        assert f"above the limit of {limit:,} (max_pixels" in msg and "Pillow" not in msg
        assert (err.value.width, err.value.height, err.value.limit) == (20000, 20000, limit)
