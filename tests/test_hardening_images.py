"""Image sizes from each format's own headers: every frame bounded before Pillow opens it.

The hostile files (tests/hostile_images.py) lie in the ways the second hardening round
found: an ICO directory claiming 16 x 16 around a huge PNG, a 30-byte WebP canvas, GIF
frames past the canvas, a TIFF whose second page is huge. Each is refused from its headers
with Pillow never called; Pillow's own bomb error is an ``ImageTooLargeError`` too.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hostile_images as hi  # noqa: E402

from hybridgl.errors import ImageError, ImageTooLargeError  # noqa: E402
from hybridgl.imageheader import read_header  # noqa: E402
from hybridgl.images import load_image  # noqa: E402

LIMIT = 1_000_000  # small, so that refusing by the limit needs no big file


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _picture(w: int = 37, h: int = 23, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(w * 1000 + h)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def _valid_files() -> dict[str, bytes]:
    pic = _picture()
    frames = [_picture(37, 23), _picture(37, 23)]
    out = {
        "png": _save(pic, "PNG"),
        "jpeg": _save(pic, "JPEG"),
        "progressive-jpeg": _save(pic, "JPEG", progressive=True),
        "gif": _save(pic.convert("P"), "GIF"),
        "animated-gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "bmp": _save(pic, "BMP"),
        "tiff": _save(pic, "TIFF"),
        "tiff-pages": _save(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "tiff-big-endian": _big_endian_tiff(37, 23),
        "ico": _save(_picture(64, 64), "ICO", sizes=[(16, 16), (32, 32), (64, 64)]),
        "icns": _save(_picture(64, 64, "RGBA"), "ICNS"),
        "ppm": _save(pic, "PPM"),
        "pgm": _save(pic.convert("L"), "PPM"),
        "pbm": _save(pic.convert("1"), "PPM"),
    }
    if features.check("webp"):
        out["webp-lossy"] = _save(pic, "WEBP")
        out["webp-lossless"] = _save(pic, "WEBP", lossless=True)
        out["webp-animated"] = _save(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    if features.check("jpg_2000"):
        out["jp2"] = _save(pic, "JPEG2000")
        out["j2k"] = _save(pic, "JPEG2000", no_jp2=True)
    return out


def _big_endian_tiff(w: int, h: int) -> bytes:
    """An uncompressed 8-bit gray big-endian ("MM") TIFF, written by hand."""
    import struct

    pixels = bytes(range(256)) * (w * h // 256 + 1)
    entries = [(256, 3, w), (257, 3, h), (258, 3, 8), (259, 3, 1), (262, 3, 1)]
    entries += [(273, 4, 0), (277, 3, 1), (278, 3, h), (279, 4, w * h)]
    ifd_size = 2 + 12 * len(entries) + 4
    data_at = 8 + ifd_size
    out = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", len(entries))
    for tag, typ, value in entries:
        value = data_at if tag == 273 else value
        packed = struct.pack(">HI", value, 0)[:4] if typ == 3 else struct.pack(">I", value)
        out += struct.pack(">HHI", tag, typ, 1) + packed
    return out + struct.pack(">I", 0) + pixels[: w * h]


VALID = _valid_files()


@pytest.mark.parametrize("kind", sorted(VALID))
def test_header_size_is_pillows_for_every_accepted_format(kind: str) -> None:
    data = VALID[kind]
    info = read_header(data)
    with Image.open(io.BytesIO(data)) as img:
        assert (info.width, info.height) == img.size
        assert info.format == img.format or (info.format, img.format) == ("JPEG", "MPO")
    arr = load_image(data)
    assert arr.shape[:2] == (info.height, info.width)


def test_every_frame_is_listed() -> None:
    assert len(read_header(VALID["tiff-pages"]).frames) == 2
    assert {(16, 16), (32, 32), (64, 64)} <= set(read_header(VALID["ico"]).frames)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_truncated_files_are_image_errors(kind: str) -> None:
    """Every cut of a valid file is an ImageError (or a smaller valid image), never
    another exception."""
    data = VALID[kind]
    for cut in sorted({1, 2, 5, 9, 13, 17, 24, 33, 60, len(data) // 2, len(data) - 3}):
        if 0 < cut < len(data):
            try:
                load_image(data[:cut])
            except ImageError:
                pass


HOSTILE = {
    # a 16 x 16 icon entry around a 3000 x 3000 PNG (Pillow decodes it inside open)
    "ico-png-frame": hi.ico_with_png(hi.blank_png(3000, 3000)),
    "cur-dib-frame": hi.cur_with_dib(5000, 5000),
    "icns-png-frame": hi.icns_with_png(hi.blank_png(3000, 3000)),
    "webp-canvas": hi.webp_canvas(16384, 16384),
    "webp-animation-frame": hi.webp_animated_frame(64, 9000, 9000),
    "gif-screen": hi.gif_screen(65535, 65535),
    "gif-frame-past-canvas": hi.gif_screen(10, 10, (0, 0, 9000, 9000)),
    "tiff-second-page": hi.tiff_pages([(2, 2), (30000, 30000)]),
    "jpeg-frame": hi.jpeg_claiming(9000, 9000),
    "png": hi.png_header(20000, 20000),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_sizes_are_refused_before_pillow_opens_the_file(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[object] = []
    real_open = Image.open

    def spy(*a: object, **kw: object) -> Image.Image:
        opened.append(a[0])
        return real_open(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "open", spy)
    with pytest.raises(ImageTooLargeError) as e:
        load_image(HOSTILE[kind], max_pixels=LIMIT)
    assert opened == [], "Pillow was called before the size check"
    assert "<bytes>" in str(e.value) and "1,000,000" in str(e.value)


@pytest.mark.parametrize(
    "data",
    [
        hi.webp_canvas(16384, 16384),  # 30 bytes, 268 MP
        hi.gif_screen(65535, 65535),  # 29 bytes, 4.3 GP
        hi.ico_with_png(hi.blank_png(15000, 15000)),  # an icon frame of 225 MP
    ],
    ids=["webp", "gif", "ico"],
)
@pytest.mark.parametrize("limit", [None, LIMIT], ids=["no-limit", "limit"])
def test_pillow_bomb_errors_are_image_too_large(data: bytes, limit: int | None) -> None:
    """With no limit of ours, Pillow's own DecompressionBombError still becomes ours."""
    with pytest.raises(ImageTooLargeError):
        load_image(data, max_pixels=limit)


def test_a_path_is_named_and_read_without_loading_it(tmp_path: Path) -> None:
    path = tmp_path / "icon.ico"
    path.write_bytes(HOSTILE["ico-png-frame"])
    with pytest.raises(ImageTooLargeError, match=str(path)):
        load_image(path, max_pixels=LIMIT)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(empty)


@pytest.mark.parametrize(
    "data",
    [
        _save(_picture(), "PCX"),
        _save(_picture(), "TGA"),
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        b"not an image at all",
    ],
    ids=["pcx", "tga", "eps", "text"],
)
def test_formats_that_cannot_be_bounded_are_refused(data: bytes) -> None:
    with pytest.raises(ImageError, match="format hybridgl reads") as e:
        load_image(data)
    assert "BytesIO" not in str(e.value)


def test_pillow_cannot_decode_a_file_as_another_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin Pillow may use is the one the headers were read for."""
    formats: list[object] = []
    real_open = Image.open

    def spy(fp: object, mode: str = "r", formats_: object = None, **kw: object) -> Image.Image:
        formats.append(kw.get("formats", formats_))
        return real_open(fp, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "open", spy)
    load_image(VALID["png"])
    assert formats == [["PNG"]]


def test_a_jpeg_whose_data_cannot_fill_its_frame_is_refused() -> None:
    """A 16 x 16 JPEG whose frame header claims 9000 x 9000 decodes (libjpeg fills the
    missing blocks with gray) into a silently wrong picture: refused from its headers."""
    with pytest.raises(ImageError, match="cannot fill the 9000 x 9000"):
        load_image(hi.jpeg_claiming(9000, 9000), max_pixels=None)


def test_the_jpeg_data_bound_accepts_the_most_compact_real_files() -> None:
    """Flat pictures with optimised Huffman tables come closest to the bound (2 bits a
    block): they are read."""
    for mode, size in (("L", (1200, 900)), ("RGB", (640, 480))):
        flat = Image.new(mode, size, 128 if mode == "L" else (128, 128, 128))
        data = _save(flat, "JPEG", quality=1, optimize=True)
        assert load_image(data).shape[:2] == (size[1], size[0])
