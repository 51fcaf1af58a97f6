"""Hostile image files, built by hand: headers that lie about sizes, in every accepted format.

Each builder returns bytes; none of them allocates the pixels it claims.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def blank_png(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG of any size, compressed row by row (a few KB per 100 MP)."""
    row = b"\x00" + bytes((width + 7) // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
    )


def png_header(width: int, height: int) -> bytes:
    """Only a PNG signature and IHDR claiming ``width x height`` (no pixel data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)


def ico_with_png(frame_png: bytes, claimed: int = 16) -> bytes:
    """An ICO whose directory claims ``claimed x claimed`` but holds ``frame_png``."""
    offset = 6 + 16
    entry = struct.pack("<BBBBHHII", claimed, claimed, 0, 0, 1, 32, len(frame_png), offset)
    return struct.pack("<HHH", 0, 1, 1) + entry + frame_png


def cur_with_dib(width: int, height: int) -> bytes:
    """A CUR whose directory claims 16 x 16 but whose DIB header says ``width x height``."""
    dib = struct.pack("<IiiHHIIiiII", 40, width, 2 * height, 1, 1, 0, 0, 0, 0, 0, 0)
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 0, 0, len(dib) + 8, 22)
    return struct.pack("<HHH", 0, 2, 1) + entry + dib + bytes(8)


def icns_with_png(frame_png: bytes) -> bytes:
    """An ICNS whose ``ic11`` (16 x 16 @2x) entry holds ``frame_png`` (any size)."""
    entry = b"ic11" + struct.pack(">I", 8 + len(frame_png)) + frame_png
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def webp_canvas(width: int, height: int) -> bytes:
    """A 30-byte WebP: a VP8X chunk claiming a ``width x height`` canvas, nothing else."""
    vp8x = struct.pack("<I", 0) + (width - 1).to_bytes(3, "little")
    vp8x += (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_animated_frame(canvas: int, frame_w: int, frame_h: int) -> bytes:
    """A small animated-WebP canvas whose one ANMF frame claims ``frame_w x frame_h``."""
    vp8x = struct.pack("<I", 0x02) + (canvas - 1).to_bytes(3, "little")
    vp8x += (canvas - 1).to_bytes(3, "little")
    anim = struct.pack("<IH", 0, 0)
    fr = bytes(6) + (frame_w - 1).to_bytes(3, "little") + (frame_h - 1).to_bytes(3, "little")
    fr += bytes(4)
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    body += b"ANIM" + struct.pack("<I", len(anim)) + anim
    body += b"ANMF" + struct.pack("<I", len(fr)) + fr
    return b"RIFF" + struct.pack("<I", len(body)) + body


def gif_screen(width: int, height: int, frame: tuple[int, int, int, int] = (0, 0, 1, 1)) -> bytes:
    """A GIF with a ``width x height`` logical screen and one frame ``(left, top, w, h)``."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    desc = b"\x2c" + struct.pack("<HHHHB", *frame, 0)
    return head + desc + b"\x02\x02\x44\x01\x00" + b"\x3b"


def tiff_pages(sizes: list[tuple[int, int]]) -> bytes:
    """A TIFF whose directories claim ``sizes`` (the first a real 2x2 page)."""
    small = Image.new("L", (2, 2))
    buf = io.BytesIO()
    small.save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    # append one directory per extra size and chain it from the last directory
    first = struct.unpack("<I", data[4:8])[0]
    last = first
    for w, h in sizes[1:]:
        while len(data) % 2:
            data.append(0)
        at = len(data)
        entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (262, 3, 1, 1)]
        ifd = struct.pack("<H", len(entries))
        ifd += b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
        data += ifd
        n = struct.unpack("<H", data[last : last + 2])[0]
        data[last + 2 + 12 * n : last + 6 + 12 * n] = struct.pack("<I", at)
        last = at
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header is edited to claim ``width x height``."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 200)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)
