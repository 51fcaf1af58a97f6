"""The header parsers of every accepted format: sizes from the bytes, no decoder.

Each parser reads through :class:`_Buf` (bounds-checked reads) and raises
:class:`_Corrupt` when a header ends early or contradicts itself;
:func:`hybridgl.imageheader.read_header` turns that into an ``ImageError``.
"""

from __future__ import annotations

import struct
from typing import Any

MAX_FRAMES = 65_536
"""Most frames (TIFF directories, GIF frames, WebP frames, icon entries) examined in one
file; a file with more is refused (each frame would be bounded one by one)."""

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_JP2_SIG = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_SIG = b"\xff\x4f\xff\x51"
# SOF markers: baseline, extended, progressive, lossless, hierarchical, arithmetic
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# ICNS entry types Pillow decodes without a PNG/JPEG 2000 inside, and their pixel sizes
_ICNS_RAW = {b"is32": 16, b"il32": 32, b"ih32": 48, b"it32": 128, b"s8mk": 16, b"l8mk": 32}
_ICNS_RAW.update({b"h8mk": 48, b"t8mk": 128, b"ic08": 256, b"ic09": 512})


class _Corrupt(Exception):
    """A header that ends early or contradicts itself."""


class _Buf:
    """Bounds-checked big/little-endian reads from a byte buffer (bytes or mmap)."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.n = len(data)

    def take(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.n:
            raise _Corrupt(f"the header ends early (needs byte {offset + size} of {self.n})")
        return bytes(self.data[offset : offset + size])

    def unpack(self, fmt: str, offset: int) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(offset, struct.calcsize(fmt)))

    def one(self, fmt: str, offset: int) -> int:
        return int(self.unpack(fmt, offset)[0])


def _positive(width: int, height: int, what: str) -> tuple[int, int]:
    if width <= 0 or height <= 0:
        raise _Corrupt(f"{what} has an empty size {width} x {height}")
    return int(width), int(height)


def _count(frames: list[Any]) -> None:
    if len(frames) > MAX_FRAMES:
        raise _Corrupt(f"more than {MAX_FRAMES:,} frames")


# ------------------------------------------------------------------------ formats


def _png(b: _Buf, at: int = 0) -> tuple[int, int]:
    if b.take(at + 12, 4) != b"IHDR":
        raise _Corrupt("a PNG must start with its IHDR chunk")
    w, h = b.unpack(">II", at + 16)
    return _positive(w, h, "the PNG")


def _jpeg(b: _Buf) -> tuple[int, int, str | None]:
    """The frame size; for a baseline (Huffman, sequential) JPEG also a check that the
    file holds enough coded data to fill that frame (:func:`_jpeg_data_suffices`)."""
    i = 2
    size: tuple[int, int] | None = None
    sampling: list[tuple[int, int]] = []
    sequential = False
    while True:
        if b.take(i, 1) != b"\xff":
            raise _Corrupt(f"no JPEG marker at byte {i}")
        marker = b.take(i + 1, 1)[0]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if marker == 0xD9 or (marker == 0xDA and size is None):
            raise _Corrupt("the JPEG has no frame header before its image data")
        if marker == 0xDA:
            assert size is not None
            defect = None
            if sequential:
                try:
                    _jpeg_data_suffices(b, i + 2 + b.one(">H", i + 2), size, sampling)
                except _Corrupt as e:
                    defect = str(e)
            return size[0], size[1], defect
        if marker in _JPEG_SOF and size is None:
            h, w = b.unpack(">HH", i + 5)
            if h == 0:
                raise _Corrupt("the JPEG's height is 0 (a DNL marker), which is not supported")
            size = _positive(w, h, "the JPEG")
            sequential = marker in (0xC0, 0xC1)
            for c in range(b.one(">B", i + 9)):
                hv = b.one(">B", i + 11 + 3 * c)
                sampling.append((hv >> 4, hv & 0x0F))
        i += 2 + b.one(">H", i + 2)


def _jpeg_data_suffices(
    b: _Buf, start: int, size: tuple[int, int], sampling: list[tuple[int, int]]
) -> None:
    """Refuse a baseline JPEG whose coded data cannot fill the frame its header claims.

    Every 8 x 8 block of every component costs at least 2 bits (a DC code and an
    end-of-block code, each at least 1 bit long in any Huffman table), so the bytes
    between the first scan header and the end marker must be at least a quarter of the
    blocks. A file with fewer was cut short or had its frame header enlarged: libjpeg
    would fill the missing blocks with gray and the picture would silently be wrong.
    """
    w, h = size
    if not sampling or any(hh < 1 or vv < 1 for hh, vv in sampling):
        raise _Corrupt("the JPEG's frame header has invalid sampling factors")
    hmax = max(hh for hh, _ in sampling)
    vmax = max(vv for _, vv in sampling)

    def ceil(a: int, d: int) -> int:
        return -(-a // d)

    blocks = sum(ceil(ceil(w * hh, hmax), 8) * ceil(ceil(h * vv, vmax), 8) for hh, vv in sampling)
    end = bytes(b.data[-2:]) == b"\xff\xd9"
    coded = b.n - start - (2 if end else 0)
    need = blocks // 4
    if coded < need:
        raise _Corrupt(
            f"the JPEG's coded data ({max(coded, 0):,} bytes) cannot fill the {w} x {h} its "
            f"frame header claims (at least {need:,} bytes): the file was cut short or its "
            "header altered"
        )


def _gif(b: _Buf) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    sw, sh = b.unpack("<HH", 6)
    canvas = _positive(sw, sh, "the GIF")
    width, height = canvas
    flags = b.take(10, 1)[0]
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames: list[tuple[int, int]] = []

    def skip_blocks(i: int) -> int:
        while True:
            size = b.take(i, 1)[0]
            i += 1 + size
            if size == 0:
                return i

    while i < b.n:
        kind = b.take(i, 1)[0]
        if kind == 0x3B:  # trailer
            break
        if kind == 0x21:  # extension: label, then data sub-blocks
            i = skip_blocks(i + 2)
        elif kind == 0x2C:  # image descriptor
            left, top, w, h, fl = b.unpack("<HHHHB", i + 1)
            _positive(w, h, "a GIF frame")
            # Pillow grows the canvas to hold a frame that reaches past it
            width, height = max(width, left + w), max(height, top + h)
            frames.append((left + w, top + h))
            _count(frames)
            i += 10 + (3 << ((fl & 7) + 1) if fl & 0x80 else 0)
            i = skip_blocks(i + 1)  # LZW minimum code size, then the data
        else:
            break  # Pillow stops at an unknown block too
    if not frames:
        raise _Corrupt("the GIF has no image")
    return (width, height), [canvas, (width, height), *frames]


def _bmp_dib(b: _Buf, at: int, what: str) -> tuple[int, int]:
    size = b.one("<I", at)
    if size == 12:
        w, h = b.unpack("<HH", at + 4)
    elif size >= 16:
        w, h = b.unpack("<ii", at + 4)
    else:
        raise _Corrupt(f"{what} has an unknown header of {size} bytes")
    return _positive(abs(w), abs(h), what)


def _webp(b: _Buf) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    end = min(b.n, 8 + b.one("<I", 4))
    canvas: tuple[int, int] | None = None
    frames: list[tuple[int, int]] = []

    def bitstream(kind: bytes, at: int) -> tuple[int, int] | None:
        if kind == b"VP8 ":
            if b.take(at + 3, 3) != b"\x9d\x01\x2a":
                raise _Corrupt("a VP8 frame without its start code")
            w, h = b.unpack("<HH", at + 6)
            return _positive(w & 0x3FFF, h & 0x3FFF, "a WebP frame")
        if kind == b"VP8L":
            if b.take(at, 1) != b"\x2f":
                raise _Corrupt("a VP8L frame without its signature")
            bits = b.one("<I", at + 1)
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return None

    def u24(at: int) -> int:
        lo, hi = b.unpack("<HB", at)
        return int(lo) | int(hi) << 16

    i = 12
    while i + 8 <= end:
        kind, size = b.take(i, 4), b.one("<I", i + 4)
        data = i + 8
        if kind == b"VP8X":
            canvas = _positive(u24(data + 4) + 1, u24(data + 7) + 1, "the WebP canvas")
            frames.append(canvas)
        elif kind == b"ANMF":
            x, y = 2 * u24(data), 2 * u24(data + 3)
            w, h = u24(data + 6) + 1, u24(data + 9) + 1
            frames.append((x + w, y + h))
            j, stop = data + 16, data + size
            while j + 8 <= stop:  # the frame's own chunks (ALPH, VP8, VP8L)
                sub, sub_size = b.take(j, 4), b.one("<I", j + 4)
                found = bitstream(sub, j + 8)
                if found is not None:
                    frames.append(found)
                j += 8 + sub_size + (sub_size & 1)
        else:
            found = bitstream(kind, data)
            if found is not None:
                frames.append(found)
                canvas = canvas or found
        _count(frames)
        i = data + size + (size & 1)
    if canvas is None:
        raise _Corrupt("the WebP has no VP8, VP8L or VP8X chunk")
    return canvas, frames


def _tiff(b: _Buf) -> list[tuple[int, int]]:
    e = "<" if b.take(0, 2) == b"II" else ">"
    big = b.one(e + "H", 2) == 43
    if big:
        offset = b.one(e + "Q", 8)
        count_fmt, entry_size, value_at, next_fmt = "Q", 20, 12, "Q"
    else:
        offset = b.one(e + "I", 4)
        count_fmt, entry_size, value_at, next_fmt = "H", 12, 8, "I"
    frames: list[tuple[int, int]] = []
    seen: set[int] = set()
    while offset:
        if offset in seen:
            break  # a loop of directories: Pillow stops there too
        seen.add(offset)
        n = b.one(e + count_fmt, offset)
        start = offset + struct.calcsize(count_fmt)
        b.take(start, n * entry_size)  # the whole directory must be there
        dims: dict[int, int] = {}
        for k in range(n):
            at = start + k * entry_size
            tag, typ = b.unpack(e + "HH", at)
            if tag not in (256, 257):
                continue
            fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
            if fmt is None:
                raise _Corrupt(f"TIFF tag {tag} has type {typ}, not an integer")
            dims[tag] = b.one(e + fmt, at + value_at)
        if 256 not in dims or 257 not in dims:
            raise _Corrupt("a TIFF directory without ImageWidth/ImageLength")
        frames.append(_positive(dims[256], dims[257], "a TIFF image"))
        _count(frames)
        offset = b.one(e + next_fmt, start + n * entry_size)
    if not frames:
        raise _Corrupt("the TIFF has no image directory")
    return frames


def _ico(b: _Buf) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The size Pillow reports (the largest directory entry) and every frame's size."""
    n = b.one("<H", 4)
    if n == 0:
        raise _Corrupt("the icon has no images")
    if n > MAX_FRAMES:
        raise _Corrupt(f"more than {MAX_FRAMES:,} frames")
    frames: list[tuple[int, int]] = []
    listed: list[tuple[int, int]] = []
    for k in range(n):
        w, h = b.unpack("<BB", 6 + 16 * k)
        listed.append((w or 256, h or 256))
        frames.append(listed[-1])
        offset = b.one("<I", 6 + 16 * k + 12)
        if b.take(offset, 8) == _PNG_SIG:
            frames.append(_png(b, offset))
        else:  # a DIB, twice as high (image and mask)
            frames.append(_bmp_dib(b, offset, "an icon frame"))
    return max(listed, key=lambda wh: wh[0] * wh[1]), frames


def _jp2(b: _Buf, at: int, end: int) -> tuple[int, int]:
    """JPEG 2000: a raw codestream's SIZ marker, or a JP2 file's ``ihdr`` box."""
    if b.take(at, 4) == _J2K_SIG:
        xs, ys, xo, yo = b.unpack(">IIII", at + 8)
        return _positive(xs - xo, ys - yo, "the JPEG 2000 image")
    i = at
    while i + 8 <= end:
        length, kind = b.unpack(">I4s", i)
        head = 8
        if length == 1:
            length, head = b.one(">Q", i + 8), 16
        elif length == 0:
            length = end - i
        if kind == b"jp2h":  # a superbox: look inside
            end, i = i + length, i + head
            continue
        if kind == b"ihdr":
            h, w = b.unpack(">II", i + head)
            return _positive(w, h, "the JPEG 2000 image")
        if length < head:
            break
        i += length
    raise _Corrupt("the JPEG 2000 file has no image header")


def _icns(b: _Buf) -> list[tuple[int, int]]:
    end = min(b.n, b.one(">I", 4))
    i = 8
    frames: list[tuple[int, int]] = []
    while i + 8 <= end:
        kind, length = b.unpack(">4sI", i)
        if length < 8:
            raise _Corrupt("an ICNS entry shorter than its header")
        data = i + 8
        head = b.take(data, 12) if data + 12 <= b.n else b""
        if head[:8] == _PNG_SIG:
            frames.append(_png(b, data))
        elif head == _JP2_SIG or head[:4] == _J2K_SIG:
            frames.append(_jp2(b, data, i + length))
        elif kind in _ICNS_RAW:
            side = _ICNS_RAW[kind]
            frames.append((side, side))
        _count(frames)
        i += length
    if not frames:
        raise _Corrupt("the ICNS file has no image Pillow can read")
    return frames


def _pnm(b: _Buf) -> tuple[int, int]:
    tokens: list[int] = []
    i = 2
    while len(tokens) < 2:
        c = b.take(i, 1)
        if c == b"#":  # a comment, to the end of the line
            while b.take(i, 1) not in (b"\n", b"\r"):
                i += 1
        elif c.isspace():
            i += 1
        elif c.isdigit():
            j = i
            while j < b.n and b.take(j, 1).isdigit() and j - i < 12:
                j += 1
            tokens.append(int(b.take(i, j - i)))
            i = j
        else:
            raise _Corrupt("a PNM header with something other than numbers")
    return _positive(tokens[0], tokens[1], "the PNM image")
