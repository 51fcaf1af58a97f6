"""Image sizes read from each format's own headers, before Pillow touches the file.

Pillow reads the size in ``Image.open`` too, but some of its plugins decode pixel data
there already (ICO decodes its largest frame inside ``open``; ICNS, ICO and CUR decode an
embedded PNG whose size the directory does not state), and Pillow's own bomb check runs
only against its process-wide limit. So :func:`read_header` parses the headers of every
format hybridgl accepts itself, with no decoder, and returns the size of *every* frame it
could be asked to decode: each ICO/CUR/ICNS entry (and the PNG/BMP/JPEG 2000 inside it),
each TIFF directory, each GIF frame (a frame reaching past the canvas grows it, as in
Pillow), each WebP animation frame and bitstream. Any other format is refused: its size
cannot be bounded before decoding.

The parsers of each format live in :mod:`hybridgl.imageheader.formats`.

The format found is also the only plugin Pillow may then use (``Image.open(...,
formats=[...])``), so a file cannot be bounded as one format and decoded as another.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hybridgl.errors import ImageError
from hybridgl.imageheader.formats import (
    _J2K_SIG,
    _JP2_SIG,
    _PNG_SIG,
    MAX_FRAMES,
    _bmp_dib,
    _Buf,
    _Corrupt,
    _gif,
    _icns,
    _ico,
    _jp2,
    _jpeg,
    _png,
    _pnm,
    _tiff,
    _webp,
)

__all__ = ["ACCEPTED_FORMATS", "MAX_FRAMES", "HeaderInfo", "read_header"]

ACCEPTED_FORMATS = (
    "JPEG",
    "PNG",
    "GIF",
    "BMP",
    "WebP",
    "TIFF",
    "ICO",
    "CUR",
    "ICNS",
    "JPEG 2000",
    "PNM (PBM/PGM/PPM)",
)


@dataclass(frozen=True)
class HeaderInfo:
    """What the headers say.

    Attributes:
        format: the Pillow plugin that may decode the file (``"JPEG"``, ``"PNG"``, ...).
        width, height: the size Pillow will report (the canvas, or the first frame).
        frames: ``(width, height)`` of every frame found, the canvas included.
        defect: why the file cannot be decoded faithfully although its sizes are known
            (a JPEG whose data cannot fill its frame); callers refuse it after the size
            check, so that an oversized file is reported as too large first.
    """

    format: str
    width: int
    height: int
    frames: tuple[tuple[int, int], ...]
    defect: str | None = None

    @property
    def largest(self) -> tuple[int, int]:
        """The frame with the most pixels (what a decode of any frame may allocate)."""
        return max(self.frames, key=lambda wh: wh[0] * wh[1])


# ------------------------------------------------------------------------ entry point


def _identify(b: _Buf) -> HeaderInfo:
    head = b.take(0, min(b.n, 16))
    if head[:8] == _PNG_SIG:
        w, h = _png(b)
        return HeaderInfo("PNG", w, h, ((w, h),))
    if head[:3] == b"\xff\xd8\xff":
        w, h, defect = _jpeg(b)
        return HeaderInfo("JPEG", w, h, ((w, h),), defect)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        (w, h), frames = _gif(b)
        return HeaderInfo("GIF", w, h, tuple(frames))
    if head[:2] == b"BM":
        w, h = _bmp_dib(b, 14, "the BMP")
        return HeaderInfo("BMP", w, h, ((w, h),))
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        (w, h), frames = _webp(b)
        return HeaderInfo("WEBP", w, h, tuple(frames))
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        frames = _tiff(b)
        return HeaderInfo("TIFF", *frames[0], tuple(frames))
    if head[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00"):
        try:
            size, frames = _ico(b)
        except _Corrupt:  # e.g. a TGA file, whose first bytes can look like a CUR's
            raise _unaccepted() from None
        fmt = "ICO" if head[2] == 1 else "CUR"
        return HeaderInfo(fmt, *size, tuple(frames))
    if head[:4] == b"icns":
        frames = _icns(b)
        return HeaderInfo("ICNS", *max(frames, key=lambda wh: wh[0] * wh[1]), tuple(frames))
    if head[:12] == _JP2_SIG or head[:4] == _J2K_SIG:
        w, h = _jp2(b, 0, b.n)
        return HeaderInfo("JPEG2000", w, h, ((w, h),))
    if len(head) >= 2 and head[:1] == b"P" and head[1:2] in b"123456":
        w, h = _pnm(b)
        return HeaderInfo("PPM", w, h, ((w, h),))
    raise _unaccepted()


def _unaccepted() -> ImageError:
    return ImageError(
        "not an image in a format hybridgl reads ("
        + ", ".join(ACCEPTED_FORMATS)
        + "); other formats are refused because their size cannot be checked before decoding"
    )


@contextmanager
def _buffer(source: Any) -> Iterator[Any]:
    """The file's bytes without reading them all: an mmap for paths, the buffer for bytes."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                yield b""
                return
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                yield m
        return
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield source
        return
    getbuffer = getattr(source, "getbuffer", None)
    if getbuffer is not None:  # io.BytesIO: no copy
        view = getbuffer()
        try:
            yield view
        finally:
            view.release()
        return
    pos = source.tell()
    source.seek(0)
    try:
        yield source.read()
    finally:
        source.seek(pos)


def read_header(source: Any) -> HeaderInfo:
    """The format and every frame's size of an image file, from its headers only.

    Args:
        source: a path, bytes, or a binary file object (read from its start).

    Raises:
        ImageError: empty, an unaccepted format, or headers that end early or
            contradict themselves (the message says which; it does not name the file,
            the caller does).
        OSError: the file cannot be read.
    """
    with _buffer(source) as data:
        b = _Buf(data)
        if b.n == 0:
            raise ImageError("the file is empty")
        try:
            return _identify(b)
        except _Corrupt as e:
            raise ImageError(f"corrupt image header: {e}") from None
